"""Execute every notebook and check that each figure cell shows an image (issue: "No figures in Jupyter")."""

import base64
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
VIZ_CALL = re.compile(r"\bviz\.(show|compare|show_patches|show_sampling_map|orthoview)\(")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_every_figure_cell_has_an_image(path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    client.execute()
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and VIZ_CALL.search(c.source)]
    assert figure_cells, f"{path.name}: no viz cell found"
    for cell in figure_cells:
        images = [o["data"]["image/png"] for o in cell.outputs
                  if o.get("output_type") in ("display_data", "execute_result") and "image/png" in o.get("data", {})]  # fmt: skip
        assert images, f"{path.name}: figure cell has no image output:\n{cell.source}"
        for png in images:
            assert base64.b64decode(png).startswith(PNG_MAGIC)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebook_shows_its_figures_without_running(path):
    """The notebooks are stored executed: GitHub / a viewer shows every figure without a kernel. Re-save after
    editing a notebook: `python -c` with nbclient, as tests/test_notebooks.py executes them."""
    nb = nbformat.read(path, as_version=4)
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and VIZ_CALL.search(c.source)]
    assert figure_cells
    for cell in figure_cells:
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if o.get("output_type") in ("display_data", "execute_result") and "image/png" in o.get("data", {})]  # fmt: skip
        assert pngs, f"{path.name}: stored without the figure of cell:\n{cell.source}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored with an error output"
