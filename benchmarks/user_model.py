"""A user's model for the benchmark: a copy of a reference model's source in its own .py file, and recoveries of it
in fresh processes.

`write_user_model` copies the module that defines a class of `mmlib.models` into a file of its own and imports it
from that path, as a user's script imports the file next to it, so mmlib saves its classes with that file as code
rather than by an import path into mmlib. `fresh_process_recovery` and `fresh_process_raw_load` time what a user's
next program does: `python -m benchmarks.user_model ...` starts, imports, recovers once, and reports. Its recovery
call is timed in the child; its process time runs from spawning it to the moment the model is back (the untimed
exactness check after it and the interpreter's exit are left out). This module imports only the standard library at
the top, so the raw load's process never imports mmlib.
"""

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import time
from types import ModuleType
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_file(path: str) -> ModuleType:
    """Import the .py file at `path` as the module named after its stem (as `import user_resnet` would, with the
    file's folder on sys.path); a module of that name imported before is replaced."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path!r}: not a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_user_model(cls: type, directory: str) -> tuple[str, type]:
    """Copy the module defining `cls` to `<directory>/user_<module>.py`, import it from there; returns the file
    and its class of `cls`'s name.

    The copy must stand alone as a user's file does: a module importing mmlib or importing relatively is refused.
    """
    source_path = inspect.getsourcefile(sys.modules[cls.__module__])
    if source_path is None:
        raise ValueError(f"{cls.__qualname__} has no source file to copy")
    with open(source_path, encoding="utf-8") as handle:
        source = handle.read()
    for node in ast.walk(ast.parse(source, source_path)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "mmlib") or \
                isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "mmlib" for alias in node.names):
            raise ValueError(f"{source_path} imports mmlib or imports relatively: a user's copy would not stand alone")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"user_{cls.__module__.rsplit('.', 1)[-1]}.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(source)
    return path, getattr(import_file(path), cls.__name__)


def _run_child(arguments: list[str]) -> dict[str, Any]:
    """Run this module in a fresh interpreter (data earlier steps left unwritten flushed first, untimed); its report
    with `process_s`, the seconds from spawning it to its recovered model."""
    os.sync()
    started = time.time()  # the wall clock: the child's moment of recovery is compared with it
    completed = subprocess.run([sys.executable, "-m", "benchmarks.user_model", *arguments], cwd=ROOT,
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the fresh-process recovery {arguments[0]} failed (exit {completed.returncode}): "
                           f"{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.splitlines()[-1])
    return {"recover_s": report["recover_s"], "process_s": report["recovered_at"] - started,
            "recovered_equal": report["recovered_equal"]}


def fresh_process_recovery(store: str, service_class: type, kwargs: dict[str, Any], model_id: str,
                           expected: str) -> dict[str, Any]:
    """Recover `model_id` (checks on) in a fresh process that imports `service_class` from `mmlib.save` (as the
    README does) and builds it with `kwargs` over `open_store(store)`; the recovered state dict is compared with
    the torch.save file `expected`, untimed."""
    return _run_child(["mmlib", "--store", store, "--service", service_class.__name__, "--kwargs", json.dumps(kwargs),
                       "--model-id", model_id, "--expected", expected])


def fresh_process_raw_load(code: str, class_name: str, weights: str) -> dict[str, Any]:
    """The anchor in a fresh process: import torch and the model's file, then `torch.load(weights_only=True)` +
    construct + `load_state_dict` (the timed call)."""
    return _run_child(["raw", "--code", code, "--class", class_name, "--weights", weights])


def _recover(store: str, service: str, kwargs: str, model_id: str, expected: str) -> tuple[float, bool, float]:
    """In the child: a user's recovery through mmlib; the seconds of the recover_model call, whether the model came
    back bit for bit, and the wall-clock moment it was back."""
    import torch

    import mmlib.save
    from mmlib.equal import state_dict_equal
    from mmlib.persistence import open_store

    save_service = getattr(mmlib.save, service)(*open_store(store), **json.loads(kwargs))
    start = time.perf_counter()
    model = save_service.recover_model(model_id, execute_checks=True).model
    seconds = time.perf_counter() - start
    recovered_at = time.time()
    equal = state_dict_equal(model.state_dict(), torch.load(expected, weights_only=True))
    return seconds, equal, recovered_at


def _raw_load(code: str, class_name: str, weights: str) -> tuple[float, bool, float]:
    """In the child: a plain PyTorch user's load of the model file, as `benchmarks.common.raw_load` does it; its
    seconds, True (it loads the reference file itself) and the wall-clock moment the model was back."""
    import torch

    cls = getattr(import_file(code), class_name)
    start = time.perf_counter()
    state_dict = torch.load(weights, weights_only=True)
    model = cls()
    model.load_state_dict(state_dict)
    return time.perf_counter() - start, True, time.time()


def main(argv: Optional[list[str]] = None) -> int:
    """The child: recover once as told, print one JSON line with the recovery's seconds and wall-clock moment."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_model", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    mmlib_kind = kinds.add_parser("mmlib", help="recover through a save service, checks on")
    for option in ("--store", "--service", "--kwargs", "--model-id", "--expected"):
        mmlib_kind.add_argument(option, required=True)
    raw_kind = kinds.add_parser("raw", help="torch.load(weights_only=True) + construct + load_state_dict")
    for option in ("--code", "--class", "--weights"):
        raw_kind.add_argument(option, required=True)
    args = parser.parse_args(argv)
    if args.kind == "mmlib":
        seconds, equal, recovered_at = _recover(args.store, args.service, args.kwargs, args.model_id, args.expected)
    else:
        seconds, equal, recovered_at = _raw_load(args.code, getattr(args, "class"), args.weights)
    print(json.dumps({"recover_s": seconds, "recovered_at": recovered_at, "recovered_equal": equal}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
