"""Checkpoints of a run that crashes and restarts, and of a run saved from two processes at once: every listed
version recovers exactly, with the weights and optimizer state of its step, and the store verifies clean."""

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

import mmlib
from checkpoint_workers import (STEPS_PER_RUN, checkpoint_steps, checkpoint_until_killed, fresh_run, loss_at,
                                set_state_at)
from mmlib import maintenance
from mmlib.testing.stores import results_of_processes

KILLS = 6


@pytest.fixture(scope="module")
def forkserver():
    """Children come from a forkserver that imported torch and mmlib once, so each starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mmlib.checkpoints", "checkpoint_workers"])
    return context


def _check_every_listed_version(store) -> list[int]:
    """Every kept version of `run` holds the weights and optimizer state of its step; their steps."""
    steps = []
    for version in mmlib.find(store, name="run"):
        step = version.checkpoint["step"]
        expected, expected_optimizer = fresh_run()
        set_state_at(expected, expected_optimizer, step)
        model, optimizer = fresh_run()
        assert mmlib.resume(version.ref, store, model, optimizer) == step
        assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.state_dict().items())
        assert all(torch.equal(optimizer.state[parameter]["momentum_buffer"],
                               expected_optimizer.state[expected_parameter]["momentum_buffer"])
                   for parameter, expected_parameter in zip(model.parameters(), expected.parameters()))
        steps.append(step)
    return steps


def _run_child(forkserver, store_dir: str, kill_after_s: float = None) -> bool:
    """Run the crashing child: killed after `kill_after_s` (it saves checkpoints until then), or else saving
    STEPS_PER_RUN checkpoints; True when it was killed."""
    ready = forkserver.Event()
    steps = STEPS_PER_RUN if kill_after_s is None else 1_000_000
    child = forkserver.Process(target=checkpoint_until_killed, args=(store_dir, steps, ready))
    child.start()
    ready.wait(timeout=120)
    child.join(timeout=kill_after_s)
    killed = child.is_alive()
    if killed:
        os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert killed or child.exitcode == 0
    return killed


def test_a_run_killed_during_background_saves_and_prunes_keeps_every_listed_checkpoint_exact(tmp_path, forkserver):
    store_dir = str(tmp_path / "store")
    start = time.monotonic()
    _run_child(forkserver, store_dir)  # a whole run, unkilled: how long its saves take on this machine now
    span = time.monotonic() - start
    store = mmlib.open_store(store_dir)
    assert sorted(_check_every_listed_version(store))[-2:] == [STEPS_PER_RUN - 2, STEPS_PER_RUN - 1]
    rng = random.Random(20261207)
    kills = 0
    for _ in range(KILLS):
        kills += _run_child(forkserver, store_dir, rng.uniform(0.0, span))
        store = mmlib.open_store(store_dir)
        steps = _check_every_listed_version(store)
        assert steps and maintenance.verify(store) == []
    assert kills == KILLS
    _run_child(forkserver, store_dir)  # the run resumes and finishes
    store = mmlib.open_store(store_dir)
    steps = _check_every_listed_version(store)
    newest = max(steps)
    best = min(steps, key=lambda step: (loss_at(step), step))
    assert newest - 1 in steps and best in steps and len(steps) <= 3
    maintenance.collect_garbage(store, grace_seconds=0)
    assert maintenance.verify(store) == []
    assert maintenance.collect_garbage(store, dry_run=True, grace_seconds=0).count == 0


def test_two_processes_checkpointing_one_run_never_corrupt_each_other(tmp_path, forkserver):
    store_dir = str(tmp_path / "store")
    start = forkserver.Barrier(2)
    saved = results_of_processes(forkserver, checkpoint_steps, [(store_dir, list(range(worker, 40, 2)), start)
                                                                for worker in range(2)],
                                 forkserver.Queue(), 40, timeout=300)
    assert sorted(number for number, _ in saved) == list(range(1, 41))
    store = mmlib.open_store(store_dir)
    steps = _check_every_listed_version(store)
    assert len(steps) >= 3 and maintenance.verify(store) == []
    maintenance.collect_garbage(store, grace_seconds=0)
    assert maintenance.verify(store) == []
