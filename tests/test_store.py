import os

import h5py
import numpy as np
import pytest
import torch

import medstack
from medstack.errors import FormatError, MedstackError
from medstack.io.store import H5Array, list_h5, read_h5, write_h5
from medstack.testing import random_affine, world_volume


@pytest.fixture
def vol():
    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 2000, size=(2, 40, 50, 60)).astype(np.int16)
    return medstack.Volume(data, random_affine(rng), {"patient": "x", "spacing_note": np.float32(1.5)})


def test_eager_and_lazy_reads_equal(tmp_path, vol):
    p = tmp_path / "v.h5"
    medstack.save(vol, p)
    eager = medstack.load(p)
    lazy = medstack.load(p, lazy=True)
    assert lazy.is_lazy and not eager.is_lazy
    assert isinstance(lazy.data, H5Array)
    np.testing.assert_array_equal(eager.data, vol.data)
    np.testing.assert_array_equal(np.asarray(lazy.data), vol.data)
    np.testing.assert_array_equal(lazy.affine, vol.affine)
    assert eager.metadata["patient"] == "x" and eager.metadata["spacing_note"] == 1.5
    rng = np.random.default_rng(0)
    for _ in range(20):
        z, y, x = (int(rng.integers(0, s - 8)) for s in vol.spatial_shape)
        box = (slice(None), slice(z, z + 8), slice(y, y + 9), slice(x, x + 10))
        np.testing.assert_array_equal(lazy.data[box], vol.data[box])
        np.testing.assert_array_equal(lazy.data.read_box((z, y, x), (z + 8, y + 9, x + 10)), vol.data[box])
    assert lazy.reoriented("LPS").orientation == "LPS"
    np.testing.assert_array_equal(lazy.to_tensor().numpy(), vol.data)


def test_lazy_slice_reads_only_the_selection(tmp_path, vol, monkeypatch):
    p = tmp_path / "v.h5"
    medstack.save(vol, p)
    lazy = medstack.load(p, lazy=True)
    seen = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        seen.append(key)
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    lazy.data[:, 1:5, 2:6, 3:7]
    assert seen == [(slice(None), slice(1, 5), slice(2, 6), slice(3, 7))]


def test_layout_is_plain_h5py(tmp_path, vol):
    p = tmp_path / "v.h5"
    write_h5(vol, p, chunks=(16, 16, 16), compression="gzip")
    with h5py.File(p, "r") as f:
        assert f.attrs["medstack_format"] == "medstack-volume"
        assert f.attrs["medstack_format_version"] == 1
        ds = f["volumes/volume/data"]
        assert ds.chunks == (1, 16, 16, 16) and ds.compression == "gzip" and ds.dtype == np.int16
        np.testing.assert_array_equal(f["volumes/volume"].attrs["affine"], vol.affine)
    np.testing.assert_array_equal(medstack.load(p).data, vol.data)


def test_default_chunks_clip_to_small_volumes(tmp_path):
    small = world_volume((3, 4, 5), np.eye(4))
    write_h5(small, tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["volumes/volume/data"].chunks == (1, 3, 4, 5)


def test_cohort_file(tmp_path, vol):
    other = world_volume((5, 6, 7), random_affine(np.random.default_rng(1)))
    p = tmp_path / "cohort.h5"
    write_h5({"case_001": vol, "case_002": other}, p)
    assert list_h5(p) == ["case_001", "case_002"]
    with pytest.raises(MedstackError, match="holds 2 volumes; pass name="):
        medstack.load(p)
    np.testing.assert_array_equal(medstack.load(p, name="case_002").data, other.data)
    with pytest.raises(MedstackError, match="no volume named 'x'"):
        medstack.load(p, name="x")


def test_lazy_array_survives_pickling_for_workers(tmp_path, vol):
    import pickle  # in-memory only, as DataLoader workers do

    p = tmp_path / "v.h5"
    medstack.save(vol, p)
    lazy = medstack.load(p, lazy=True)
    lazy.data[:, :1, :1, :1]  # opens the file
    clone = pickle.loads(pickle.dumps(lazy.data))
    assert clone._file is None and clone._ds is None
    np.testing.assert_array_equal(clone[:, 2:4], vol.data[:, 2:4])


def test_torch_data_saved(tmp_path, vol):
    medstack.save(vol.replace(data=torch.from_numpy(vol.data)), tmp_path / "t.h5")
    np.testing.assert_array_equal(medstack.load(tmp_path / "t.h5").data, vol.data)


def test_foreign_hdf5_and_bad_metadata(tmp_path, vol):
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FormatError, match=r"foreign\.h5.*not a medstack volume file"):
        medstack.load(tmp_path / "foreign.h5")
    with pytest.raises(MedstackError, match="JSON"):
        medstack.save(vol.replace(metadata={"f": object()}), tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_lazy_with_dtype_stays_lazy_and_casts_reads(tmp_path, vol):
    p = tmp_path / "v.h5"
    medstack.save(vol, p)
    lazy = medstack.load(p, lazy=True, dtype=np.float32)
    assert lazy.is_lazy and lazy.dtype == np.float32
    part = lazy.data[:, :3, :4, :5]
    assert part.dtype == np.float32
    np.testing.assert_array_equal(part, vol.data[:, :3, :4, :5].astype(np.float32))


@pytest.mark.parametrize("budget", [512 << 20, 0])  # mmap reads / preadv reads
@pytest.mark.parametrize(("chunks", "compression"), [("auto", None), ((5, 7, 6), None), (None, None), ((5, 7, 6), "gzip")])
def test_read_patch_into_equals_padded_crop(tmp_path, monkeypatch, chunks, compression, budget):
    """Patches of every position class (inside, across chunk borders, partly and fully outside) equal the
    padded crop of the eager array, for chunked and contiguous (direct mmap or preadv reads) and compressed
    (h5py) data."""
    from medstack.io import _direct
    from medstack.io._direct import DirectDataset

    monkeypatch.setattr(_direct, "MAP_BUDGET", budget)
    rng = np.random.default_rng(0)
    data = rng.integers(-3000, 3000, size=(2, 17, 19, 23)).astype(np.int16)
    path = write_h5(medstack.Volume(data, np.eye(4)), tmp_path / "v.h5", chunks=chunks, compression=compression)
    arr = read_h5(path, lazy=True).data
    assert isinstance(arr, H5Array)
    assert (arr._direct_reader() is None) == (compression is not None)
    assert compression is not None or isinstance(arr._direct_reader(), DirectDataset)
    m = 40  # margin: every box below lies inside the padded array
    padded = np.full((2, 17 + 2 * m, 19 + 2 * m, 23 + 2 * m), -9, np.int16)
    padded[:, m : m + 17, m : m + 19, m : m + 23] = data
    starts = [(0, 0, 0), (3, 6, 5), (12, 10, 14), (-4, -2, 20), (16, 18, 22), (-30, 0, 0), (5, 40, 2)]
    starts += [tuple(rng.integers(-12, 20, size=3)) for _ in range(30)]
    for start in starts:
        for box in ((8, 9, 10), (1, 1, 1), (17, 19, 23)):
            out = np.empty((2, *box), np.int16)
            arr.read_patch_into(out, start, pad_value=-9)
            s = [int(v) + m for v in start]
            expected = padded[:, s[0] : s[0] + box[0], s[1] : s[1] + box[1], s[2] : s[2] + box[2]]
            np.testing.assert_array_equal(out, expected, err_msg=f"start {start} box {box}")
    out32 = np.empty((2, 4, 4, 4), np.float32)  # another dtype: converted on copy
    arr.read_patch_into(out32, (1, 2, 3))
    np.testing.assert_array_equal(out32, data[:, 1:5, 2:6, 3:7].astype(np.float32))
    with pytest.raises(MedstackError, match="out has shape"):
        arr.read_patch_into(np.empty((1, 4, 4, 4), np.int16), (0, 0, 0))


def test_direct_reads_bypass_h5py_and_report_truncation(tmp_path, monkeypatch):
    """Uncompressed patches never go through h5py's read machinery; several channels per chunk work; a
    truncated file is a clear ReadError naming it."""
    from medstack.errors import ReadError

    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 20, 21, 22)).astype(np.float32)
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:  # a foreign layout: all channels in one chunk
        f.create_dataset("x", data=data, chunks=(3, 8, 8, 8))
    arr = H5Array(path, "x", data.shape, data.dtype, (3, 8, 8, 8))
    arr._direct_reader()
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("h5py read used"))
    out = np.empty((3, 9, 10, 11), np.float32)
    arr.read_patch_into(out, (5, 6, 7))
    np.testing.assert_array_equal(out, data[:, 5:14, 6:16, 7:18])
    monkeypatch.undo()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    cut = H5Array(path, "x", data.shape, data.dtype, (3, 8, 8, 8))
    with pytest.raises(ReadError, match="truncated"):
        for start in ((0, 0, 0), (12, 12, 12), (15, 15, 15)):
            cut.read_patch_into(out, start)


def test_mapping_budget_maps_first_datasets_and_reads_the_rest_with_preadv(tmp_path, monkeypatch):
    """Datasets are mapped while the process's mapped bytes stay within MAP_BUDGET; the others are read with
    preadv (RSS bounded whatever the store's size); closing a mapped one gives its bytes back; reads stay right."""
    from medstack.io import _direct

    monkeypatch.setattr(_direct, "_mapped", {"pid": None, "bytes": 0})
    data = np.arange(2 * 32 * 32 * 32, dtype=np.int32).reshape(2, 32, 32, 32)
    arrs = []
    for k in range(3):
        path = write_h5(medstack.Volume(data + k, np.eye(4)), tmp_path / f"v{k}.h5", chunks=(16, 16, 16))
        arrs.append(read_h5(path, lazy=True).data)
    monkeypatch.setattr(_direct, "MAP_BUDGET", 2 * data.nbytes)
    for k, arr in enumerate(arrs):
        out = np.empty((2, 16, 16, 16), np.int32)
        arr.read_patch_into(out, (k, 2 * k, 3 * k))
        np.testing.assert_array_equal(out, data[:, k : k + 16, 2 * k : 2 * k + 16, 3 * k : 3 * k + 16] + k)
    assert [a._direct_reader()._views is not None for a in arrs] == [True, True, False]
    assert _direct._mapped["bytes"] == 2 * data.nbytes
    arrs[0].close()
    assert _direct._mapped["bytes"] == data.nbytes


def test_direct_readers_share_one_descriptor_per_file_and_close_h5py(tmp_path):
    """The datasets of one file share a descriptor, and the h5py handle is closed once the direct reader
    exists: a store of many cases holds about one descriptor per case, not four."""
    from medstack.io import _direct

    vol = medstack.Volume(np.arange(2 * 8 * 9 * 10, dtype=np.int16).reshape(2, 8, 9, 10), np.eye(4))
    path = write_h5({"image": vol, "label": vol.replace(data=(vol.data % 3).astype(np.uint8))}, tmp_path / "c.h5")
    arrs = [read_h5(path, name=n, lazy=True).data for n in ("image", "label")]
    for arr in arrs:
        out = np.empty((2, 4, 4, 4), arr.dtype)
        arr.read_patch_into(out, (1, 2, 3))
        assert arr._file is None  # h5py closed, reads go through the shared descriptor
    entry = _direct._fds[(os.getpid(), str(path))]
    assert entry[1] == 2
    arrs[0].close()
    assert _direct._fds[(os.getpid(), str(path))][1] == 1
    arrs[1].close()
    assert (os.getpid(), str(path)) not in _direct._fds
    np.testing.assert_array_equal(arrs[1][:, 1:3], vol.data[:, 1:3] % 3)  # h5py path still works after close
