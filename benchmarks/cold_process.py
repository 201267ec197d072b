"""First save and first checked recovery in a fresh process of a large environment, next to torch.save and raw load.

Run from the repository root: ``python -m benchmarks.cold_process [--distributions 300] [--repeats 9]
[--model resnet50] [--work-dir DIR] [--out FILE] [--profile] [--other-code DIR]``. It builds a virtual
environment in the work directory that sees this environment's packages (a ``.pth`` file adds its site-packages)
and `--distributions` generated ones: each a ``NAME-VERSION.dist-info`` with METADATA (headers and a 3 kB
description), RECORD, for half of them top_level.txt, and a small package or module, so reading every installed
distribution's metadata costs what it does in an environment of that size.

Every timed run is a new Python process of that environment: it imports what it needs (untimed), then times one
call. The first save (building the save info, which records the environment, and `save_model` into an existing
durable store) is compared with ``torch.save`` + ``fsync`` of the file and its directory; the first checked
recovery (``recover_model(execute_checks=True)``) with raw load (``torch.load`` + constructing the model +
``load_state_dict``). mmlib runs twice: with its cache of installed distributions (``MMLIB_CACHE_DIR`` in the
work directory) kept from the runs before (every process after the first), and with another one emptied before
each run (the first process after an install, or in a container without the cache). ``--other-code DIR`` also
times the mmlib package in DIR (e.g. a copy from before a change). Rounds interleave the contenders after one
untimed warm-up round, each round starting its recoveries and its saves with another contender, after an untimed
raw load and recovery that read their files back into the page cache. Prints the median and p90 of every
contender, and of each the time Python's garbage collector ran during the call, and writes them as JSON.
``--profile`` also prints the cProfile of one first recovery and one first save (cache kept).
"""

import argparse
import base64
import cProfile
import gc
import hashlib
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from typing import Any, Callable, Optional

DESCRIPTION = ("A generated distribution for the cold-process benchmark. " * 8 + "\n\n") * 6
CACHE_ENV = "MMLIB_CACHE_DIR"
RAW_LOAD, RECOVER, RECOVER_EMPTY = "raw load", "recover (cache kept)", "recover (cache emptied)"
TORCH_SAVE, SAVE, SAVE_EMPTY = "torch.save + fsync", "save (cache kept)", "save (cache emptied)"
RECOVER_OTHER, SAVE_OTHER = "recover, --other-code", "save, --other-code"
FULL_COLLECTION_S = 0.02  # a collection of the whole heap takes 60-70 ms with torch imported; young ones < 1 ms
ANCHORS = {RECOVER: RAW_LOAD, RECOVER_EMPTY: RAW_LOAD, RECOVER_OTHER: RAW_LOAD,
           SAVE: TORCH_SAVE, SAVE_EMPTY: TORCH_SAVE, SAVE_OTHER: TORCH_SAVE}


def _record_line(path: str, content: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(content)}"


def _write_distribution(site: str, index: int) -> None:
    """One generated distribution; its name, module layout and metadata files vary with `index` as real ones do."""
    kind = index % 4
    name, module = [(f"fake-lib-{index}", f"fake_lib_{index}"), (f"Fake.Tools{index}", f"faketools{index}"),
                    (f"py{index}-helper", f"hlp{index}"), (f"single{index}", f"single{index}")][kind]
    version = f"1.{index}.0"
    info = f"{name.replace('-', '_').replace('.', '_')}-{version}.dist-info"
    files: dict[str, bytes] = {}
    if kind == 3:
        files[f"{module}.py"] = f'"""Module {index}."""\nVALUE = {index}\n'.encode()
    else:
        files[f"{module}/__init__.py"] = f'"""Package {index}."""\nfrom {module}.core import VALUE\n'.encode()
        files[f"{module}/core.py"] = f"VALUE = {index}\n".encode()
        files[f"{module}/data/table.json"] = b"{}"
    headers = [("Metadata-Version", "2.1"), ("Name", name), ("Version", version),
               ("Summary", f"Generated distribution {index}"), ("Home-page", f"https://example.org/{name}"),
               ("Author", "Benchmark"), ("License", "MIT"), ("Requires-Python", ">=3.8"),
               *[("Classifier", f"Programming Language :: Python :: 3.{minor}") for minor in range(8, 13)],
               ("Description-Content-Type", "text/markdown")]
    files[f"{info}/METADATA"] = ("".join(f"{key}: {value}\n" for key, value in headers) + "\n"
                                 + DESCRIPTION).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: benchmark\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/INSTALLER"] = b"pip\n"
    if kind in (1, 2):
        files[f"{info}/top_level.txt"] = f"{module}\n".encode()
    record = [_record_line(path, content) for path, content in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = "\n".join(record).encode() + b"\n"
    for path, content in files.items():
        target = os.path.join(site, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(content)


def build_environment(directory: str, distributions: int) -> str:
    """A virtual environment seeing this one's packages and `distributions` generated ones; its python's path."""
    venv.create(directory, with_pip=False)
    site = sysconfig.get_path("purelib", vars={"base": directory, "platbase": directory})
    with open(os.path.join(site, "mmlib_benchmark_base.pth"), "w", encoding="utf-8") as handle:
        handle.write(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    for index in range(distributions):
        _write_distribution(site, index)
    return os.path.join(directory, "bin", "python")


def _child(python: str, arguments: list[str], env: dict[str, str], cwd: str) -> dict:
    """Run this file in `python` as a fresh process; the JSON its last stdout line holds."""
    completed = subprocess.run([python, os.path.abspath(__file__), "child", *arguments], env=env, cwd=cwd,
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"child {arguments[0]} failed:\n{completed.stderr[-3000:]}")
    if completed.stderr.strip():
        print(completed.stderr, file=sys.stderr, end="")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(python: str, work_dir: str, model: str, repeats: int, profile: bool,
            other_code: Optional[str] = None) -> dict[str, Any]:
    """Median and p90 seconds of every contender, each run a fresh process of `python`; with `other_code` (a
    directory holding another version of the `mmlib` package) its first recovery and save too."""
    from benchmarks.common import p90, ratio

    kept_cache, emptied_cache = os.path.join(work_dir, "cache-kept"), os.path.join(work_dir, "cache-emptied")
    env = {**{key: value for key, value in os.environ.items() if key != "PYTHONPATH"}, CACHE_ENV: kept_cache}
    store, weights = os.path.join(work_dir, "store"), os.path.join(work_dir, "weights.pt")
    prepared = _child(python, ["prepare", model, store, weights], env, work_dir)
    described = _child(python, ["describe"], env, work_dir)

    def run(kind: str, *arguments: str, empty_cache: bool = False,
            code: Optional[str] = None) -> Callable[[], tuple[float, float]]:
        def go() -> tuple[float, float]:
            child_env = {**env, "PYTHONPATH": code} if code else env
            if empty_cache:
                shutil.rmtree(emptied_cache, ignore_errors=True)
                child_env = {**child_env, CACHE_ENV: emptied_cache}
            os.sync()
            timed = _child(python, [kind, model, *arguments], child_env, work_dir)
            return timed["seconds"], timed["gc_seconds"]
        return go

    recoveries = {RAW_LOAD: run("raw_load", weights), RECOVER: run("recover", store, prepared["model_id"]),
                  RECOVER_EMPTY: run("recover", store, prepared["model_id"], empty_cache=True)}
    saves = {TORCH_SAVE: run("torch_save", os.path.join(work_dir, "anchors")), SAVE: run("save", store),
             SAVE_EMPTY: run("save", store, empty_cache=True)}
    if other_code:
        recoveries[RECOVER_OTHER] = run("recover", store, prepared["model_id"], code=other_code)
        saves[SAVE_OTHER] = run("save", store, code=other_code)
    runs: dict[str, list[float]] = {name: [] for name in (*recoveries, *saves)}
    collecting: dict[str, list[float]] = {name: [] for name in runs}
    load_before = os.getloadavg()
    for round_index in range(repeats + 1):
        # The first recovery after the saves of the round before reads its files at disk speed, 200 ms slower for
        # ResNet-50 here (the saves push them out of the page cache): untimed runs read them back first.
        recoveries[RAW_LOAD]()
        recoveries[RECOVER]()
        for group in (list(recoveries.items()), list(saves.items())):
            shift = round_index % len(group)
            for name, go in group[shift:] + group[:shift]:
                seconds, gc_seconds = go()
                if round_index:
                    runs[name].append(seconds)
                    collecting[name].append(gc_seconds)
    results: dict[str, Any] = {"distributions": described["distributions"], "sys_path": described["sys_path"],
                               "repeats": repeats, "model": model, "load_average": [load_before, os.getloadavg()],
                               "contenders": {}}
    for name, values in runs.items():
        entry = {"median_s": statistics.median(values), "p90_s": p90(values), "runs_s": values,
                 "gc_median_s": statistics.median(collecting[name]), "gc_runs_s": collecting[name]}
        if name in ANCHORS:
            entry["median_ratio_to_anchor"] = ratio(entry["median_s"], statistics.median(runs[ANCHORS[name]]))
        results["contenders"][name] = entry
    if profile:
        for kind, arguments in (("recover", [store, prepared["model_id"]]), ("save", [store])):
            print(_child(python, [kind, model, *arguments, "--profile"], env, work_dir)["profile"])
    return results


def _timed(call: Callable[[], Any], profile: bool) -> dict[str, Any]:
    """Seconds `call` takes and, of those, the seconds Python's garbage collector ran (a fresh process's first full
    collection, 60-70 ms with torch imported, falls into whichever call crosses its threshold); with `profile` its
    cProfile (top 40 by cumulative time) instead."""
    if not profile:
        collecting: list[float] = []

        def on_collection(phase: str, _info: dict) -> None:
            collecting.append(time.perf_counter() if phase == "start" else time.perf_counter() - collecting.pop())

        gc.callbacks.append(on_collection)
        start = time.perf_counter()
        try:
            call()
        finally:
            seconds = time.perf_counter() - start
            gc.callbacks.remove(on_collection)
        return {"seconds": seconds, "gc_seconds": sum(collecting)}
    profiler = cProfile.Profile()
    profiler.runcall(call)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    return {"profile": text.getvalue()}


def child(arguments: list[str]) -> dict[str, Any]:
    """One fresh-process step (run as a script by `measure`): imports untimed, then the timed call."""
    kind, rest = arguments[0], arguments[1:]
    profile = "--profile" in rest
    rest = [argument for argument in rest if argument != "--profile"]
    if kind == "describe":
        import importlib.metadata
        return {"distributions": sum(1 for _ in importlib.metadata.distributions()), "sys_path": sys.path}
    import torch
    from mmlib.models import REFERENCE_MODELS
    cls = REFERENCE_MODELS[rest[0]]
    if kind == "raw_load":
        def raw_load() -> None:
            cls().load_state_dict(torch.load(rest[1], weights_only=True))
        return _timed(raw_load, profile)
    if kind == "torch_save":
        sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from benchmarks.save_durability import durable_torch_save
        model = cls()
        os.makedirs(rest[1], exist_ok=True)
        path = os.path.join(rest[1], f"{os.getpid()}-{time.time_ns()}.pt")
        return _timed(lambda: durable_torch_save(model.state_dict(), path), profile)
    from mmlib.persistence import open_store
    from mmlib.save import BaselineSaveService
    from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
    service = BaselineSaveService(*open_store(rest[1]))
    if kind == "recover":
        return _timed(lambda: service.recover_model(rest[2], execute_checks=True), profile)
    model = cls()

    def save() -> str:
        return service.save_model(ModelSaveInfoBuilder().add_model_info(model=model).build())
    if kind == "save":
        return _timed(save, profile)
    if kind == "prepare":
        torch.save(model.state_dict(), rest[2])
        return {"model_id": save()}
    raise ValueError(f"unknown child step {kind!r}")


def main(argv: Optional[list[str]] = None) -> None:
    from benchmarks.common import MODEL_LABELS, RESULTS_DIR, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distributions", type=int, default=300, help="generated distributions to add")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--model", default="resnet50", choices=sorted(MODEL_LABELS))
    parser.add_argument("--work-dir", help="where the environment, store and files are written (default: temp)")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "cold_process.json"))
    parser.add_argument("--profile", action="store_true", help="also print the cProfile of a first recovery and save")
    parser.add_argument("--other-code", help="a directory holding another version of the mmlib package (e.g. a "
                                             "copy from before a change) to time as well, imported from there")
    arguments = parser.parse_args(argv)
    if arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="mmlib-cold-", dir=arguments.work_dir) as work_dir:
        python = build_environment(os.path.join(work_dir, "venv"), arguments.distributions)
        results = measure(python, work_dir, arguments.model, arguments.repeats, arguments.profile,
                          arguments.other_code and os.path.abspath(arguments.other_code))
    write_json(arguments.out, results)
    print(f"## First call in a fresh process, {MODEL_LABELS[arguments.model]}, {results['distributions']} "
          f"distributions installed, {arguments.repeats} runs each (load average before and after: "
          f"{results['load_average'][0][0]:.2f}, {results['load_average'][1][0]:.2f})\n")
    print("| contender | median ms | p90 ms | median / anchor | of which garbage collection, median ms (runs with a "
          "full collection) |\n|---|---|---|---|---|")
    for name, entry in results["contenders"].items():
        share = f"{entry['median_ratio_to_anchor']:.2f}x ({ANCHORS[name]})" if name in ANCHORS else "anchor"
        full = sum(seconds > FULL_COLLECTION_S for seconds in entry["gc_runs_s"])
        print(f"| {name} | {entry['median_s'] * 1e3:.1f} | {entry['p90_s'] * 1e3:.1f} | {share} | "
              f"{entry['gc_median_s'] * 1e3:.1f} ({full} of {len(entry['gc_runs_s'])}) |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        print(json.dumps(child(sys.argv[2:])))
    else:
        main()
