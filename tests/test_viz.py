import io

import numpy as np
import pytest

import medstack
from medstack import Volume, viz
from medstack.errors import GeometryError, MedstackError
from medstack.patches import UniformSampler
from medstack.testing import axis_code_affine

MARKER_RAS = (12.0, -12.0, 12.0)  # patient's Right, Posterior, Superior (RAS+: +x = Right)


def marker_volume(code="LPS"):
    shape = (40, 40, 40)
    affine = axis_code_affine(code, (1, 1, 1))
    affine[:3, 3] = -(affine[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2))  # centre at world 0
    vol = Volume(np.zeros((1, *shape), np.float32), affine)
    d, h, w = shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = vol.voxel_to_world(np.stack([ww, hh, dd], -1))
    data = np.zeros((1, *shape), np.float32)
    data[0][np.all(np.abs(world - MARKER_RAS) <= 3, axis=-1)] = 1000.0
    return vol.replace(data=data)


def rendered(fig):
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def marker_position(ax, pixels):
    """Centre of the white marker pixels inside ``ax`` as fractions of its box (0, 0 = top-left)."""
    bbox = ax.get_window_extent()
    h = pixels.shape[0]
    x0, x1, y0, y1 = int(bbox.x0), int(bbox.x1), h - int(bbox.y1), h - int(bbox.y0)
    region = pixels[y0:y1, x0:x1]
    ys, xs = np.nonzero((region > 240).all(axis=-1))
    assert len(xs), "marker not visible"
    return xs.mean() / (x1 - x0), ys.mean() / (y1 - y0)


@pytest.mark.parametrize("code", ["LPS", "RAS", "PIR", "ILA"])
def test_marker_is_drawn_in_the_anatomically_right_quadrant(code):
    fig = viz.show(marker_volume(code), at=MARKER_RAS, window=(500, 1000))
    px = rendered(fig)
    axial, coronal, sagittal = fig.axes[:3]
    fx, fy = marker_position(axial, px)  # patient's right on the image left, anterior at the top
    assert fx < 0.5 and fy > 0.5
    fx, fy = marker_position(coronal, px)  # right on the left, superior at the top
    assert fx < 0.5 and fy < 0.5
    fx, fy = marker_position(sagittal, px)  # anterior on the left, superior at the top
    assert fx > 0.5 and fy < 0.5


def test_figure_axes_titles_and_letters():
    fig = viz.show(marker_volume())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["axial", "coronal", "sagittal"]
    letters = [sorted(t.get_text() for t in ax.texts) for ax in fig.axes]
    assert letters == [["A", "L", "P", "R"], ["I", "L", "R", "S"], ["A", "I", "P", "S"]]
    assert all(ax.get_xlabel() == "mm" for ax in fig.axes)


def test_label_overlay_and_windows():
    vol = marker_volume()
    lab = vol.replace(data=(vol.data > 0).astype(np.uint8))
    fig = viz.show({"image": vol, "label": lab}, window="bone")
    assert len(fig.axes[0].images) == 2  # image + overlay
    assert viz.parse_window("brain") == (0.0, 80.0)
    with pytest.raises(MedstackError, match="preset"):
        viz.parse_window("nonsense")


def test_show_patches_draws_boxes():
    vol = marker_volume()
    fig = viz.show_patches(vol, [[10, 10, 10], [0, 0, 0]], 16)
    assert sum(len(ax.patches) for ax in fig.axes) >= 3


def test_sampling_map_and_compare_and_html():
    vol = marker_volume()
    fig = viz.show_sampling_map(vol, UniformSampler(8), n=200)
    assert len(fig.axes[0].images) == 2
    fig = viz.compare(vol, vol.reoriented("RAS"))
    assert [ax.get_title() for ax in fig.axes] == ["before: axial", "before: coronal", "before: sagittal",
                                                   "after: axial", "after: coronal", "after: sagittal"]  # fmt: skip
    html = vol._repr_html_()
    assert "medstack.Volume" in html and "data:image/png;base64" in html and "LPS" in html


def test_bad_input():
    with pytest.raises(MedstackError, match="not a volume"):
        viz.show(np.zeros((10, 10)))
    vol = marker_volume()
    other = Volume(np.zeros((1, 5, 5, 5), np.uint8), axis_code_affine("RAS", origin=(500, 0, 0)))
    with pytest.raises(GeometryError, match="does not overlap"):
        viz.show(vol, label=other)
    coarse = Volume(np.zeros((1, 20, 20, 20), np.uint8), vol.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.warns(UserWarning, match="resampled onto it"):
        viz.show(vol, label=coarse)
    with pytest.raises(GeometryError, match="outside the volume"):
        viz.show(vol, at=(900, 0, 0))
    with pytest.raises(MedstackError, match="'image' key"):
        viz.show({"label": vol})


def test_preview_cli_png_of_sample(tmp_path):
    from medstack.viz import save_preview

    out = save_preview(medstack.load("data_samples/nifti/mr_t2.nii.gz"), tmp_path / "t2.png")
    assert out.stat().st_size > 10000


# --- display in notebooks, no backend change, saving ---------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def all_figures(vol):
    return {
        "show": viz.show(vol),
        "compare": viz.compare(vol, vol.reoriented("RAS")),
        "show_patches": viz.show_patches(vol, [[10, 10, 10]], 16),
        "show_sampling_map": viz.show_sampling_map(vol, UniformSampler(8), n=50),
        "orthoview": viz.orthoview(vol),
    }


def test_every_figure_renders_as_png_for_notebooks():
    from matplotlib.figure import Figure

    for name, fig in all_figures(marker_volume()).items():
        assert isinstance(fig, Figure) and isinstance(fig, viz.VizFigure), name
        png = fig._repr_png_()
        assert png.startswith(PNG_MAGIC), name
        assert len(png) > 5000, name


def test_ipython_formats_figures_as_png():
    formatters = pytest.importorskip("IPython.core.formatters")
    data, _ = formatters.DisplayFormatter().format(viz.show(marker_volume()))
    assert data["image/png"].startswith(PNG_MAGIC)


_BACKEND_SCRIPT = r"""
import sys
import matplotlib
matplotlib.use({backend!r})
{pyplot}
import numpy as np
import medstack
from medstack import Volume, viz
from medstack.patches import UniformSampler
from medstack.testing import axis_code_affine

vol = Volume(np.random.default_rng(0).random((1, 20, 20, 20), dtype=np.float32), axis_code_affine("LPS"))
figs = [viz.show(vol), viz.compare(vol, vol), viz.show_patches(vol, [[2, 2, 2]], 8),
        viz.show_sampling_map(vol, UniformSampler(8), n=20), viz.orthoview(vol)]
for fig in figs:
    assert fig._repr_png_().startswith(b"\x89PNG")
    fig.savefig(__import__("io").BytesIO(), format="png")
print("BACKEND", matplotlib.get_backend())
print("PYPLOT", "matplotlib.pyplot" in sys.modules)
if "matplotlib.pyplot" in sys.modules:
    print("FIGNUMS", sys.modules["matplotlib.pyplot"].get_fignums())
"""


@pytest.mark.parametrize("backend, with_pyplot", [("svg", False), ("pdf", True)])
def test_viz_never_changes_the_users_matplotlib_backend(backend, with_pyplot):
    import subprocess
    import sys

    script = _BACKEND_SCRIPT.format(backend=backend, pyplot="import matplotlib.pyplot" if with_pyplot else "")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"BACKEND {backend}" in res.stdout
    # viz never imports pyplot itself, and never registers figures with the user's pyplot
    assert f"PYPLOT {with_pyplot}" in res.stdout
    if with_pyplot:
        assert "FIGNUMS []" in res.stdout


def test_importing_and_drawing_leaves_the_backend_unresolved():
    import subprocess
    import sys

    script = (
        "import matplotlib, numpy as np, medstack\n"
        "from medstack import Volume, viz\n"
        "viz.show(Volume(np.ones((1, 8, 8, 8), np.float32), np.eye(4)))._repr_png_()\n"
        "print('RESOLVED', matplotlib.rcParams._get_backend_or_none())\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "RESOLVED None" in res.stdout  # no backend was chosen for the user


def test_show_and_friends_save_to_a_path(tmp_path):
    from medstack.errors import ArgumentError, OutputExistsError

    vol = marker_volume()
    fig = viz.show(vol, path=tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert fig.axes[0].get_title() == "axial"
    with pytest.raises(OutputExistsError):
        viz.show(vol, path=tmp_path / "a.png")
    viz.show(vol, path=tmp_path / "a.png", overwrite=True)
    viz.compare(vol, vol, path=tmp_path / "c.svg")
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]
    viz.show_patches(vol, [[0, 0, 0]], 8, path=tmp_path / "p.png")
    viz.show_sampling_map(vol, UniformSampler(8), n=20, path=tmp_path / "s.png")
    assert fig.save(tmp_path / "f.png") == tmp_path / "f.png"
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "c.svg", "f.png", "p.png", "s.png"]
    with pytest.raises(ArgumentError, match="cannot write a figure"):
        viz.show(vol, path=tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()
