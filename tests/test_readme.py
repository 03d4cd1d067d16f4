"""Every Python block of README.md runs as written, in order, on data_samples/ (issue: README code that fails
when copied). Run in a fresh folder holding only a link to data_samples/, as a user's checkout would."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 4


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    pytest.importorskip("monai")
    pytest.importorskip("SimpleITK")
    pytest.importorskip("nibabel")
    (tmp_path / "data_samples").symlink_to(ROOT / "data_samples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for n, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {n + 1}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message shows the block
            pytest.fail(f"README python block {n + 1} failed: {type(e).__name__}: {e}\n{block}")
    assert (tmp_path / "out" / "prediction.png").read_bytes().startswith(b"\x89PNG")
    assert namespace["pred"].spatial_shape == namespace["image"].spatial_shape
    assert namespace["on_t1"].spatial_shape == namespace["t1"].spatial_shape
