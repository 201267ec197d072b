"""Crash safety: a process saving models is killed with SIGKILL at random points, many times.

Afterwards every listed model recovers bit-exactly, `verify` finds nothing, and garbage
collection leaves exactly the blobs and documents the listed models use.
"""

import collections
import multiprocessing
import os
import random
import signal
import time

import pytest

from fault_child import lineage, save_until_killed
from mmlib import maintenance
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.util.hash import state_dict_hash

RUNS = 50
SEEDS = 4


def _kill_point(log_path: str) -> str:
    """What the child was doing when it died: the kind of its last logged step."""
    with open(log_path) as log:
        lines = [line.strip() for line in log if line.strip()]
    if not lines:
        return "before first save"
    return " ".join(lines[-1].split()[:2])


@pytest.fixture(scope="module")
def forkserver():
    """Children come from a forkserver that imported torch once, so each run starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mmlib.save", "mmlib.models", "fault_child"])
    return context


def _start_child(forkserver, store_dir: str, log_path: str, seed: int) -> multiprocessing.Process:
    """A child saving the seed's lineage, started and ready (its first model built)."""
    ready = forkserver.Event()
    child = forkserver.Process(target=save_until_killed, args=(store_dir, log_path, seed, ready))
    child.start()
    ready.wait(timeout=60)
    return child


def _seconds_to_save_all(tmp_path, forkserver) -> float:
    """How long a child takes to save its whole lineage on this machine now: kills are spread over that span,
    so they land in every step of a save however fast or loaded the machine is."""
    child = _start_child(forkserver, str(tmp_path / "calibration"), str(tmp_path / "calibration.log"), 0)
    start = time.monotonic()
    child.join(timeout=600)
    return time.monotonic() - start


def test_killed_saves_leave_only_recoverable_models(tmp_path, forkserver):
    rng = random.Random(20261127)
    kill_points = collections.Counter()
    max_kill_delay_s = _seconds_to_save_all(tmp_path, forkserver)
    expected = {}
    for run in range(RUNS):
        seed = rng.randrange(SEEDS)
        if seed not in expected:
            expected[seed] = {state_dict_hash(model.state_dict()) for model in lineage(seed)}
        store_dir, log_path = str(tmp_path / f"store{run}"), str(tmp_path / f"run{run}.log")
        child = _start_child(forkserver, store_dir, log_path, seed)
        child.join(timeout=rng.uniform(0.0, max_kill_delay_s))
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        kill_points[_kill_point(log_path)] += 1

        store = open_store(store_dir)
        for model_id in BaselineSaveService(*store).all_model_ids():
            recovered = WeightUpdateSaveService(*store).recover_model(model_id, execute_checks=True).model
            assert state_dict_hash(recovered.state_dict()) in expected[seed], f"run {run}: {model_id} differs"
        assert maintenance.verify(store) == []
        maintenance.collect_garbage(store, grace_seconds=0)
        assert maintenance.collect_garbage(store, dry_run=True, grace_seconds=0).count == 0
    print(f"\n{RUNS} SIGKILL runs; kill points: {dict(sorted(kill_points.items()))}")
    assert sum(kill_points.values()) == RUNS
    assert len(kill_points) >= 4, f"kills landed in too few places: {dict(kill_points)}"
