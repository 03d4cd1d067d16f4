"""Bad input to the HDF5 store, prepare and the patch readers: typed errors, never lost data, outside reads,
crashes or runaway allocations. Every input is generated here (no binary fixtures)."""

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import medstack
from medstack.data.prepare import check_case_id, load_manifest, prepare
from medstack.errors import FormatError, GeometryError, MedstackError, OutputExistsError, ReadError
from medstack.io import _atomic
from medstack.io._atomic import LOCK_NAME, WriteError, atomic_output, clean_stale_partials
from medstack.io._direct import DirectDataset
from medstack.io.store import FORMAT, H5Array, read_h5

ROOT = Path(__file__).resolve().parents[1]


def _volume(shape=(1, 12, 10, 8), seed=0):
    data = np.random.default_rng(seed).integers(-100, 100, size=shape).astype(np.int16)
    return medstack.Volume(data, np.diag([2.0, 1.5, 1.0, 1.0]))


def _cases(root: Path, n=2):
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for k in range(n):
        img = _volume(seed=k)
        lab = medstack.Volume((np.asarray(img.data) > 0).astype(np.uint8), img.affine)
        medstack.save(img, root / f"img{k}.nii.gz")
        medstack.save(lab, root / f"lab{k}.nii.gz")
        cases.append({"id": f"case{k}", "image": str(root / f"img{k}.nii.gz"), "label": str(root / f"lab{k}.nii.gz")})
    return cases


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_store")
    cases = _cases(root / "src")
    manifest = prepare(cases, root / "out", workers=1)
    return root, cases, manifest


def _fake_volume_file(path: Path, make_data, name="volume"):
    """A file with medstack's format attributes whose ``data`` dataset is made by ``make_data(group)``."""
    with h5py.File(path, "w") as f:
        f.attrs["medstack_format"] = FORMAT
        f.attrs["medstack_format_version"] = 1
        g = f.create_group(f"volumes/{name}")
        g.attrs["affine"] = np.eye(4)
        g.attrs["metadata"] = "{}"
        make_data(g)
    return path


# ---- 1. data loss / writes outside the target ---------------------------------------------------------------


@pytest.mark.parametrize(
    "case_id", ["../victim", "a/b", "/abs/victim", "..", ".", "", "   ", "x\x00y", "x\ny", "tab\there", "a\\b", "x" * 300]
)
def test_bad_case_ids_are_refused_before_anything_is_written(tmp_path, case_id):
    src = tmp_path / "src"
    cases = _cases(src, n=1)
    victim = tmp_path / "victim.h5"
    victim.write_bytes(b"precious")
    out = tmp_path / "store" / "out"
    with pytest.raises(FormatError, match=r"case 0: field 'id'"):
        prepare([dict(cases[0], id=case_id)], out, workers=1)
    assert victim.read_bytes() == b"precious"
    assert not out.exists() or not any(out.iterdir())


def test_bad_case_ids_in_a_csv_manifest(tmp_path):
    cases = _cases(tmp_path / "src", n=1)
    csv_path = tmp_path / "cases.csv"
    csv_path.write_text(f"id,image\n../victim,{cases[0]['image']}\n")
    with pytest.raises(FormatError, match=r"cases\.csv: case 0: field 'id' '\.\./victim'"):
        prepare(csv_path, tmp_path / "out", workers=1)
    with pytest.raises(FormatError, match="field 'id' must be a string"):
        check_case_id(["x"], "case 3")


def test_foreign_file_with_a_case_name_is_never_replaced(tmp_path):
    cases = _cases(tmp_path / "src", n=1)
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "case0.h5"
    with h5py.File(foreign, "w") as f:  # someone else's HDF5 file
        f["x"] = np.arange(3)
    before = foreign.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"case0\.h5: exists and is not a case file"):
            prepare(cases, out, workers=1, overwrite=overwrite)
        assert foreign.read_bytes() == before
    # a medstack volume file that is not this store's case is foreign too
    medstack.save(_volume(), foreign, overwrite=True)
    before = foreign.read_bytes()
    with pytest.raises(OutputExistsError, match="not a case file"):
        prepare(cases, out, workers=1, overwrite=True)
    assert foreign.read_bytes() == before
    assert not list(out.glob(".*.partial"))


def test_own_case_file_is_replaced_with_overwrite_and_resumed_without(tmp_path):
    cases = _cases(tmp_path / "src", n=1)
    out = tmp_path / "out"
    manifest = prepare(cases, out, workers=1)
    before = (out / "case0.h5").stat().st_ino
    prepare(cases, out, workers=1, overwrite=True)
    assert (out / "case0.h5").stat().st_ino != before  # rewritten
    manifest.unlink()  # killed before the manifest was written: the own file is redone
    prepare(cases, out, workers=1)
    assert [e["id"] for e in load_manifest(manifest)] == ["case0"]


_WRITER_SCRIPT = """
import sys, time
from medstack.io._atomic import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.write_bytes(b"in progress")
    print("READY", flush=True)
    time.sleep(60)
"""


def test_clean_stale_partials_spares_live_writers_and_foreign_folders(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    live = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(tmp_path / "a.h5")], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert live.stdout.readline().strip() == "READY"
        (partial,) = tmp_path.glob(".a.h5.*.partial")
        assert (partial / LOCK_NAME).exists()
        # a foreign folder with the name pattern and a dead pid, but no medstack lock marker
        foreign = tmp_path / ".b.h5.999999999.abcd.partial"
        foreign.mkdir()
        (foreign / "keep").write_text("x")
        assert clean_stale_partials(tmp_path) == []  # the other process is alive and holds the lock
        assert partial.exists() and foreign.exists()
        with atomic_output(tmp_path / "c.h5") as tmp:  # this process's own live temporary
            tmp.write_bytes(b"x")
            assert clean_stale_partials(tmp_path) == []
            assert tmp.parent.exists()
        live.kill()  # the writer dies (SIGKILL): its lock goes with it
        live.wait(20)
        assert clean_stale_partials(tmp_path) == [partial]
        assert not partial.exists() and (foreign / "keep").exists()
        assert not (tmp_path / "a.h5").exists()
    finally:
        live.kill()
        live.wait(20)
        live.stdout.close()


# ---- 2. reads outside the input ----------------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(bytes(range(64)))
    return p


def _external(secret):
    return lambda g: g.create_dataset("data", shape=(1, 4, 4, 4), dtype="u1", external=[(str(secret), 0, 64)])


def _virtual(tmp_path, secret):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.frombuffer(secret.read_bytes(), np.uint8).reshape(1, 4, 4, 4)

    def make(g):
        layout = h5py.VirtualLayout(shape=(1, 4, 4, 4), dtype="u1")
        layout[...] = h5py.VirtualSource(str(other), "x", shape=(1, 4, 4, 4))
        g.create_virtual_dataset("data", layout)

    return make


@pytest.mark.parametrize("kind", ["external", "virtual"])
def test_external_and_virtual_datasets_are_refused(tmp_path, secret, kind):
    make = _external(secret) if kind == "external" else _virtual(tmp_path, secret)
    path = _fake_volume_file(tmp_path / "x.h5", make)
    word = "EXTERNAL" if kind == "external" else "VIRTUAL"
    for lazy in (False, True):
        with pytest.raises(FormatError, match=rf"x\.h5.*'/volumes/volume/data'.*{word}"):
            medstack.load(path, lazy=lazy)
    with h5py.File(path, "r") as f, pytest.raises(FormatError, match=word):
        DirectDataset.open(str(path), f["volumes/volume/data"])
    arr = H5Array(path, "/volumes/volume/data", (1, 4, 4, 4), np.uint8, (1, 4, 4, 4))
    with pytest.raises(FormatError, match=word):
        arr.read_patch_into(np.zeros((1, 2, 2, 2), np.uint8), (0, 0, 0))
    with pytest.raises(FormatError, match=word):
        arr[:, :1]


def test_external_link_to_another_file_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    medstack.save(_volume(), other)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.attrs["medstack_format"] = FORMAT
        f.attrs["medstack_format_version"] = 1
        f.create_group("volumes")["volume"] = h5py.ExternalLink(str(other), "/volumes/volume")
    with pytest.raises(FormatError, match=r"x\.h5: /volumes/volume is an external link"):
        medstack.load(path)


# ---- 3. stores: manifest and case files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "manifest is not valid JSON"),
        ("[1, 2]", "manifest is JSON list"),
        ('{"cases": {"a": 1}}', "field 'cases' is dict"),
        ('{"format": "other", "cases": []}', "field 'format'"),
        ('{"cases": [1]}', r"cases\[0\] is JSON int"),
        ('{"cases": [{"id": "case0"}]}', r"cases\[0\]: field 'file' is missing"),
        ('{"cases": [{"file": "case0.h5"}]}', r"cases\[0\]: field 'id' is missing"),
        ('{"cases": [{"id": 3, "file": "case0.h5"}]}', r"cases\[0\]: field 'id' must be a string"),
        ('{"cases": [{"id": "case0", "file": "../case0.h5"}]}', r"cases\[0\]: field 'file' '\.\./case0\.h5'"),
        ('{"cases": [{"id": "case0", "file": "/etc/passwd"}]}', r"cases\[0\]: field 'file'"),
        ('{"cases": [{"id": "case0", "file": null}]}', r"cases\[0\]: field 'file' must be a string"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_manifest_gives_typed_errors_naming_file_and_field(store, tmp_path, text, match):
    root, cases, manifest = store
    bad = tmp_path / "manifest.json"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    for f in (root / "out").glob("*.h5"):
        os.link(f, tmp_path / f.name)
    with pytest.raises(FormatError, match=rf"manifest\.json.*{match}"):
        medstack.data.CaseStore(tmp_path)
    before = bad.read_bytes()
    with pytest.raises(FormatError, match=match):  # prepare does not replace a manifest it cannot read
        prepare(cases, tmp_path, workers=1)
    assert bad.read_bytes() == before


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("metadata", "{not json", "attribute 'metadata' is not valid JSON"),
        ("metadata", "[1]", "attribute 'metadata' is JSON list"),
        ("metadata", np.arange(3), "attribute 'metadata' is a ndarray"),
        ("affine", "nope", "affine"),
        ("affine", np.eye(3), "affine must be 4x4"),
    ],
)
def test_bad_case_file_attributes_give_typed_errors(store, tmp_path, attr, value, match):
    root, _, _ = store
    path = tmp_path / "case0.h5"
    path.write_bytes((root / "out" / "case0.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        f["volumes/image"].attrs[attr] = value
    with pytest.raises((FormatError, GeometryError), match=match) as err:
        read_h5(path, name="image")
    assert str(path) in str(err.value)


def test_bad_case_file_structure_gives_typed_errors(tmp_path):
    path = _fake_volume_file(tmp_path / "a.h5", lambda g: g.create_dataset("data", data=np.zeros((4, 4))))
    with pytest.raises(FormatError, match=r"a\.h5: dataset '/volumes/volume/data' has shape \(4, 4\)"):
        medstack.load(path)
    path = _fake_volume_file(tmp_path / "b.h5", lambda g: g.create_group("data"))
    with pytest.raises(FormatError, match=r"b\.h5: /volumes/volume/data is a Group, expected a Dataset"):
        medstack.load(path)
    path = _fake_volume_file(tmp_path / "c.h5", lambda g: None)
    with pytest.raises(FormatError, match=r"c\.h5: /volumes/volume/data is missing"):
        medstack.load(path)
    with h5py.File(path, "r+") as f:
        f.attrs["medstack_format_version"] = "x"
    with pytest.raises(FormatError, match="medstack_format_version"):
        medstack.load(path)


def test_bad_sampling_lists_give_typed_errors(store, tmp_path):
    root, _, _ = store
    for name, data, match in [
        ("class_x", np.zeros((2, 3), np.int32), "class_<label value>"),
        ("class_1", np.zeros((2, 2), np.int32), r"expected \(n, 3\) integers"),
    ]:
        path = tmp_path / "case0.h5"
        path.write_bytes((root / "out" / "case0.h5").read_bytes())
        with h5py.File(path, "r+") as f:
            del f["sampling/class_1"]
            f["sampling"][name] = data
        cs = medstack.data.CaseStore([path])
        with pytest.raises(FormatError, match=match):
            cs.case(0)


_TRUNCATE_SCRIPT = """
import os, sys
import numpy as np
import medstack
from medstack.data import PatchDataset, PatchLoader
from medstack.errors import ReadError
from medstack.patches import UniformSampler

store, mode = sys.argv[1], sys.argv[2]
ds = PatchDataset(store, UniformSampler((8, 8, 8)), samples_per_volume=2, seed=1)
loader = PatchLoader(ds, batch_size=4, shuffle=False, num_threads=1, pin_memory=False)
next(iter(loader))  # maps (or opens) every case
import h5py
for p in ds.store.paths:  # cut inside the image's first chunk
    with h5py.File(p, "r") as f:
        cut = f["volumes/image/data"].id.get_chunk_info(0).byte_offset + 100
    os.truncate(p, cut)
try:
    next(iter(loader))
except ReadError as e:
    print("READERROR", e)
try:  # a reader opened after the truncation
    fresh = medstack.load(ds.store.paths[0], name="image", lazy=True)
    fresh.data.read_patch_into(np.zeros((1, 8, 8, 8), np.int16), (0, 0, 0))
except ReadError as e:
    print("FRESH", e)
"""


@pytest.mark.parametrize("budget", ["268435456", "0"])  # memory map / preadv
def test_case_file_truncated_while_open_gives_read_error_not_sigbus(tmp_path, budget):
    cases = _cases(tmp_path / "src", n=2)
    prepare(cases, tmp_path / "out", workers=1)
    env = dict(os.environ, MEDSTACK_MAP_BUDGET=budget, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _TRUNCATE_SCRIPT, str(tmp_path / "out"), budget], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, f"reader died with {r.returncode} (SIGBUS is -7): {r.stderr[-2000:]}"
    assert "READERROR" in r.stdout and "case0.h5" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "FRESH" in r.stdout and "truncated" in r.stdout, r.stdout + r.stderr[-2000:]


def test_direct_reader_checks_the_file_size_at_open(store, tmp_path):
    root, _, _ = store
    path = tmp_path / "case0.h5"
    path.write_bytes((root / "out" / "case0.h5").read_bytes())
    with h5py.File(path, "r") as f:
        ds = f["volumes/image/data"]
        os.truncate(path, ds.id.get_chunk_info(0).byte_offset + 100)
        with pytest.raises(ReadError, match=r"case0\.h5: truncated file"):
            DirectDataset.open(str(path), ds)


# ---- 4. runaway memory -------------------------------------------------------------------------------------


def _huge(g, shape=(1, 4096, 4096, 4096), chunks=(1, 16, 16, 16)):
    ds = g.create_dataset("data", shape=shape, dtype=np.int16, chunks=chunks)
    ds[0, :16, :16, :16] = 7  # one chunk written: a tiny file claiming 128 GiB


def test_huge_claimed_shape_is_refused_before_allocating(tmp_path, monkeypatch):
    path = _fake_volume_file(tmp_path / "huge.h5", _huge)
    assert path.stat().st_size < 1 << 20
    monkeypatch.setenv("MEDSTACK_MAX_READ_BYTES", str(1 << 30))
    with pytest.raises(ReadError, match=r"huge\.h5:/volumes/volume/data: shape \(1, 4096, 4096, 4096\)"):
        medstack.load(path)
    lazy = medstack.load(path, lazy=True)  # lazy is fine: patches allocate only the patch
    patch = np.zeros((1, 4, 4, 4), np.int16)
    lazy.data.read_patch_into(patch, (0, 0, 0))
    assert (patch == 7).all()
    with pytest.raises(ReadError, match="MEDSTACK_MAX_READ_BYTES"):
        np.asarray(lazy.data)
    monkeypatch.delenv("MEDSTACK_MAX_READ_BYTES")  # default: the available memory (128 GiB is more here)
    if medstack.io.store.read_limit() is not None and medstack.io.store.read_limit() < 128 << 30:
        with pytest.raises(ReadError, match="available memory"):
            medstack.load(path)


def test_direct_reader_does_not_allocate_a_table_for_a_huge_chunk_grid(tmp_path):
    path = _fake_volume_file(tmp_path / "grid.h5", lambda g: _huge(g, (1, 1 << 16, 1 << 16, 1 << 16), (1, 16, 16, 16)))
    with h5py.File(path, "r") as f:  # 2**36 chunks claimed, one written: no table, h5py handles it
        assert DirectDataset.open(str(path), f["volumes/volume/data"]) is None


def test_huge_sampling_list_is_refused(store, tmp_path):
    root, _, _ = store
    path = tmp_path / "case0.h5"
    path.write_bytes((root / "out" / "case0.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        del f["sampling/class_1"]
        ds = f["sampling"].create_dataset("class_1", shape=(1 << 40, 3), dtype=np.int32, chunks=(1024, 3))
        ds[:2] = 1
    with pytest.raises(FormatError, match=r"case0\.h5: /sampling/class_1 lists 1099511627776 voxels"):
        medstack.data.CaseStore([path]).case(0)


# ---- 5. full disk ------------------------------------------------------------------------------------------


class _Full:
    f_bavail, f_frsize, f_bsize = 10, 4096, 4096


def test_save_on_a_full_disk_is_a_typed_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic.os, "statvfs", lambda p: _Full())
    with pytest.raises(WriteError, match=r"x\.h5: not enough free space") as err:
        medstack.save(_volume(), tmp_path / "x.h5")
    assert isinstance(err.value, OSError) and isinstance(err.value, MedstackError)
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_prepare_on_a_full_disk_fails_the_case(tmp_path, monkeypatch):
    cases = _cases(tmp_path / "src", n=1)
    monkeypatch.setattr(_atomic.os, "statvfs", lambda p: _Full())
    with pytest.raises(WriteError, match=r"case0: WriteError: .*case0\.h5: not enough free space"):
        prepare(cases, tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / "case0.h5").exists()


def test_hdf5_write_failure_is_a_typed_error(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError(errno.EIO, "Can't write data (simulated)")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(WriteError, match=r"x\.h5: writing the HDF5 file failed"):
        medstack.save(_volume(), tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


# ---- 6. no bare MedstackError ------------------------------------------------------------------------------

_FILES = ["medstack/data/prepare.py", "medstack/io/store.py", "medstack/io/_atomic.py", "medstack/io/_direct.py",
          "medstack/data/datasets.py", "medstack/data/loader.py"]  # fmt: skip


@pytest.mark.parametrize("rel", _FILES)
def test_no_bare_medstack_error_is_raised(rel):
    tree = ast.parse((ROOT / rel).read_text())
    bare = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)
            and getattr(n.exc.func, "id", None) == "MedstackError"]  # fmt: skip
    assert bare == []


# ---- 7. independent seed streams ---------------------------------------------------------------------------


def _first(rng):
    return tuple(rng.integers(0, 1 << 62, size=2).tolist())


@pytest.mark.parametrize(("seed", "epoch"), [(0, 0), (7, 3)])
def test_shuffle_case_order_and_item_streams_are_distinct(seed, epoch):
    from medstack.data.datasets import STREAM_CASE_ORDER, STREAM_ITEM, STREAM_SHUFFLE, _rng, stream

    n = 30000  # past 0x5EED = 24301, the item the old shuffle stream equalled
    items = {_first(_rng(seed, epoch, i)) for i in range(n)}
    assert len(items) == n
    assert _first(stream(seed, epoch, STREAM_SHUFFLE)) not in items
    assert _first(stream(seed, epoch, STREAM_CASE_ORDER)) not in items
    assert _first(stream(seed, epoch, STREAM_SHUFFLE)) != _first(stream(seed, epoch, STREAM_CASE_ORDER))
    assert _first(_rng(seed, epoch, 0)) == _first(stream(seed, epoch, STREAM_ITEM, 0))
    assert _first(stream(seed, epoch, STREAM_ITEM, 0)) != _first(stream(seed, epoch + 1, STREAM_ITEM, 0))


def test_loader_shuffle_and_case_sampler_use_their_own_streams(store):
    from medstack.data import CaseGroupedSampler, PatchDataset, PatchLoader
    from medstack.data.datasets import STREAM_CASE_ORDER, STREAM_SHUFFLE, stream
    from medstack.patches import UniformSampler

    root, _, _ = store
    ds = PatchDataset(root / "out", UniformSampler(4), samples_per_volume=3, seed=0)
    loader = PatchLoader(ds, batch_size=2, seed=5, num_threads=1, pin_memory=False)
    assert loader._order() == stream(5, 0, STREAM_SHUFFLE).permutation(len(ds)).tolist()
    ds.n_cases = len(ds.store)
    sampler = CaseGroupedSampler(ds, seed=5)
    assert [int(c) for c in sampler._cases()] == stream(5, 0, STREAM_CASE_ORDER).permutation(2).tolist()
    # the items themselves still depend on (seed, epoch, index) only
    a = [ds.locate(i)[1].tolist() for i in range(len(ds))]
    assert a == [PatchDataset(root / "out", UniformSampler(4), samples_per_volume=3).locate(i)[1].tolist()
                 for i in range(len(ds))]  # fmt: skip


def test_partials_of_atomic_output_do_not_leak_the_lock_file(tmp_path):
    out = tmp_path / "v.h5"
    medstack.save(_volume(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.h5"]


@pytest.mark.parametrize("grid", [None, {"shape": [2, 2]}, {"shape": [2, 2, "x"], "affine": np.eye(4).tolist()}, [1]])
def test_bad_original_grid_field_is_a_typed_error(grid):
    from medstack.data.prepare import to_original_grid

    with pytest.raises(FormatError, match=r"case 'c7': field 'original_grid'"):
        to_original_grid(_volume(), {"id": "c7", "original_grid": grid})


def test_an_empty_temporary_of_a_dead_writer_is_cleaned(tmp_path):
    # a writer killed between creating its temporary folder and locking it leaves an empty, unmarked folder
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    orphan = tmp_path / f".x.json.{pid}.abcd1234.partial"
    orphan.mkdir()
    alive = tmp_path / f".y.json.{os.getpid()}.abcd1234.partial"
    alive.mkdir()
    staged = tmp_path / f".w.json.{pid}.abcd1234.partial"  # killed while staging its lock marker
    staged.mkdir()
    (staged / (LOCK_NAME + ".new")).write_bytes(b"")
    kept = tmp_path / f".z.json.{pid}.abcd1234.partial"
    kept.mkdir()
    (kept / "data").write_text("not empty: not ours to judge")
    assert sorted(clean_stale_partials(tmp_path)) == sorted([orphan, staged])
    assert alive.exists() and kept.exists() and not orphan.exists() and not staged.exists()
