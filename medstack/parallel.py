"""Process pools that are safe to start from any process.

``fork`` copies a process mid-flight: a lock held by another thread at that moment (torch's OpenMP pool, an HDF5
lock, a loader's reader threads) stays locked forever in the child, which then hangs. A training or notebook process
has such threads, so medstack's pools (``prepare``, ``medstack.plan.fingerprint``, the parallel DICOM header scan)
start their workers from a ``forkserver`` (a clean single-threaded process that forks the workers; ``spawn`` where
there is none). Workers import what they need on their first task.
"""

from __future__ import annotations

import multiprocessing

__all__ = ["map_jobs", "process_context", "process_pool"]


def process_context():
    """The multiprocessing context of medstack's worker processes: forkserver where available, else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def process_pool(max_workers: int):
    """A ``ProcessPoolExecutor`` of ``max_workers`` processes started by :func:`process_context`.

    >>> with process_pool(1) as pool:
    ...     list(pool.map(abs, [-1, 2]))
    [1, 2]
    """
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers, mp_context=process_context())


def map_jobs(fn, jobs, workers: int, on_result) -> None:
    """``on_result(fn(job))`` for each job, in order: in this process when ``workers`` is 1 or there is at most
    one job, else in a :func:`process_pool` of ``min(workers, len(jobs))`` processes (``fn`` and the jobs must be
    picklable, for the trip to the workers; nothing goes to disk).

    >>> out = []
    >>> map_jobs(abs, [-1, 2], 1, out.append)
    >>> out
    [1, 2]
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_result(fn(job))
        return
    with process_pool(min(workers, len(jobs))) as pool:
        for result in pool.map(fn, jobs):
            on_result(result)
