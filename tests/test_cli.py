"""Command line: bad input exits non-zero with a message naming the file and line."""
import pytest

import pipeline
from tests.conftest import write


def test_bad_input_exits_2_with_file_and_line(tmp_path, capsys):
    write(tmp_path / "raw" / "interactions.csv", "user_id\titem_id\ttimestamp\nu1\ti1\t5\n")
    code = pipeline.main(["run", "--data-dir", str(tmp_path / "raw"),
                          "--pipeline-root", str(tmp_path / "root")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path / 'raw' / 'interactions.csv'} line 1: expected comma-separated" in err
    assert "the line looks TAB-separated" in err


def test_an_internal_missing_file_is_not_bad_input(tmp_path, monkeypatch):
    """A file the pipeline itself should have written and did not is a bug, with its
    traceback, not exit 2 ("bad input") for the user to hunt for in their data."""
    from runner import local

    def run(opts):
        open(tmp_path / "root" / "Transform" / "transform_graph" / "missing")

    monkeypatch.setattr(local, "run", run)
    with pytest.raises(FileNotFoundError):
        pipeline.main(["run", "--pipeline-root", str(tmp_path / "root")])


def test_missing_data_dir(tmp_path, capsys):
    code = pipeline.main(["run", "--data-dir", str(tmp_path / "nope"),
                          "--pipeline-root", str(tmp_path / "root")])
    assert code == 2
    assert "not a directory" in capsys.readouterr().err


def test_synthetic_users_and_items_reach_the_generator(tmp_path, monkeypatch):
    from runner import local
    seen = {}
    monkeypatch.setattr(local, "run", lambda opts: seen.update(cfg=opts.synthetic))
    assert pipeline.main(["run", "--pipeline-root", str(tmp_path), "--synthetic-interactions",
                          "4000", "--synthetic-users", "300", "--synthetic-items",
                          "900"]) == 0
    assert (seen["cfg"].users, seen["cfg"].items, seen["cfg"].num_interactions) == \
        (300, 900, 4000)
    pipeline.main(["run", "--pipeline-root", str(tmp_path)])
    assert (seen["cfg"].num_users, seen["cfg"].num_items) == (0, 0)  # derived, as before
