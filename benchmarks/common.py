"""Shared pieces of the benchmark: interleaved median timing, progress lines, model training and approach lookup.

Kept apart from `benchmarks.run` so the timing protocol (one helper for every figure) is in one place.
"""

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from mmlib.approaches.base import AbstractSaveService
from mmlib.maintenance import total_size as total_bytes  # noqa: F401 (the benchmarks' name for it)
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService

logger = logging.getLogger(__name__)

ANCHOR = "anchor"
MODEL_LABELS = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2", "resnet50": "ResNet-50",
                "googlenet": "GoogLeNet", "resnet152": "ResNet-152"}
BATCH_SIZE = 8
IMAGE_SIZE = 64
LEARNING_RATE = 1e-3
MOMENTUM = 0.9
NUM_CLASSES = 1000
# Where the benchmarks write unless told otherwise: `bench-results/` at the repository root, which git ignores,
# so a run never overwrites the published reference results committed in `benchmarks/results/`.
RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-results")

# A timed step: called untimed with the round index (0 is the warm-up round), it returns the zero-argument
# callable whose run time is measured. Preparing untimed keeps cache clearing and input choice out of the figure.
Step = Callable[[int], Callable[[], Any]]


class Progress:
    """Writes one line per benchmark step to stderr with the seconds elapsed since the run started, when a person
    watches stderr (a terminal) or `MMLIB_PROGRESS=1` asks for it; quiet when piped or redirected."""

    def __init__(self, stream=None):
        self._start = time.perf_counter()
        self._stream = stream if stream is not None else sys.stderr
        self._shown = os.environ.get("MMLIB_PROGRESS") == "1" or bool(getattr(self._stream, "isatty", bool)())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def __call__(self, message: str) -> None:
        if self._shown:
            print(f"[{self.elapsed:7.1f}s] {message}", file=self._stream, flush=True)


def median_seconds(steps: Mapping[str, Step], repeats: int) -> dict[str, dict[str, Any]]:
    """Time every step `repeats` times after one untimed warm-up round; rounds interleave the steps.

    Interleaving (anchor, approach 1, approach 2, ... per round) means page cache state and load from other
    processes affect every contender alike. Before each run, data earlier steps left unwritten is flushed
    (untimed): otherwise the anchor's unsynced `torch.save` would be written to disk inside the next
    contender's timing. Returns, per step name, the median, the p90 and every measured run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    runs: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(repeats + 1):
        for name, prepare in steps.items():
            action = prepare(round_index)
            os.sync()
            start = time.perf_counter()
            action()
            elapsed = time.perf_counter() - start
            if round_index:
                runs[name].append(elapsed)
    return {name: {"median_s": statistics.median(values), "p90_s": p90(values), "runs_s": values}
            for name, values in runs.items()}


def p90(values: list[float]) -> float:
    """The 90th percentile of `values` (nearest rank, at least one value): what a slow run of the step costs."""
    if not values:
        raise ValueError("p90 of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def bytes_on_disk(directory: str) -> int:
    """Bytes of every file under `directory` (their sizes, as `ls -l` shows them): what a store or a folder of
    checkpoint files really takes, however its parts are shared."""
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(directory) for name in names)


def ratio(value: float, reference: float) -> Optional[float]:
    """`value / reference`, or None when the reference is not positive (JSON has no NaN)."""
    return value / reference if reference > 0 else None


def raw_load(cls: Callable[[], torch.nn.Module], path: str) -> torch.nn.Module:
    """The anchor recovery: what a plain PyTorch user does to get a saved model back (`cls` builds the model)."""
    state_dict = torch.load(path, weights_only=True)
    model = cls()
    model.load_state_dict(state_dict)
    return model


def classifier_head(model: torch.nn.Module) -> torch.nn.Module:
    """The model's classifier (`fc` for ResNet/GoogLeNet, `classifier` for MobileNetV2)."""
    for name in ("fc", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ValueError(f"{type(model).__name__} has neither an `fc` nor a `classifier` module to fine-tune")


def train_steps(model: torch.nn.Module, steps: int, seed: int, partial: bool) -> torch.nn.Module:
    """A few SGD steps on random images, in place: the fine-tunes of relations U2 (`partial`) and U3.

    Partial: backbone frozen (requires_grad False) and in eval mode, only the classifier trains, so batch norm
    statistics stay as they were. Full: every layer trains in train mode.
    """
    generator = torch.Generator().manual_seed(seed)
    if partial:
        model.eval()
        model.requires_grad_(False)
        head = classifier_head(model)
        head.requires_grad_(True)
        parameters = list(head.parameters())
    else:
        model.train()
        model.requires_grad_(True)
        parameters = list(model.parameters())
    optimizer = torch.optim.SGD(parameters, lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_function = torch.nn.CrossEntropyLoss()
    for _ in range(steps):
        images = torch.rand(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), generator=generator)
        optimizer.zero_grad()
        loss_function(model(images), labels).backward()
        optimizer.step()
    model.requires_grad_(True)
    model.eval()
    return model


@dataclass(frozen=True)
class Approach:
    """A save approach under test: its save service class and the keyword arguments it is built with."""

    name: str
    label: str
    service_class: type[AbstractSaveService]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def create(self, file_pers_service: FilePersistenceService,
               dict_pers_service: DictPersistenceService) -> AbstractSaveService:
        """A new service object over the given stores (a fresh object has no in-process cache)."""
        return self.service_class(file_pers_service, dict_pers_service, **self.kwargs)


def without_cache(service: AbstractSaveService) -> AbstractSaveService:
    """Empty the service's in-process cache of recent versions (`clear_cache`, where it has one), so the next
    save or recovery reads from the store; services without a cache are returned unchanged."""
    clear = getattr(service, "clear_cache", None)
    if callable(clear):
        clear()
    return service


def write_json(path: str, data: Any) -> None:
    """Write a benchmark's results as indented JSON, creating the folder first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def git_revision() -> Optional[str]:
    """The commit the benchmarked code is at (`+` when the tree has changes), or None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+" if dirty else "")
