import numpy as np
import pytest
from PIL import Image

from medstack.errors import MedstackError, ReadError
from medstack.io.images import load_stack


def write(folder, names, shape=(5, 6), mode="L"):
    folder.mkdir(exist_ok=True)
    for i, n in enumerate(names):
        arr = np.full(shape, i + 1, np.uint8)
        img = Image.fromarray(arr) if mode == "L" else Image.fromarray(np.stack([arr, arr * 2, arr * 3], -1))
        img.save(folder / n)


def test_natural_order_and_spacing(tmp_path):
    write(tmp_path, ["s10.png", "s2.png", "s1.png"])
    vol = load_stack(tmp_path, spacing=(2.5, 0.5, 0.7))
    assert vol.shape == (1, 3, 5, 6) and vol.spacing == pytest.approx((2.5, 0.5, 0.7))
    # natural: s1 (written 3rd -> 3), s2 (2), s10 (1)
    np.testing.assert_array_equal(vol.data[0, :, 0, 0], [3, 2, 1])
    np.testing.assert_array_equal(load_stack(tmp_path, order="name").data[0, :, 0, 0], [3, 1, 2])


def test_rgb_channels_or_gray(tmp_path):
    write(tmp_path, ["a.png", "b.png"], mode="RGB")
    vol = load_stack(tmp_path)
    assert vol.shape == (3, 2, 5, 6)
    np.testing.assert_array_equal(vol.data[:, 1, 0, 0], [2, 4, 6])
    assert load_stack(tmp_path, color="gray").shape == (1, 2, 5, 6)


def test_multipage_tiff(tmp_path):
    pages = [Image.fromarray(np.full((4, 4), v, np.uint16)) for v in (5, 6, 7)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    vol = load_stack(tmp_path / "m.tif")
    assert vol.shape == (1, 3, 4, 4) and vol.dtype == np.uint16
    np.testing.assert_array_equal(vol.data[0, :, 0, 0], [5, 6, 7])


def test_mismatched_sizes_error_or_pad(tmp_path):
    write(tmp_path, ["1.png", "2.png"])
    Image.fromarray(np.zeros((7, 6), np.uint8)).save(tmp_path / "3.png")
    with pytest.raises(MedstackError, match=r"3\.png: slice is 7x6 pixels but .*1\.png is 5x6.*pad=True"):
        load_stack(tmp_path)
    assert load_stack(tmp_path, pad=True).shape == (1, 3, 7, 6)


def test_bad_input(tmp_path):
    with pytest.raises(ReadError, match="no image files"):
        load_stack(tmp_path)
    with pytest.raises(ReadError, match="no such file"):
        load_stack(tmp_path / "nope")
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(MedstackError, match=r"x\.png: not a readable image"):
        load_stack(tmp_path)
    with pytest.raises(MedstackError, match="spacing"):
        load_stack([tmp_path / "x.png"], spacing=(0, 1, 1))
