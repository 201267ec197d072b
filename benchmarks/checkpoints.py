"""Training checkpoints: `mmlib.Checkpointer` against Lightning-style `torch.save` files, in storage and time.

    python -m benchmarks.checkpoints [--steps 200] [--every 10] [--workloads resnet18,gpt] [--out DIR] [--quick]
                                     [--work-dir DIR]

Two workloads train on random data on the CPU: ResNet-18 (`mmlib.models`, 3x32x32 images, batch 8, SGD with
momentum 0.9, StepLR) and a small GPT-2-style causal language model defined here (4 pre-norm blocks, d_model 256,
vocabulary 1024, 64 tokens, tied embeddings; AdamW with linear warm-up then cosine decay). Every `--every` steps a
checkpoint is taken with retention keep_last=3 + keep_best=1 on `val_loss` (mode min; the loss of one fixed
held-out batch, in eval mode). Each workload is trained twice from the same seed, so both runs save the same
states (checked: the final weights of the two runs are compared bit by bit):

- the blocking run: at every checkpoint the baseline and `ckpt.save(step, metrics=...)` (blocking) save the same
  state, in alternating order, each timed alone after an untimed `os.sync()` (as `benchmarks.common.median_seconds`
  does). The baseline is what a Lightning user gets: `torch.save({"model": model.state_dict(), "optimizer":
  opt.state_dict(), "scheduler": sched.state_dict()}, path)` into a new file, `fsync` of the file and of its
  directory (timed); then, untimed, the files that are neither among the 3 newest nor the best so far are deleted
  (`os.remove`, as Lightning's `ModelCheckpoint` does; a file both newest and best is kept once). mmlib's save
  includes its retention pruning. Storage is measured after every checkpoint: the store directory (SQLite and blob
  files) against the kept files; at the end also after `maintenance.collect_garbage` (what retention left behind).
  Resuming the newest checkpoint into fresh objects must give the newest file's state dicts.
- the background run: `ckpt.save(step, metrics=..., blocking=False)`; timed are `ckpt.wait()` (the previous
  background save, which the save would wait for first) and then the call itself, against one copy of the same
  state to memory (`clone()` of every tensor of the model's, optimizer's and scheduler's state dicts) taken just
  before. The store's size is also sampled just before each retention pruning (in the background): its peak.

Writes `checkpoints.json` and `checkpoints.png` (`-quick` before the suffix for `--quick`) to `--out`.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

import mmlib
import mmlib.checkpoints
from benchmarks.common import RESULTS_DIR, Progress, bytes_on_disk, git_revision, p90, ratio, write_json
from benchmarks.plots import checkpoint_storage_plot
from benchmarks.report import fmt_bytes, fmt_ratio, fmt_seconds, table
from benchmarks.save_durability import durable_torch_save
from mmlib import maintenance, refs
from mmlib.models import ResNet18
from mmlib.persistence.store import BLOB_DIR

DEFAULT_OUT = os.path.join(RESULTS_DIR, "checkpoints")
KEEP_LAST, KEEP_BEST, MONITOR = 3, 1, "val_loss"
STORAGE_TARGET, TIME_TARGET, BLOCKED_TARGET = 0.6, 1.5, 1.0
QUICK_STEPS, QUICK_EVERY = 30, 5  # --quick: 6 checkpoints, so retention prunes
BATCH_SIZE, IMAGE_SIZE, NUM_CLASSES = 8, 32, 1000
VOCAB, SEQ_LEN, D_MODEL, LAYERS, HEADS = 1024, 64, 256, 4, 4
SEED = 0
BASELINE = ("torch.save({model, optimizer, scheduler} state dicts) + fsync of file and directory, one file per "
            "checkpoint; untimed, files neither among the 3 newest nor the best so far are deleted")


class _Block(torch.nn.Module):
    """A GPT-2 block: pre-norm causal self-attention and a 4x GELU MLP, each with a residual connection."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d_model), torch.nn.LayerNorm(d_model)
        self.qkv, self.proj = torch.nn.Linear(d_model, 3 * d_model), torch.nn.Linear(d_model, d_model)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d_model, 4 * d_model), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
                   for part in self.qkv(self.ln1(x)).split(width, dim=2))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln2(x))


class TinyGPT(torch.nn.Module):
    """A small GPT-2-style causal language model: token and position embeddings, pre-norm blocks, a final layer
    norm and an output layer tied to the token embedding."""

    def __init__(self, vocab: int = VOCAB, seq_len: int = SEQ_LEN, d_model: int = D_MODEL, layers: int = LAYERS,
                 heads: int = HEADS):
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(vocab, d_model), torch.nn.Embedding(seq_len, d_model)
        self.blocks = torch.nn.ModuleList(_Block(d_model, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.tokens.weight
        for module in self.modules():  # GPT-2's initialisation
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens) + self.positions(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@dataclass
class Training:
    """A model with its optimizer and scheduler, and how to draw a batch and score one."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    step_seconds: list[float] = field(default_factory=list)  # the training steps' times, filled by `_train`


def _resnet18(steps: int) -> Training:
    model = ResNet18()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, steps // 4), gamma=0.5)

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.rand(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), generator=generator))

    return Training(model, optimizer, scheduler, batch, lambda model, data: F.cross_entropy(model(data[0]), data[1]))


def _gpt(steps: int) -> Training:
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup))], milestones=[warmup])
    successor = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(SEED + 1))

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences that follow a fixed successor table, with 10% of the tokens replaced at random (learnable)."""
        tokens = [torch.randint(0, VOCAB, (BATCH_SIZE,), generator=generator)]
        for _ in range(SEQ_LEN):
            tokens.append(successor[tokens[-1]])
        sequence = torch.stack(tokens, dim=1)
        noise = torch.rand(sequence.shape, generator=generator) < 0.1
        sequence = torch.where(noise, torch.randint(0, VOCAB, sequence.shape, generator=generator), sequence)
        return sequence[:, :-1], sequence[:, 1:]

    return Training(model, optimizer, scheduler, batch,
                    lambda model, data: F.cross_entropy(model(data[0]).reshape(-1, VOCAB), data[1].reshape(-1)))


WORKLOADS: dict[str, tuple[str, Callable[[int], Training]]] = {
    "resnet18": ("ResNet-18 (3x32x32, batch 8, SGD momentum 0.9 + StepLR)", _resnet18),
    "gpt": (f"GPT-2-style LM ({LAYERS} blocks, d_model {D_MODEL}, vocab {VOCAB}, seq {SEQ_LEN}, batch {BATCH_SIZE}, "
            "AdamW + warm-up/cosine)", _gpt),
}


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nest of dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def _tensor_bytes(value: Any) -> int:
    """Bytes of the distinct tensors in a nest (a tied weight counts once)."""
    seen = {tensor.data_ptr(): tensor.numel() * tensor.element_size() for tensor in _tensors(value)}
    return sum(seen.values())


def _state_dicts(training: Training) -> dict:
    return {"model": training.model.state_dict(), "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict()}


def _timed(action: Callable[[], Any], sync: bool = False) -> tuple[Any, float]:
    """`action()` and its seconds; with `sync`, data other steps left unwritten is flushed first, untimed."""
    if sync:
        os.sync()
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


class LightningStyleFiles:
    """Checkpoint files in a directory with Lightning's retention: the `keep_last` newest and the best by the
    monitored value (mode min: a later checkpoint becomes the best only when strictly better)."""

    def __init__(self, directory: str, keep_last: int):
        self.directory, self.keep_last = directory, keep_last
        os.makedirs(directory)
        self.steps: list[int] = []
        self.best: Optional[tuple[float, int]] = None

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"step={step:06d}.ckpt")

    def save(self, step: int, state: dict, value: float) -> float:
        """Write the checkpoint (timed) and note it; its seconds."""
        _, seconds = _timed(lambda: durable_torch_save(state, self.path(step)), sync=True)
        self.steps.append(step)
        if self.best is None or value < self.best[0]:
            self.best = (value, step)
        return seconds

    def kept(self) -> list[int]:
        return sorted(set(self.steps[-self.keep_last:]) | ({self.best[1]} if self.best else set()))

    def prune(self) -> float:
        """Delete the files retention drops; its seconds."""
        kept = self.kept()
        start = time.perf_counter()
        for step in [step for step in self.steps if step not in kept]:
            os.remove(self.path(step))
        self.steps = [step for step in self.steps if step in kept]
        return time.perf_counter() - start


def _sizes_of_newest(store: Any, name: str) -> tuple[int, int]:
    """Bytes the newest checkpoint of `name` added to the store: (its model, its training state)."""
    record = refs.latest_record(store.dict_pers_service, name)
    if record is None:
        raise RuntimeError(f"{name} has no checkpoint after a save")
    model_bytes = maintenance.total_size(maintenance.model_size_info(store, record["model_id"]))
    state_bytes = maintenance.total_size(maintenance.model_size_info(store, record["checkpoint"]["state"]))
    return model_bytes, state_bytes


def _kept_steps(store: Any, name: str) -> list[int]:
    """Steps of the checkpoints of `name` whose weights are still stored (live records, pruned ones left out)."""
    return sorted(record["checkpoint"]["step"] for record in refs.live_records(store.dict_pers_service, name))


def _new_training(workload: str, steps: int) -> Training:
    """The workload's model, optimizer and scheduler, built from the fixed seed (every run starts alike)."""
    torch.manual_seed(SEED)
    return WORKLOADS[workload][1](steps)


def _checkpointer(store: Any, workload: str, training: Training) -> mmlib.Checkpointer:
    return mmlib.Checkpointer(store, workload, training.model, training.optimizer, training.scheduler,
                              keep_last=KEEP_LAST, keep_best=KEEP_BEST, monitor=MONITOR, mode="min")


def _train(training: Training, workload: str, steps: int, every: int,
           on_checkpoint: Callable[[int, float], None], progress: Progress, label: str) -> None:
    """Train for `steps` steps on batches drawn from the fixed seed; every `every` steps call `on_checkpoint(step,
    val_loss)`."""
    generator = torch.Generator().manual_seed(SEED)
    held_out = training.batch(torch.Generator().manual_seed(SEED + 2))
    for step in range(1, steps + 1):
        start = time.perf_counter()
        training.model.train()
        training.optimizer.zero_grad(set_to_none=True)
        loss = training.loss(training.model, training.batch(generator))
        loss.backward()
        training.optimizer.step()
        training.scheduler.step()
        training.step_seconds.append(time.perf_counter() - start)
        if step % every == 0:
            training.model.eval()
            with torch.no_grad():
                val_loss = training.loss(training.model, held_out).item()
            on_checkpoint(step, val_loss)
            progress(f"{workload} {label}: step {step}/{steps}, train loss {loss.item():.3f}, val_loss {val_loss:.3f}")


def blocking_run(workload: str, steps: int, every: int, directory: str, progress: Progress) -> dict[str, Any]:
    """Baseline files and blocking mmlib saves of the same states, alternating which goes first."""
    store_dir = os.path.join(directory, "store")
    store = mmlib.open_store(store_dir)
    files = LightningStyleFiles(os.path.join(directory, "files"), KEEP_LAST)
    checkpoints: list[dict[str, Any]] = []
    training = _new_training(workload, steps)
    checkpointer = _checkpointer(store, workload, training)

    def on_checkpoint(step: int, val_loss: float) -> None:
        entry: dict[str, Any] = {"step": step, "val_loss": val_loss}

        def save_mmlib() -> None:
            version, entry["mmlib_save_s"] = _timed(lambda: checkpointer.save(step, metrics={MONITOR: val_loss}),
                                                    sync=True)
            entry["model_bytes_added"], entry["state_bytes_added"] = _sizes_of_newest(store, workload)
            entry["version_size"] = version.size

        def save_files() -> None:
            entry["baseline_save_s"] = files.save(step, _state_dicts(training), val_loss)
            entry["baseline_peak_bytes"] = bytes_on_disk(files.directory)
            entry["baseline_delete_s"] = files.prune()

        for save in (save_mmlib, save_files) if len(checkpoints) % 2 == 0 else (save_files, save_mmlib):
            save()
        entry["store_bytes"] = bytes_on_disk(store_dir)
        entry["baseline_bytes"] = bytes_on_disk(files.directory)
        entry["model_raw_bytes"] = _tensor_bytes(training.model.state_dict())
        entry["state_raw_bytes"] = _tensor_bytes(training.optimizer.state_dict())
        checkpoints.append(entry)
        progress(f"{workload} blocking run: checkpoint at step {step}: mmlib {1e3 * entry['mmlib_save_s']:.0f} ms, "
                 f"baseline {1e3 * entry['baseline_save_s']:.0f} ms; store {fmt_bytes(entry['store_bytes'])}, "
                 f"files {fmt_bytes(entry['baseline_bytes'])}")

    with checkpointer:
        _train(training, workload, steps, every, on_checkpoint, progress, "blocking run")
    return {"checkpoints": checkpoints, "training": training, "store": store, "store_dir": store_dir,
            "files_kept": files.kept(), "mmlib_kept": _kept_steps(store, workload),
            "newest_file": files.path(files.steps[-1]),
            "store_blob_bytes": bytes_on_disk(os.path.join(store_dir, BLOB_DIR))}


def _clone_state(training: Training) -> list[torch.Tensor]:
    """One copy of the training state to memory: every tensor of the state dicts, cloned."""
    return [tensor.clone() for tensor in _tensors(_state_dicts(training))]


def background_run(workload: str, steps: int, every: int, directory: str, progress: Progress) -> dict[str, Any]:
    """`save(blocking=False)` at every checkpoint; time blocked, the wait for the previous save, one state copy."""
    store_dir = os.path.join(directory, "store-background")
    store = mmlib.open_store(store_dir)
    checkpoints: list[dict[str, Any]] = []
    around_pruning: list[tuple[int, int]] = []  # store bytes just before and after each retention pruning
    real_prune = mmlib.checkpoints.prune

    def sampled_prune(*args: Any, **kwargs: Any) -> Any:
        before = bytes_on_disk(store_dir)
        try:
            return real_prune(*args, **kwargs)
        finally:
            around_pruning.append((before, bytes_on_disk(store_dir)))

    training = _new_training(workload, steps)
    checkpointer = _checkpointer(store, workload, training)

    def on_checkpoint(step: int, val_loss: float) -> None:
        _, wait_s = _timed(checkpointer.wait)
        copy, copy_s = _timed(lambda: _clone_state(training))
        del copy
        _, call_s = _timed(lambda: checkpointer.save(step, metrics={MONITOR: val_loss}, blocking=False))
        checkpoints.append({"step": step, "wait_s": wait_s, "call_s": call_s, "blocked_s": wait_s + call_s,
                            "copy_s": copy_s})
        progress(f"{workload} background run: checkpoint at step {step}: waited {1e3 * wait_s:.1f} ms, call "
                 f"{1e3 * call_s:.1f} ms, one state copy {1e3 * copy_s:.1f} ms")

    mmlib.checkpoints.prune = sampled_prune
    try:
        _train(training, workload, steps, every, on_checkpoint, progress, "background run")
        _, final_wait_s = _timed(checkpointer.close)
    finally:
        mmlib.checkpoints.prune = real_prune
    return {"checkpoints": checkpoints, "training": training, "around_pruning": around_pruning,
            "final_wait_s": final_wait_s, "store_bytes": bytes_on_disk(store_dir),
            "mmlib_kept": _kept_steps(store, workload)}


def _same_tensors(first: Any, second: Any) -> bool:
    left, right = _tensors(first), _tensors(second)
    return len(left) == len(right) and all(torch.equal(a, b) for a, b in zip(left, right))


def _resumes_like_newest_file(run: dict[str, Any], workload: str, steps: int) -> bool:
    """Whether resuming the newest checkpoint gives the model, optimizer and scheduler state of the newest file."""
    torch.manual_seed(SEED + 3)
    fresh = WORKLOADS[workload][1](steps)  # other initial weights: all of them must come from the checkpoint
    mmlib.resume(workload, run["store"], model=fresh.model, optimizer=fresh.optimizer, scheduler=fresh.scheduler,
                 restore_rng=False)
    saved = torch.load(run["newest_file"], weights_only=True)
    return (_same_tensors(fresh.model.state_dict(), saved["model"])
            and _same_tensors(fresh.optimizer.state_dict(), saved["optimizer"])
            and fresh.scheduler.state_dict() == saved["scheduler"])


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p90": p90(values), "max": max(values)}


def run_workload(workload: str, steps: int, every: int, work_dir: Optional[str], progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mmlib-checkpoints-", dir=work_dir) as directory:
        progress(f"{workload}: blocking run (baseline files and ckpt.save, alternating)")
        blocking = blocking_run(workload, steps, every, directory, progress)
        resumed_equal = _resumes_like_newest_file(blocking, workload, steps)
        maintenance.collect_garbage(blocking["store"], grace_seconds=0)
        store_bytes_after_gc = bytes_on_disk(blocking["store_dir"])
        progress(f"{workload}: background run (ckpt.save(blocking=False))")
        background = background_run(workload, steps, every, directory, progress)
    first, second = blocking.pop("training"), background.pop("training")
    checkpoints = blocking["checkpoints"]
    later = checkpoints[1:] or checkpoints
    mmlib_s = [entry["mmlib_save_s"] for entry in checkpoints]
    baseline_s = [entry["baseline_save_s"] for entry in checkpoints]
    blocked = background["checkpoints"]
    peaks = [before for before, _ in background["around_pruning"]]
    final = checkpoints[-1]
    mmlib_time, baseline_time = _summary(mmlib_s), _summary(baseline_s)
    blocked_time, copy_time = _summary([e["blocked_s"] for e in blocked]), _summary([e["copy_s"] for e in blocked])
    return {
        "label": WORKLOADS[workload][0],
        "parameters": sum(parameter.numel() for parameter in first.model.parameters()),
        "checkpoints": checkpoints,
        "background": blocked,
        "store_bytes_before_pruning": peaks,
        "store_bytes_after_pruning_background": [after for _, after in background["around_pruning"]],
        "storage": {
            "store_bytes": final["store_bytes"], "store_blob_bytes": blocking["store_blob_bytes"],
            "baseline_bytes": final["baseline_bytes"], "ratio": ratio(final["store_bytes"], final["baseline_bytes"]),
            "store_bytes_after_gc": store_bytes_after_gc,
            "store_peak_bytes": max(peaks + [entry["store_bytes"] for entry in checkpoints]),
            "baseline_peak_bytes": max(entry["baseline_peak_bytes"] for entry in checkpoints),
            "background_store_bytes": background["store_bytes"],
        },
        "save_time_s": {"mmlib": mmlib_time, "baseline": baseline_time,
                        "baseline_delete": _summary([entry["baseline_delete_s"] for entry in checkpoints]),
                        "median_ratio": ratio(mmlib_time["median"], baseline_time["median"]),
                        "p90_ratio": ratio(mmlib_time["p90"], baseline_time["p90"])},
        "background_s": {"blocked": blocked_time, "copy": copy_time,
                         "wait": _summary([entry["wait_s"] for entry in blocked]),
                         "call": _summary([entry["call_s"] for entry in blocked]),
                         "waits_over_1ms": sum(entry["wait_s"] > 1e-3 for entry in blocked),
                         "final_wait": background["final_wait_s"],
                         "median_ratio": ratio(blocked_time["median"], copy_time["median"]),
                         "p90_ratio": ratio(blocked_time["p90"], copy_time["p90"])},
        "train_step_s": {"blocking_run": _summary(first.step_seconds), "background_run": _summary(second.step_seconds)},
        "delta": {
            "model_raw_bytes": final["model_raw_bytes"], "state_raw_bytes": final["state_raw_bytes"],
            "model_first_bytes": checkpoints[0]["model_bytes_added"],
            "state_first_bytes": checkpoints[0]["state_bytes_added"],
            "model_later_median_bytes": statistics.median(entry["model_bytes_added"] for entry in later),
            "state_later_median_bytes": statistics.median(entry["state_bytes_added"] for entry in later),
        },
        "checks": {
            "runs_trained_identically": _same_tensors(_state_dicts(first), _state_dicts(second)),
            "kept_steps_mmlib": blocking["mmlib_kept"], "kept_steps_background": background["mmlib_kept"],
            "kept_steps_files": blocking["files_kept"],
            "newest_checkpoint_resumes_like_newest_file": resumed_equal,
        },
    }


def _verdict(value: Optional[float], target: float) -> str:
    return "n/a" if value is None else ("met" if value <= target else "NOT met")


def report(results: dict[str, Any]) -> str:
    """The printed tables."""
    meta = results["meta"]
    lines = ["## Training checkpoints: mmlib.Checkpointer vs Lightning-style torch.save files\n",
             f"{meta['steps']} steps, a checkpoint every {meta['every']} ({meta['steps'] // meta['every']} "
             f"checkpoints), retention keep_last={KEEP_LAST} + keep_best={KEEP_BEST} on {MONITOR} (min, one "
             f"held-out batch); mmlib at {meta['git']}, {meta['platform']}, torch {meta['torch']}, {meta['threads']} "
             "threads, CPU\n"]
    rows = []
    for workload in results["workloads"].values():
        name, storage, save = workload["label"].split(" (")[0], workload["storage"], workload["save_time_s"]
        background = workload["background_s"]
        rows += [
            [name, "bytes at the end", f"{fmt_bytes(storage['store_bytes'])} (store dir)",
             f"{fmt_bytes(storage['baseline_bytes'])} ({len(workload['checks']['kept_steps_files'])} files)",
             fmt_ratio(storage["ratio"]), f"<= {STORAGE_TARGET}x: {_verdict(storage['ratio'], STORAGE_TARGET)}"],
            [name, "bytes at the end, after maintenance.collect_garbage", fmt_bytes(storage["store_bytes_after_gc"]),
             fmt_bytes(storage["baseline_bytes"]), fmt_ratio(ratio(storage["store_bytes_after_gc"],
                                                                   storage["baseline_bytes"])), ""],
            [name, "peak bytes during the run", fmt_bytes(storage["store_peak_bytes"]),
             fmt_bytes(storage["baseline_peak_bytes"]),
             fmt_ratio(ratio(storage["store_peak_bytes"], storage["baseline_peak_bytes"])), ""],
            [name, "time per checkpoint, median", fmt_seconds(save["mmlib"]["median"]),
             fmt_seconds(save["baseline"]["median"]), fmt_ratio(save["median_ratio"]),
             f"<= {TIME_TARGET}x: {_verdict(save['median_ratio'], TIME_TARGET)}"],
            [name, "time per checkpoint, p90", fmt_seconds(save["mmlib"]["p90"]), fmt_seconds(save["baseline"]["p90"]),
             fmt_ratio(save["p90_ratio"]), ""],
            [name, "step blocked by save(blocking=False), median", fmt_seconds(background["blocked"]["median"]),
             f"{fmt_seconds(background['copy']['median'])} (one state copy)", fmt_ratio(background["median_ratio"]),
             f"<= {BLOCKED_TARGET}x: {_verdict(background['median_ratio'], BLOCKED_TARGET)}"],
            [name, "step blocked by save(blocking=False), p90", fmt_seconds(background["blocked"]["p90"]),
             f"{fmt_seconds(background['copy']['p90'])} (one state copy)", fmt_ratio(background["p90_ratio"]), ""],
            [name, "of which waiting for the previous save: median / max",
             f"{fmt_seconds(background['wait']['median'])} / {fmt_seconds(background['wait']['max'])}",
             "", "", f"{background['waits_over_1ms']} of {len(workload['background'])} waits > 1 ms"],
        ]
    lines.append(table(["workload", "figure", "mmlib", "baseline", "ratio", "target"], rows))
    lines.append("\n### Bytes a checkpoint adds to the store (delta codec), model weights vs training state\n")
    delta_rows = []
    for workload in results["workloads"].values():
        delta = workload["delta"]
        for part, raw, first, later in (("model weights", delta["model_raw_bytes"], delta["model_first_bytes"],
                                         delta["model_later_median_bytes"]),
                                        ("training state (optimizer)", delta["state_raw_bytes"],
                                         delta["state_first_bytes"], delta["state_later_median_bytes"])):
            delta_rows.append([workload["label"].split(" (")[0], part, fmt_bytes(raw), fmt_bytes(first),
                               fmt_bytes(later), fmt_ratio(ratio(later, raw))])
    lines.append(table(["workload", "part", "tensors (raw)", "first checkpoint adds",
                        "later checkpoints add (median)", "later / raw"], delta_rows))
    lines.append("\n### Checks\n")
    check_rows = []
    for workload in results["workloads"].values():
        checks, steps = workload["checks"], workload["train_step_s"]
        check_rows.append([workload["label"].split(" (")[0], "yes" if checks["runs_trained_identically"] else "NO",
                           checks["kept_steps_mmlib"], checks["kept_steps_files"],
                           "yes" if checks["newest_checkpoint_resumes_like_newest_file"] else "NO",
                           f"{fmt_seconds(steps['blocking_run']['median'])} / "
                           f"{fmt_seconds(steps['background_run']['median'])}"])
    lines.append(table(["workload", "both runs trained identically", "steps kept: mmlib", "steps kept: files",
                        "resume(newest) == newest file", "train step median: blocking / background run"],
                       check_rows))
    lines += ["", "Baselines, exactly:",
              f"- storage and save time: {BASELINE}. Bytes are file sizes: the kept .ckpt files against every "
              "file of the store directory (metadata.sqlite with its -wal/-shm and the blobs); the row after "
              "collect_garbage runs `maintenance.collect_garbage(store, grace_seconds=0)` on the store at the end.",
              "- mmlib save time: `ckpt.save(step, metrics={'val_loss': v})` (blocking, retention pruning "
              "included). Both arms save the same state in one training run, alternating which goes first; "
              "`os.sync()` untimed before each. Peaks: the files' size just after writing, before deleting; the "
              "store's just before each retention pruning (sampled in the background run).",
              "- blocked time: `ckpt.wait()` (the previous background save) + the `ckpt.save(..., blocking=False)` "
              "call, in a second training run from the same seed, against `[t.clone() for every tensor of the "
              "model, optimizer and scheduler state dicts]` timed just before the save at the same step.",
              "- bytes added: `maintenance.total_size(maintenance.model_size_info(store, id))` of the checkpoint's "
              "model and of its training state (documents and blobs) right after its save; raw: bytes of the "
              "distinct tensors of model.state_dict() and optimizer.state_dict()."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 200, --quick 30)")
    parser.add_argument("--every", type=int, default=None, help="a checkpoint every this many steps (default 10, "
                        f"--quick {QUICK_EVERY})")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON and the PNG")
    parser.add_argument("--work-dir", help="where stores and checkpoint files are written (default: system temp)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_STEPS} steps, a checkpoint every "
                        f"{QUICK_EVERY}, unless given")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 200)
    every = args.every if args.every is not None else (QUICK_EVERY if args.quick else 10)
    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in workloads if name not in WORKLOADS]
    if unknown or not workloads:
        parser.error(f"unknown workload(s) {unknown}: choose from {', '.join(WORKLOADS)}")
    if every < 1 or steps < every:
        parser.error("--every must be at least 1 and at most --steps")
    progress = Progress()
    start = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {"steps": steps, "every": every, "quick": args.quick, "keep_last": KEEP_LAST,
                 "keep_best": KEEP_BEST, "monitor": MONITOR, "seed": SEED, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "platform": platform.platform(), "python": sys.version.split()[0],
                 "git": git_revision(), "baseline": BASELINE,
                 "targets": {"storage_ratio": STORAGE_TARGET, "save_time_ratio": TIME_TARGET,
                             "blocked_over_copy": BLOCKED_TARGET}},
        "workloads": {name: run_workload(name, steps, every, args.work_dir, progress) for name in workloads}}
    results["meta"]["wall_s"] = time.perf_counter() - start
    suffix = "-quick" if args.quick else ""
    json_path = os.path.join(args.out, f"checkpoints{suffix}.json")
    png_path = os.path.join(args.out, f"checkpoints{suffix}.png")
    os.makedirs(args.out, exist_ok=True)
    results["plot"] = checkpoint_storage_plot(results, png_path)
    write_json(json_path, results)
    print(report(results))
    print(f"\n(wall time {results['meta']['wall_s']:.0f} s; {json_path}; {png_path})")


if __name__ == "__main__":
    main()
