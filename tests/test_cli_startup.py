"""The `mmlib` command starts at once: help, version and `ls` on an embedded store import neither torch nor numpy.

Each command runs as `python -m mmlib` in a fresh process that reports, as it exits, which heavy packages it
imported. (The commands that recover models import torch when they run: test_cli runs them in fresh processes.)
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import mmlib
from tiny_models import TinyNet

_TIMEOUT_S = 120
_HEAVY = ("torch", "numpy")

# Runs `python -m mmlib` with the given arguments; as the process exits, writes the heavy packages it imported to
# stderr as one JSON line after a marker.
_CHILD = textwrap.dedent('''
    import atexit
    import json
    import runpy
    import sys

    def report():
        sys.stderr.write("\\nimported: " + json.dumps(sorted(name for name in %r if name in sys.modules)) + "\\n")

    atexit.register(report)
    sys.argv = ["mmlib", *sys.argv[1:]]
    runpy.run_module("mmlib", run_name="__main__", alter_sys=True)
''' % (_HEAVY,))


@pytest.fixture(scope="module")
def saved_store(tmp_path_factory) -> dict:
    """An embedded store holding two versions of `detector` (a snapshot and an update), an unnamed model and two
    checkpoints of `run`."""
    path = str(tmp_path_factory.mktemp("startup") / "store")
    model = TinyNet()
    first = mmlib.save(model, path, name="detector")
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    second = mmlib.save(model, path, name="detector")
    unnamed = mmlib.save(TinyNet(), path)
    checkpoints = mmlib.Checkpointer(path, "run", model)
    run = [checkpoints.save(step=step).id for step in (10, 20)]
    return {"path": path, "named": [first.id, second.id], "unnamed": unnamed.id, "run": run}


def _run_all(commands: list[list[str]]) -> list[tuple[str, list[str]]]:
    """Run each command line in its own process (all at once); (stdout, heavy packages imported) of each, after
    checking that it exited with 0 and no traceback."""
    processes = [subprocess.Popen([sys.executable, "-c", _CHILD, *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for argv in commands]
    results = []
    for argv, process in zip(commands, processes):
        stdout, stderr = process.communicate(timeout=_TIMEOUT_S)
        assert process.returncode == 0, f"mmlib {' '.join(argv)}: exit {process.returncode}\n{stderr}"
        before, marker, imported = stderr.rpartition("\nimported: ")
        assert marker and "Traceback" not in before, stderr
        results.append((stdout, json.loads(imported)))
    return results


def test_help_version_and_ls_import_neither_torch_nor_numpy(saved_store):
    store = ["--store", saved_store["path"]]
    commands = {"help": ["--help"], "version": ["--version"], "ls help": ["ls", "--help"], "ls": [*store, "ls"],
                "ls by name": [*store, "ls", "--name", "detector"], "ls json": [*store, "ls", "--json"],
                "ls checkpoints": [*store, "ls", "--name", "run"],
                "prune": [*store, "prune", "run", "--keep-last", "1", "--dry-run"]}
    outputs = dict(zip(commands, _run_all(list(commands.values()))))

    assert "usage: mmlib" in outputs["help"][0] and "recover" in outputs["help"][0]
    assert outputs["version"][0].strip() == f"mmlib {mmlib.__version__}"
    assert "usage: mmlib ls" in outputs["ls help"][0] and "--name" in outputs["ls help"][0]
    every_id = [*saved_store["named"], saved_store["unnamed"], *saved_store["run"]]  # training states not listed
    listing = outputs["ls"][0].splitlines()
    assert listing[0].split()[:2] == ["ID", "TYPE"] and len(listing) == 1 + len(every_id)
    assert all(any(line.startswith(model_id[:12]) for line in listing) for model_id in every_id)
    assert {line.split()[-2] for line in listing[1:] if "detector" in line} == {"v1", "v2"}
    by_name = outputs["ls by name"][0].splitlines()[1:]
    assert sorted(line[:12] for line in by_name) == sorted(model_id[:12] for model_id in saved_store["named"])
    entries = json.loads(outputs["ls json"][0])
    assert sorted(entry["model_id"] for entry in entries) == sorted(every_id)
    assert {entry["model_id"]: entry.get("name") for entry in entries}[saved_store["unnamed"]] is None
    assert all(entry["size"] > 0 for entry in entries)
    checkpoints = outputs["ls checkpoints"][0].splitlines()
    assert checkpoints[0].split()[-3:] == ["STEP", "KEPT", "BY"] and [line.split()[-2] for line in checkpoints[1:]] == [
        "20", "10"]
    assert "would prune run:v1" in outputs["prune"][0]
    assert {what: imported for what, (_, imported) in outputs.items() if imported} == {}

