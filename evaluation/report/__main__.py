"""``python -m evaluation.report --pipeline-root DIR``: rebuilds the newest run's report."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from evaluation.report import from_pipeline_root, write_report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Rebuilds the report of the newest run under ``--pipeline-root``."""
    p = argparse.ArgumentParser(prog="python -m evaluation.report", description=main.__doc__)
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--output", help="default: <pipeline-root>/report.html")
    a = p.parse_args(argv)
    print(write_report(from_pipeline_root(a.pipeline_root), a.output))
    return 0


if __name__ == "__main__":
    import project_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    sys.exit(main())
