"""The end-of-run listing of what the last run recorded in ML Metadata."""
from __future__ import annotations

from typing import List, Optional

# Moved to layout.mlmd, below the report that reads them too; imported here so that
# ``runner.mlmd_summary.ComponentRecord`` and friends keep working for their callers.
from layout.mlmd import (ComponentRecord, Output, component_record,  # noqa: F401
                         last_run_records)


def format_records(records: List[ComponentRecord], uri_root: Optional[str] = None) -> str:
    lines = []
    for r in records:
        lines.append(f"  {r.component:<22} {r.state}")
        for o in r.outputs:
            shown = o.uri[len(uri_root) + 1:] if uri_root and o.uri.startswith(uri_root) \
                else o.uri
            span_text = f" span {o.span}" if o.span is not None else ""
            lines.append(f"      {o.key:<24} {o.type_name:<18}{span_text} {shown}")
    return "\n".join(lines)
