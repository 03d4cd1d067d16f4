"""ProcessPatchLoader: worker processes filling shared-memory batch slots give the same batches as the threaded
PatchLoader / default_collate, and leave no shared memory or processes behind."""

import gc
import os
import shutil
import signal
import time
import warnings

import numpy as np
import pytest
import torch

import medstack
from medstack.data import DevicePrefetcher, PatchDataset, PatchLoader, make_loader, prepare
from medstack.data.workers import ProcessPatchLoader
from medstack.errors import ArgumentError, MedstackError, ReadError
from medstack.patches import LabelSampler, UniformSampler
from medstack.patches.samplers import PatchSizeWarning
from medstack.testing import assert_same_batches, center_affine, phantom_pair, random_affine

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="checks processes through /proc")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pstore")
    cases = []
    for k in range(3):
        shape = (24, 28, 26) if k != 2 else (14, 28, 26)  # case 2 thinner than some patches: padding
        affine = center_affine(random_affine(np.random.default_rng(k), oblique=False, spacing_range=(2, 4)), shape)
        img, lab = phantom_pair(shape, affine, seed=k, kind="ct")
        medstack.save(img, root / f"img{k}.nii.gz")
        medstack.save(lab, root / f"lab{k}.nii.gz")
        cases.append({"id": f"case{k}", "image": str(root / f"img{k}.nii.gz"), "label": str(root / f"lab{k}.nii.gz")})
    prepare(cases, root / "out", workers=1)
    return root


def _dataset(root, sampler=None, spv=5, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchSizeWarning)
        return PatchDataset(root / "out" if (root / "out").exists() else root,
                            sampler or LabelSampler((20, 16, 12)), samples_per_volume=spv, seed=2, **kw)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _resources(loader):
    """(worker pids, shared-memory names) the loader holds now."""
    return [p.pid for p in loader._procs], [s[0].name for s in loader._segments if s is not None]


def _assert_released(pids, names):
    assert pids and names
    gc.collect()
    assert not any(_alive(p) for p in pids), pids
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names if os.path.isdir("/dev/shm")), names


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batches_equal_threaded_loader_and_default_collate(store, workers):
    ds = _dataset(store)
    with ProcessPatchLoader(ds, batch_size=4, seed=5, workers=workers, prefetch=3) as loader:
        for epoch in (0, 1, 2):
            loader.set_epoch(epoch)
            threaded = list(PatchLoader(ds, batch_size=4, seed=5, num_threads=2))
            got = list(loader)
            assert_same_batches(got, threaded)
            assert got[0]["image"].dtype == torch.int16 and got[0]["label"].dtype == torch.uint8
            assert len(got) == len(loader) == 4 and len(got[-1]["case_id"]) == 3  # 15 items: a partial batch
    ds.set_epoch(1)
    reference = list(make_loader(ds, batch_size=4, num_workers=0, shuffle=False))
    with ProcessPatchLoader(ds, batch_size=4, shuffle=False, workers=workers) as loader:
        assert_same_batches(loader, reference)


def test_drop_last_partial_batches_and_transforms(store):
    from medstack.transforms import Compose, RandomFlip

    ds = _dataset(store, UniformSampler(16), spv=3)
    with ProcessPatchLoader(ds, batch_size=4, shuffle=False, workers=2, drop_last=True) as loader:
        batches = list(loader)
        assert len(batches) == len(loader) == 2
        assert_same_batches(batches, list(make_loader(ds, batch_size=4, num_workers=0, shuffle=False))[:2])
    aug = _dataset(store, UniformSampler(12), spv=2, transform=Compose([RandomFlip(axes=(0, 1, 2))]))
    with ProcessPatchLoader(aug, batch_size=2, shuffle=False, workers=2) as loader:
        reference = list(make_loader(aug, batch_size=2, num_workers=0, shuffle=False))
        assert_same_batches(loader, reference)
        assert_same_batches(loader, reference)  # second epoch: the transformed batches now travel in the slots
        assert loader._capacity > 0


def test_kept_batches_are_not_overwritten(store):
    ds = _dataset(store, UniformSampler(8), spv=20)
    with ProcessPatchLoader(ds, batch_size=2, shuffle=False, workers=2, prefetch=2) as loader:
        it = iter(loader)
        held = next(it)
        copy = held["image"].clone()
        view = next(it)["label"][1]
        view_copy = view.clone()
        rest = [b["start"] for b in it]
        gc.collect()
        torch.testing.assert_close(held["image"], copy, rtol=0, atol=0)
        torch.testing.assert_close(view, view_copy, rtol=0, atol=0)
        assert len(rest) == len(loader) - 2
        n_slots = len(loader._segments)
        assert n_slots <= 2 + 2 + 2  # ring: prefetch + kept batches + the one in use
        del held, view
        assert_same_batches(loader, make_loader(ds, batch_size=2, num_workers=0, shuffle=False))
        assert len(loader._segments) == n_slots  # slots recycled, not grown


def test_nothing_left_after_close_end_and_consumer_exception(store):
    ds = _dataset(store)
    loader = ProcessPatchLoader(ds, batch_size=4, workers=2)
    list(loader)
    pids, names = _resources(loader)
    loader.close()
    _assert_released(pids, names)
    assert list(loader)  # usable again: fresh workers
    pids, names = _resources(loader)
    del loader  # garbage collection closes
    _assert_released(pids, names)

    class Boom(Exception):
        pass

    loader = ProcessPatchLoader(ds, batch_size=4, workers=2)
    with pytest.raises(Boom), loader:
        for _ in loader:
            pids, names = _resources(loader)
            raise Boom
    _assert_released(pids, names)
    for exc in (Boom, KeyboardInterrupt):  # Ctrl-C in the training loop: the same path
        loader = ProcessPatchLoader(ds, batch_size=4, workers=2)
        with pytest.raises(exc):
            for _ in loader:
                pids, names = _resources(loader)
                raise exc
        del loader
        _assert_released(pids, names)


def test_early_stop_then_set_epoch_continues_correctly(store):
    ds = _dataset(store)
    with ProcessPatchLoader(ds, batch_size=2, workers=2, prefetch=4) as loader:
        it = iter(loader)
        first = next(it)
        it.close()  # as a `break` does: the batches in flight are collected, the workers kept
        del first
        loader.set_epoch(3)
        threaded = PatchLoader(ds, batch_size=2, num_threads=1)
        threaded.set_epoch(3)
        assert_same_batches(loader, threaded)
        batches = list(DevicePrefetcher(loader, "cpu"))
        assert len(batches) == len(loader) and batches[0]["image"].dtype == torch.float32


def test_worker_error_names_the_case(store, tmp_path):
    shutil.copytree(store / "out", tmp_path / "out")
    bad = tmp_path / "out" / sorted(p.name for p in (tmp_path / "out").glob("*.h5"))[1]
    size = bad.stat().st_size
    with open(bad, "r+b") as f:
        f.truncate(size // 2)
    ds = _dataset(tmp_path, UniformSampler(8), spv=2)
    loader = ProcessPatchLoader(ds, batch_size=1, shuffle=False, workers=2)
    with pytest.raises(MedstackError, match="case1"):
        list(loader)
    assert not loader._procs  # workers stopped after the error
    loader.close()


def test_worker_that_dies_raises_instead_of_hanging(store):
    ds = _dataset(store, UniformSampler(8), spv=40)
    loader = ProcessPatchLoader(ds, batch_size=2, shuffle=False, workers=2, prefetch=2)
    it = iter(loader)
    next(it)
    pids, names = _resources(loader)
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(ReadError, match="died"):
        for _ in it:
            pass
    loader.close()
    _assert_released(pids, names)


def test_workers_that_die_while_idle_raise_instead_of_a_broken_pipe(store):
    """Workers killed between epochs (idle, no batch in flight): the next epoch's first request is a ReadError
    naming the worker, not a BrokenPipeError from the pipe."""
    ds = _dataset(store, UniformSampler(8), spv=4)
    loader = ProcessPatchLoader(ds, batch_size=2, shuffle=False, workers=2, prefetch=2)
    assert list(loader)  # a whole epoch: the workers stay, idle
    pids, names = _resources(loader)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        while _alive(pid):
            time.sleep(0.01)
    loader.set_epoch(1)
    with pytest.raises(ReadError, match="died"):
        for _ in loader:
            pass
    loader.close()
    _assert_released(pids, names)


def test_bad_arguments(store):
    ds = _dataset(store)
    for kw in ({"workers": 0}, {"workers": 1.5}, {"start_method": "fork"}, {"timeout": 0}, {"prefetch": -1}):
        with pytest.raises(ArgumentError):
            ProcessPatchLoader(ds, **kw)


def test_interpreter_exit_and_ctrl_c_leave_nothing(store, tmp_path):
    """A script that dies with an uncaught exception (loader neither closed nor collected) leaves no worker
    and no shared memory (atexit), and the resource tracker has nothing to clean up; Ctrl-C sent to the
    workers (as a terminal does to the whole process group) does not stop them."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(f"""
import os, signal
from medstack.data import PatchDataset
from medstack.data.workers import ProcessPatchLoader
from medstack.patches import UniformSampler

if __name__ == "__main__":
    ds = PatchDataset({str(store / "out")!r}, UniformSampler(8), samples_per_volume=20)
    loader = ProcessPatchLoader(ds, batch_size=2, workers=2)
    it = iter(loader)
    next(it)
    for p in loader._procs:
        os.kill(p.pid, signal.SIGINT)
    n = sum(1 for _ in it)
    print("PIDS", *[p.pid for p in loader._procs], flush=True)
    print("SHM", *[s[0].name for s in loader._segments], flush=True)
    print("REST", n, flush=True)
    held = next(iter(loader))
    raise RuntimeError("boom")
""")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=os.getcwd())  # fmt: skip
    assert res.returncode == 1 and "boom" in res.stderr, res.stderr
    lines = {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines() if line.strip()}
    assert lines["REST"] == ["29"]  # all batches despite the SIGINTs
    _assert_released([int(p) for p in lines["PIDS"]], lines["SHM"])
    assert "leaked" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
