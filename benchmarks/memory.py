"""Peak memory of saves and recoveries of a large model, each in a fresh process, next to torch.save and raw load.

    python -m benchmarks.memory [--size-mb 1024] [--repeat 3] [--phases unmet|all|none] [--out DIR] [--work-dir DIR]

The model is `BigModel`, a stack of 16 square float32 `Linear` layers of about `--size-mb` MiB (1 GiB by default),
saved by import path (`benchmarks.memory:BigModel`) with its layer count and width as init args. One child process
prepares a store: version 1 of `big` a snapshot, version 2 a full fine-tune of it (every tensor changed a little:
noise of 1e-3 times its standard deviation added to every element) saved as an update of version 1, and the
snapshot's state dict as a `torch.save` file for the raw load. Then every operation runs `--repeat` times, each
run in a new child process that measures only that one operation:

- baseline save: `mmlib.save(model, store, name=..., approach="snapshot")` of a newly initialised model into an
  empty store (so no blob is already stored);
- update save: `mmlib.save(model, store, base="big:v1", approach="update")` of a full fine-tune of version 1 (new
  noise each run, so no blob is already stored);
- baseline recovery and update recovery: `mmlib.load("big:v1", store)` and `mmlib.load("big:v2", store)`, checks on;
- the anchors: `torch.save(model.state_dict())` + fsync of the file and its directory, and raw load
  (`torch.load(weights_only=True)` + constructing the model + `load_state_dict`).

A save's child builds the model first, so the model counts in its baseline ("interpreter + model"); a
recovery's child builds nothing, so its figure includes the recovered model. Before the operation the child
collects garbage, returns free heap memory to the system (`malloc_trim`), reads its RSS (the baseline) and resets
the kernel's high-water mark of its RSS (`/proc/self/clear_refs`); during it a thread reads the RSS from
`/proc/self/statm` every 2 ms. The peak is the high-water mark (`ru_maxrss`) after the operation minus the
baseline; the sampled peak is kept beside it. Each is also given as a ratio to the model's tensor bytes and
compared with the targets of issue #28.

`--phases` (default `unmet`: for operations that miss their target) runs one more child per operation with
mmlib's save and recovery steps wrapped (in that process only): each call records its start and end, the RSS on
entry and exit and the bytes of the buffers and tensors passed to it and returned by it, and the 2 ms samples give
the highest RSS during it, so the report says which steps were running at the peak, which had handed back how many
bytes by then, and how much memory each kept (every call is in the JSON). Writes `memory.json` and `memory.md` to
`--out` (default `bench-results/memory/`) and prints the report; progress lines go to stderr (see
`benchmarks.common.Progress`).
"""

import argparse
import bisect
import ctypes
import functools
import gc
import importlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch

from benchmarks.common import RESULTS_DIR, Progress, git_revision, ratio, raw_load, write_json
from benchmarks.report import fmt_bytes, fmt_ratio, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(RESULTS_DIR, "memory")
MODEL_IMPORT = "benchmarks.memory:BigModel"
NAME = "big"
SNAPSHOT_REF, UPDATE_REF = f"{NAME}:v1", f"{NAME}:v2"
LAYERS = 16
NOISE = 1e-3  # the fine-tune's change of an element, in standard deviations of its tensor
NOISE_CHUNK = 1 << 20  # elements of noise drawn at once, so drawing it needs no copy of a whole tensor
SAMPLE_SECONDS = 0.002
TIMELINE_POINTS = 300  # samples of the instrumented runs' RSS kept in the JSON
SNAPSHOT_FILE, ANCHOR_PREFIX, SAVE_STORE_PREFIX = "snapshot.pt", "anchor-", "save-store-"


class BigModel(torch.nn.Module):
    """A stack of `layers` square `Linear` layers of `width` features: a model whose bytes are all in large
    tensors, as a large language or vision model's are."""

    def __init__(self, layers: int, width: int):
        super().__init__()
        self.layers = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass(frozen=True)
class Operation:
    """A measured operation: what it runs, whether the model exists before it (a save, whose baseline includes
    the model) or is its result (a recovery), and issue #28's target for its peak over the model's bytes."""

    label: str
    is_save: bool
    target: Optional[float]
    includes: str


OPERATIONS = {
    "snapshot_save": Operation(
        "baseline save: mmlib.save(approach='snapshot')", True, 0.2,
        "a newly initialised model saved as a snapshot into an empty store: environment capture, state capture, "
        "hashing, writing the safetensors blob and the documents"),
    "update_save": Operation(
        "update save: mmlib.save(base='big:v1', approach='update')", True, 1.0,
        "a full fine-tune of v1 saved as an update: hashing, reading v1's tensors from the store, encoding every "
        "tensor's delta, writing the update blob and the documents"),
    "snapshot_recovery": Operation(
        "baseline recovery: mmlib.load('big:v1'), checks on", False, 1.1,
        "reading and verifying v1's blob, rebuilding the model from it, the checks; the recovered model included"),
    "update_recovery": Operation(
        "update recovery: mmlib.load('big:v2'), checks on", False, 1.3,
        "reading v2's update blob and v1's snapshot blob, decoding every tensor, rebuilding, the checks; the "
        "recovered model included"),
    "torch_save": Operation(
        "anchor: torch.save(state_dict) + fsync", True, None,
        "torch.save of model.state_dict() to a new file, fsync of the file and its directory"),
    "raw_load": Operation(
        "anchor: raw load", False, None,
        "torch.load(weights_only=True) of v1's state dict, constructing BigModel (initialised, as its constructor "
        "does), load_state_dict; the loaded model included"),
}

# The steps of saves and recoveries the instrumented run wraps: (module, attribute). A module-level function is
# replaced wherever an mmlib module holds it (modules import functions by name); a method on its class. A step that
# no longer exists is listed in the report as not found.
PHASES = [
    ("mmlib.api", "Savers.environment"),
    ("mmlib.approaches.model_state", "capture"),
    ("mmlib.approaches.base", "AbstractSaveService._check_rebuildable"),
    ("mmlib.approaches.base", "merkle_tree"),
    ("mmlib.approaches.base", "AbstractSaveService._save_weights"),
    ("mmlib.persistence.base", "FilePersistenceService.write_stream"),
    ("mmlib.approaches.base", "AbstractSaveService._persist_model"),
    ("mmlib.persistence.base", "FilePersistenceService.read_bytes"),
    ("mmlib.approaches.base", "AbstractSaveService._read_weights"),
    ("mmlib.approaches.base", "AbstractSaveService._rebuild"),
    ("mmlib.approaches.model_building", "rebuild"),
    ("mmlib.approaches.base", "AbstractSaveService._check_model"),
    ("mmlib.track_env", "check_environment"),
    ("mmlib.approaches.update", "WeightUpdateSaveService._plan_update"),
    ("mmlib.approaches.update", "WeightUpdateSaveService._changed_tensors"),
    ("mmlib.approaches.update", "WeightUpdateSaveService._keyframes"),
    ("mmlib.approaches.update", "WeightUpdateSaveService._encode"),
    ("mmlib.approaches.update_format", "write_update"),
    ("mmlib.approaches.update_format", "read_update"),
    ("mmlib.approaches.update_reader", "UpdateReader.prefetch"),
    ("mmlib.approaches.update_reader", "UpdateReader.tensors"),
    ("mmlib.util.delta", "decode_chain"),
    ("mmlib.approaches.update_stream", "StreamedRecovery.state"),
    ("mmlib.approaches.update_stream", "StreamedRecovery._read_snapshot"),
    ("mmlib.approaches.update_stream", "StreamedRecovery._read_update"),
    ("mmlib.persistence._hashing", "VerifiedReader.readinto"),
    ("mmlib.persistence._hashing", "VerifiedReader.read"),
    ("mmlib.persistence._hashing", "VerifiedReader.finish"),
    ("mmlib.util.delta", "DeltaCodec.decode_into"),
    ("mmlib.approaches.version_cache", "VersionCache.remember"),
]


@functools.cache
def _statm() -> int:
    """A file descriptor of /proc/self/statm, opened once (re-read with pread)."""
    return os.open("/proc/self/statm", os.O_RDONLY)


def rss() -> int:
    """This process's resident set size in bytes, now."""
    return int(os.pread(_statm(), 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water() -> int:
    """The kernel's peak RSS of this process in bytes (`ru_maxrss`, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_high_water() -> bool:
    """Set the kernel's peak RSS of this process to its current RSS (Linux 4.0 and later); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the system, so the baseline holds no freed memory."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class RssSampler:
    """Reads this process's RSS every `SAMPLE_SECONDS` in a background thread; `samples` holds (seconds, bytes)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), rss()))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), rss()))


@dataclass(frozen=True)
class PhaseCall:
    """One call of a wrapped step: which, in which thread, when (perf_counter seconds), the RSS on entry and on
    exit, and the bytes of the buffers and tensors it was passed and returned (None: none)."""

    label: str
    thread: int
    start: float
    end: float
    rss_in: int
    rss_out: int
    passed_bytes: Optional[int]
    result_bytes: Optional[int]


def _nbytes(value: Any) -> Optional[int]:
    """Bytes of a buffer, tensor, encoded tensor (its `payload`) or mapping of tensors; else None."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return memoryview(value).nbytes
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return _total(value.values())
    payload = getattr(value, "payload", None)
    return None if payload is None else _nbytes(payload)


def _total(values: Iterable[Any]) -> Optional[int]:
    """The summed `_nbytes` of the values that have any (None when none has)."""
    known = [size for size in map(_nbytes, values) if size is not None]
    return sum(known) if known else None


class PhaseRecorder:
    """Wraps the steps of `PHASES` in this process so that every call is recorded as a `PhaseCall`."""

    def __init__(self) -> None:
        self.calls: list[PhaseCall] = []
        self.not_found: list[str] = []

    def install(self) -> None:
        for module_name, path in PHASES:
            try:
                owner: Any = importlib.import_module(module_name)
                *parents, name = path.split(".")
                for parent in parents:
                    owner = getattr(owner, parent)
                original = getattr(owner, name)
            except (ImportError, AttributeError):
                self.not_found.append(f"{module_name}:{path}")
                continue
            wrapped = self._wrapped(path, original)
            if parents:
                setattr(owner, name, wrapped)
                continue
            for module in [module for key, module in list(sys.modules.items()) if key.split(".")[0] == "mmlib"]:
                for attribute, value in list(vars(module).items()):
                    if value is original:
                        setattr(module, attribute, wrapped)

    def _wrapped(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            start, rss_in = time.perf_counter(), rss()
            result = function(*args, **kwargs)
            self.calls.append(PhaseCall(label, threading.get_ident(), start, time.perf_counter(), rss_in, rss(),
                                        _total([*args, *kwargs.values()]), _nbytes(result)))
            return result
        return recorded


def model_width(size_mb: float) -> int:
    """The width of `LAYERS` square float32 layers whose weights take `size_mb` MiB."""
    return max(1, round(math.sqrt(size_mb * 2 ** 20 / (4 * LAYERS))))


def build_model(width: int, seed: int) -> BigModel:
    """A BigModel initialised by its constructor from `seed`."""
    torch.manual_seed(seed)
    return BigModel(LAYERS, width)


def fine_tune(model: torch.nn.Module, seed: int) -> None:
    """Change every element of every tensor a little, as a step of a full fine-tune does (in place): noise of
    `NOISE` times the tensor's standard deviation, drawn in chunks so that no tensor-sized temporary exists."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            scale = NOISE * float(tensor.std())
            for chunk in tensor.view(-1).split(NOISE_CHUNK):
                chunk.add_(torch.randn(chunk.shape, generator=generator), alpha=scale)


def _run_child(arguments: list[str]) -> dict[str, Any]:
    """Run `child(arguments)` in a fresh Python process at the repository root; the JSON it printed last."""
    completed = subprocess.run([sys.executable, "-c", "import sys; from benchmarks.memory import child; "
                                "child(sys.argv[1:])", *arguments], cwd=ROOT, capture_output=True, text=True,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"child {' '.join(arguments)} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child(arguments: list[str]) -> None:
    """One child process: `prepare WORK WIDTH`, or `measure|phases OPERATION WORK WIDTH RUN`; prints JSON."""
    import mmlib.api  # noqa: F401 (`mmlib` imports it lazily: its imports belong to the interpreter's baseline)

    step, rest = arguments[0], arguments[1:]
    if step == "prepare":
        result = _prepare(rest[0], int(rest[1]))
    else:
        result = _measure(rest[0], rest[1], int(rest[2]), int(rest[3]), instrument=step == "phases")
    print(json.dumps(result))


def _prepare(work: str, width: int) -> dict[str, Any]:
    """The store the recoveries and update saves use (v1 a snapshot, v2 a fine-tune of it as an update) and the
    raw load's file; the bytes each version added."""
    from benchmarks.save_durability import durable_torch_save
    from mmlib.api import save

    store = os.path.join(work, "store")
    model = build_model(width, seed=0)
    snapshot = save(model, store, name=NAME, approach="snapshot", model_import=MODEL_IMPORT,
                    init_args={"layers": LAYERS, "width": width})
    durable_torch_save(model.state_dict(), os.path.join(work, SNAPSHOT_FILE))
    fine_tune(model, seed=0)
    update = save(model, store, name=NAME, approach="update")
    return {"snapshot_bytes": snapshot.size, "update_bytes": update.size, "snapshot_id": snapshot.id,
            "update_id": update.id}


def _operation(key: str, work: str, width: int, run: int) -> tuple[Optional[torch.nn.Module], Callable[[], Any]]:
    """The model a save starts from (None for a recovery) and the operation `key` as a call; run `run` of it
    saves a model of its own, so that no blob is already stored."""
    from benchmarks.save_durability import durable_torch_save
    from mmlib.api import load, save  # what `mmlib.save` and `mmlib.load` call

    store = os.path.join(work, "store")
    init_args = {"layers": LAYERS, "width": width}
    if key == "snapshot_save":
        model = build_model(width, seed=1 + run)
        return model, lambda: save(model, os.path.join(work, f"{SAVE_STORE_PREFIX}{run}"), name=NAME,
                                   approach="snapshot", model_import=MODEL_IMPORT, init_args=init_args)
    if key == "update_save":
        model = build_model(width, seed=0)
        fine_tune(model, seed=1 + run)
        return model, lambda: save(model, store, base=SNAPSHOT_REF, approach="update")
    if key == "torch_save":
        model = build_model(width, seed=1 + run)
        return model, lambda: durable_torch_save(model.state_dict(), os.path.join(work, f"{ANCHOR_PREFIX}{run}.pt"))
    if key == "snapshot_recovery":
        return None, lambda: load(SNAPSHOT_REF, store)
    if key == "update_recovery":
        return None, lambda: load(UPDATE_REF, store)
    if key == "raw_load":
        factory = functools.partial(BigModel, **init_args)  # raw_load only calls its `cls()`
        return None, lambda: raw_load(factory, os.path.join(work, SNAPSHOT_FILE))
    raise ValueError(f"unknown operation {key!r}; choose from {', '.join(OPERATIONS)}")


def _measure(key: str, work: str, width: int, run: int, instrument: bool) -> dict[str, Any]:
    """Run one operation in this (fresh) process and measure its peak RSS above the baseline (see the module
    docstring); with `instrument`, also which steps ran when (`PhaseRecorder`)."""
    release_free_memory()
    interpreter = rss()
    model, operation = _operation(key, work, width, run)
    recorder = PhaseRecorder()
    if instrument:
        recorder.install()
    sys.setswitchinterval(SAMPLE_SECONDS / 4)  # the sampler gets the GIL within its interval
    release_free_memory()
    baseline = rss()
    reset = reset_high_water()
    high_before = high_water()
    with RssSampler() as sampler:
        start = time.perf_counter()
        result = operation()
        seconds = time.perf_counter() - start
    high = high_water()
    retained = rss() - baseline
    del result
    sampled_peak = max(value for _, value in sampler.samples) - baseline
    measured: dict[str, Any] = {
        "interpreter_rss": interpreter, "baseline_rss": baseline,
        "model_rss": baseline - interpreter if model is not None else None,
        "peak_bytes": high - baseline if reset or high > high_before else None,
        "sampled_peak_bytes": sampled_peak, "retained_bytes": retained, "seconds": seconds,
        "samples": len(sampler.samples), "high_water_reset": reset,
    }
    if instrument:
        measured["phases"] = _phase_summary(recorder, sampler.samples, start, baseline)
    return measured


def _phase_summary(recorder: PhaseRecorder, samples: list[tuple[float, int]], start: float,
                   baseline: int) -> dict[str, Any]:
    """Per wrapped step (in the order they first ran): calls, threads, first start and last end (ms from the
    operation's start), RSS above the baseline on first entry, on last exit and at most while a call ran, the bytes
    returned, and at the time of the sampled peak the calls done (with the bytes they returned) and running (with
    the bytes passed to them); the sampled peak, its time and the steps running then; every call (RSS above the
    baseline); a thinned RSS timeline."""
    times = [moment for moment, _ in samples]

    def highest(begin: float, end: float) -> int:
        window = samples[bisect.bisect_left(times, begin):bisect.bisect_right(times, end)]
        return max((value for _, value in window), default=0)

    def ms(moment: float) -> float:
        return round((moment - start) * 1e3, 1)

    peak_time, peak_value = max(samples, key=lambda sample: sample[1])
    steps: dict[str, list[PhaseCall]] = {}
    for call in sorted(recorder.calls, key=lambda call: call.start):
        steps.setdefault(call.label, []).append(call)
    rows = []
    for label, calls in steps.items():
        done = [call for call in calls if call.end <= peak_time]
        running = [call for call in calls if call.start <= peak_time < call.end]
        rows.append({"step": label, "calls": len(calls), "threads": len({call.thread for call in calls}),
                     "start_ms": ms(calls[0].start), "end_ms": ms(max(call.end for call in calls)),
                     "rss_in": calls[0].rss_in - baseline,
                     "rss_out": max(calls, key=lambda call: call.end).rss_out - baseline,
                     "highest": max(max(highest(call.start, call.end), call.rss_in, call.rss_out)
                                    for call in calls) - baseline,
                     "returned_bytes": _summed(calls, "result_bytes"), "done_at_peak": len(done),
                     "returned_at_peak": _summed(done, "result_bytes"), "running_at_peak": len(running),
                     "passed_to_running": _summed(running, "passed_bytes")})
    threads = {thread: index for index, thread in enumerate(dict.fromkeys(call.thread for call in recorder.calls))}
    stride = max(1, len(samples) // TIMELINE_POINTS)
    return {"steps": rows, "peak_bytes": peak_value - baseline, "peak_ms": ms(peak_time),
            "running_at_peak": sorted({call.label for call in recorder.calls if call.start <= peak_time < call.end}),
            "not_found": recorder.not_found,
            "calls": [{"step": call.label, "thread": threads[call.thread], "start_ms": ms(call.start),
                       "end_ms": ms(call.end), "rss_in": call.rss_in - baseline, "rss_out": call.rss_out - baseline,
                       "passed_bytes": call.passed_bytes, "returned_bytes": call.result_bytes}
                      for call in sorted(recorder.calls, key=lambda call: call.start)],
            "timeline": [[ms(moment), value - baseline] for moment, value in samples[::stride]]}


def _summed(calls: list[PhaseCall], field: str) -> Optional[int]:
    """The calls' `passed_bytes` or `result_bytes`, summed (None when no call has any)."""
    known = [getattr(call, field) for call in calls if getattr(call, field) is not None]
    return sum(known) if known else None


def _remove_output(work: str, key: str, run: int) -> None:
    """Delete what a run wrote outside the prepared store (the update saves stay in it: they cannot be split off)."""
    if key == "snapshot_save":
        shutil.rmtree(os.path.join(work, f"{SAVE_STORE_PREFIX}{run}"), ignore_errors=True)
    elif key == "torch_save":
        os.remove(os.path.join(work, f"{ANCHOR_PREFIX}{run}.pt"))


def _spread(values: list[Optional[float]]) -> dict[str, Optional[float]]:
    """Median and max of the measured values (None when a run could not measure one)."""
    known = [value for value in values if value is not None]
    return {"median": statistics.median(known) if known else None, "max": max(known) if known else None}


def _summary(key: str, runs: list[dict[str, Any]], model_bytes: int) -> dict[str, Any]:
    """An operation's figures over its runs; the peak is the high-water mark, or the sampled peak where the
    kernel's high-water mark could not be reset and the operation did not raise it."""
    operation = OPERATIONS[key]
    peaks = [run["peak_bytes"] if run["peak_bytes"] is not None else run["sampled_peak_bytes"] for run in runs]
    peak = _spread(peaks)
    ratios = {name: ratio(value, model_bytes) if value is not None else None for name, value in peak.items()}
    return {"label": operation.label, "includes": operation.includes, "is_save": operation.is_save,
            "target": operation.target, "peak_bytes": peak, "ratio": ratios,
            "sampled_peak_bytes": _spread([run["sampled_peak_bytes"] for run in runs]),
            "retained_bytes": _spread([run["retained_bytes"] for run in runs]),
            "seconds": _spread([run["seconds"] for run in runs]),
            "met": None if operation.target is None or ratios["median"] is None
            else ratios["median"] <= operation.target,
            "runs": runs}


def measure(size_mb: float, repeat: int, phases: str, work_dir: Optional[str], progress: Progress) -> dict[str, Any]:
    """Every operation's figures, each run in a fresh child process, and the instrumented runs `phases` asks for."""
    width = model_width(size_mb)
    with torch.device("meta"):
        model_bytes = sum(parameter.nbytes for parameter in BigModel(LAYERS, width).parameters())
    results: dict[str, Any] = {
        "meta": {"size_mb": size_mb, "layers": LAYERS, "width": width, "model_bytes": model_bytes, "repeat": repeat,
                 "noise": NOISE, "sample_interval_s": SAMPLE_SECONDS, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "platform": platform.platform(),
                 "python": sys.version.split()[0], "git": git_revision()},
        "operations": {}, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="mmlib-memory-", dir=work_dir) as work:
        progress(f"preparing the store: {NAME} v1 (snapshot) and v2 (update) of a {fmt_bytes(model_bytes)} model")
        results["prepared"] = _run_child(["prepare", work, str(width)])
        for key, operation in OPERATIONS.items():
            runs = []
            for run in range(repeat):
                progress(f"{operation.label}: run {run + 1} of {repeat}")
                runs.append(_run_child(["measure", key, work, str(width), str(run)]))
                _remove_output(work, key, run)
            results["operations"][key] = _summary(key, runs, model_bytes)
        for key, summary in results["operations"].items():
            if summary["target"] is not None and (phases == "all" or (phases == "unmet" and not summary["met"])):
                progress(f"{summary['label']}: instrumented run")
                results["phases"][key] = _run_child(["phases", key, work, str(width), str(repeat)])
                _remove_output(work, key, repeat)
    return results


def _cell(figures: dict[str, Optional[float]], format_value: Callable[[Optional[float]], str]) -> str:
    """`median / max` of a figure, formatted."""
    return f"{format_value(figures['median'])} / {format_value(figures['max'])}"


def report(results: dict[str, Any]) -> str:
    """The markdown report: the figures, what each includes, and where the instrumented runs' peaks come from."""
    meta, prepared = results["meta"], results["prepared"]
    model_bytes = meta["model_bytes"]
    lines = ["## Peak memory of saves and recoveries, each in a fresh process\n",
             f"BigModel: {meta['layers']} Linear layers of {meta['width']}x{meta['width']} float32, "
             f"{fmt_bytes(model_bytes)} of tensors (= 1x); v2 changes every element by noise of {meta['noise']} "
             f"standard deviations and stores {fmt_bytes(prepared['update_bytes'])} "
             f"({fmt_ratio(ratio(prepared['update_bytes'], prepared['snapshot_bytes']))} of v1's "
             f"{fmt_bytes(prepared['snapshot_bytes'])}). {meta['repeat']} runs each (median / max); mmlib at "
             f"{meta.get('git') or 'an unknown revision'}, torch "
             f"{meta['torch']}, {meta['threads']} threads, {meta['platform']}, wall time {meta['wall_s']:.0f} s\n"]
    rows = []
    for summary in results["operations"].values():
        target = summary["target"]
        status = "" if target is None else f"<= {target:.1f}x: {'met' if summary['met'] else 'NOT met'}"
        rows.append([summary["label"], "interpreter + model" if summary["is_save"] else "interpreter",
                     _cell(summary["peak_bytes"], fmt_bytes), _cell(summary["ratio"], fmt_ratio),
                     _cell(summary["sampled_peak_bytes"], fmt_bytes), _cell(summary["retained_bytes"], fmt_bytes),
                     status])
    lines.append(table(["operation", "baseline", "peak above baseline", "peak / model", "sampled peak (2 ms)",
                        "kept after it", "target (median)"], rows))
    lines += ["", "What each figure includes:",
              "- peak above baseline: the kernel's high-water mark of the child's RSS during the operation "
              "(reset just before it through /proc/self/clear_refs, read as ru_maxrss after it) minus the RSS just "
              "before it. Baseline: a save's child has imported torch and mmlib and built the model (so the "
              "model, 1x, is in the baseline and not in the figure); a recovery's child has only imported them "
              "(so the recovered model, 1x, is in the figure). Freed heap memory is returned to the system "
              "(malloc_trim) before the baseline is read. RSS counts the process's own memory and the file pages "
              "it maps, not the page cache of files it reads or writes.",
              "- sampled peak: the highest RSS read from /proc/self/statm every 2 ms during the operation, minus "
              "the baseline (misses spikes shorter than a sample).",
              "- kept after it: RSS after the operation minus the baseline, with its result still held (a "
              "recovery's model; the Version a save returns).", ""]
    lines += [f"- {summary['label']}: {summary['includes']}." for summary in results["operations"].values()]
    for key, run in results["phases"].items():
        lines += _phase_section(results["operations"][key]["label"], run, model_bytes)
    return "\n".join(lines)


def _phase_section(label: str, run: dict[str, Any], model_bytes: int) -> list[str]:
    """The markdown of one instrumented run: its peak, the steps running then, and every wrapped step's figures."""
    phases = run["phases"]
    lines = [f"\n### Where the peak of {label} comes from (one instrumented run)\n",
             f"Sampled peak {fmt_bytes(phases['peak_bytes'])} ({fmt_ratio(ratio(phases['peak_bytes'], model_bytes))})"
             f" above the baseline at {phases['peak_ms']:.0f} ms of {run['seconds'] * 1e3:.0f} ms; high-water mark "
             f"{fmt_bytes(run['peak_bytes'])}; steps running at the peak: "
             f"{', '.join(phases['running_at_peak']) or 'none of the wrapped ones'}.\n"]
    rows = [[step["step"], f"{step['calls']} ({step['threads']})", f"{step['start_ms']:.0f}-{step['end_ms']:.0f}",
             fmt_bytes(step["rss_in"]), fmt_bytes(step["rss_out"]), fmt_bytes(step["highest"]),
             fmt_bytes(step["returned_bytes"]), f"{step['done_at_peak']} ({fmt_bytes(step['returned_at_peak'])})",
             f"{step['running_at_peak']} ({fmt_bytes(step['passed_to_running'])})"] for step in phases["steps"]]
    lines.append(table(["step", "calls (threads)", "ms from start", "RSS above baseline on first entry",
                        "on last exit", "highest during a call", "bytes returned",
                        "at the peak: calls done (bytes they returned)", "running (bytes passed to them)"], rows))
    if phases["not_found"]:
        lines.append(f"\nSteps not found in this mmlib (not wrapped): {', '.join(phases['not_found'])}.")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024.0, help="MiB of the model's tensors (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs per operation (default 3)")
    parser.add_argument("--phases", choices=["unmet", "all", "none"], default="unmet",
                        help="operations that also get an instrumented run (default: those missing their target)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for memory.json and memory.md (default "
                                                           f"{DEFAULT_OUT})")
    parser.add_argument("--work-dir", help="where the stores and files are written (default: system temp)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size_mb <= 0:
        parser.error("--repeat must be at least 1 and --size-mb positive")
    progress = Progress()
    start = time.perf_counter()
    results = measure(args.size_mb, args.repeat, args.phases, args.work_dir, progress)
    results["meta"]["wall_s"] = time.perf_counter() - start
    text = report(results)
    os.makedirs(args.out, exist_ok=True)
    json_path, markdown_path = os.path.join(args.out, "memory.json"), os.path.join(args.out, "memory.md")
    write_json(json_path, results)
    with open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    print(text)
    print(f"\n({json_path}; {markdown_path})")


if __name__ == "__main__":
    main()
