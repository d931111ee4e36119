"""Run one measurement in a fresh child process, so its peak memory (max RSS) is its own."""

from __future__ import annotations

import multiprocessing as mp


def in_child(fn, *args):
    """`fn(*args)` in a spawned process; `fn` must be importable (module level) and return picklable data."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
