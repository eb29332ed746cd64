"""The front door for Python: README's "From Python" block runs as written, and its calls take the run schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxr_fast.errors import CxrError

REPO = Path(__file__).resolve().parents[1]


def _readme_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's From Python section holds one python block"
    return blocks[0]


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(_readme_block(), "README.md (From Python)", "exec"), namespace)
    out = capsys.readouterr().out
    assert "120 images" in out and "(8, 1, 64, 64)" in out
    assert re.search(r"AUC \d\.\d{3} ± \d\.\d{3}, init random, loader resident", out)
    # The study ran its two cells and the results are one row per run, ready for a DataFrame.
    import cxr_fast

    rows = cxr_fast.results(tmp_path / "studies" / "mini")
    assert sorted((r["label"], r["res"]) for r in rows) == [("Mass", 32), ("Nodule", 32)]
    assert all(0.0 <= r["auc"] <= 1.0 and r["init"] == "random" for r in rows)
    # A second call is a resume: nothing runs again.
    again = cxr_fast.run_study(namespace["study"], out=tmp_path / "studies" / "mini")
    assert (again.already_done, again.ran) == (2, 0)


def test_front_door_settings_are_the_schema_with_its_one_line_errors(tmp_path):
    import cxr_fast

    with pytest.raises(CxrError, match=r"^fit: res: resolution 8 is out of range \(16 to 4096 px\)$"):
        cxr_fast.fit(res=8)
    with pytest.raises(CxrError, match=r"^loader: unknown setting\(s\) learning_rate"):
        cxr_fast.loader("train", learning_rate=1)
    with pytest.raises(CxrError, match="part must be 'train' or 'val'"):
        cxr_fast.loader("test")
    with pytest.raises(CxrError, match="not a study folder"):
        cxr_fast.results(tmp_path)
    assert cxr_fast.RunConfig is __import__("cxr_fast.schema.run", fromlist=["RunConfig"]).RunConfig
    with pytest.raises(AttributeError):
        cxr_fast.no_such_call  # noqa: B018


def test_import_cxr_fast_loads_neither_torch_nor_the_schema():
    import subprocess
    import sys

    code = "import sys, cxr_fast; print('torch' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
