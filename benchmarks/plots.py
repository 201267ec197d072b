"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed)."""

import logging
import os
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

from benchmarks.common import ANCHOR  # noqa: E402

logger = logging.getLogger(__name__)

TIME_METRICS = [("tts_ratio_to_anchor", "TTS / raw torch.save"),
                ("ttr_checks_ratio_to_anchor", "TTR with checks / raw load"),
                ("ttr_no_checks_ratio_to_anchor", "TTR without checks / raw load")]
RATIO_TARGET = 1.5


def _labels(results: dict[str, Any]) -> dict[str, str]:
    return {name: info["label"] for name, info in results["meta"]["approaches"].items()}


def _grouped_bars(axis, groups: list[str], series: dict[str, list[Optional[float]]]) -> None:
    """One bar per series within each group on `axis` (missing values are left out)."""
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series.items()):
        positions = [group + (index - (len(series) - 1) / 2) * width for group in range(len(groups))]
        shown = [(x, value) for x, value in zip(positions, values) if value is not None]
        axis.bar([x for x, _ in shown], [value for _, value in shown], width, label=label)
    axis.set_xticks(range(len(groups)), groups)


def _relation_series(model: dict[str, Any], metric: str, labels: dict[str, str],
                     scale: float = 1.0) -> tuple[list[str], dict[str, list[Optional[float]]]]:
    relations = list(model["relations"])
    names = list(next(iter(model["relations"].values()))["approaches"])
    series = {}
    for name in names:
        values = [model["relations"][relation]["approaches"].get(name, {}).get(metric) for relation in relations]
        series[labels.get(name, name)] = [None if value is None else value * scale for value in values]
    return relations, series


def _save(figure, legend_axis, path: str) -> str:
    """Lay out, put one legend (from `legend_axis`) below the panels, write the PNG and free the figure."""
    figure.tight_layout()
    handles, labels = legend_axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 3),
                  fontsize="small", frameon=False)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def storage_plot(results: dict[str, Any], path: str) -> str:
    """Storage in MB per relation and approach, one panel per model (log scale)."""
    models = list(results["models"].values())
    labels = _labels(results)
    figure, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models):
        relations, series = _relation_series(model, "storage_bytes", labels, scale=1e-6)
        _grouped_bars(axis, relations, series)
        axis.set_yscale("log")
        axis.set_title(model["label"])
        axis.set_ylabel("storage (MB, log scale)")
    figure.suptitle("Storage per model version")
    return _save(figure, axes[0][0], path)


def time_ratio_plot(results: dict[str, Any], path: str) -> str:
    """TTS and TTR (with and without checks) as ratios to their raw-torch anchors; rows metrics, columns models."""
    models = list(results["models"].values())
    labels = _labels(results)
    figure, axes = plt.subplots(len(TIME_METRICS), len(models), figsize=(4.2 * len(models), 3.2 * len(TIME_METRICS)),
                                squeeze=False)
    for row, (metric, title) in enumerate(TIME_METRICS):
        for column, model in enumerate(models):
            axis = axes[row][column]
            relations, series = _relation_series(model, metric, labels)
            _grouped_bars(axis, relations, series)
            axis.axhline(1.0, color="black", linewidth=0.8, label="anchor (1.0x)")
            axis.axhline(RATIO_TARGET, color="grey", linestyle="--", linewidth=0.8,
                         label=f"{RATIO_TARGET}x (baseline target)")
            axis.set_title(f"{model['label']}: {title}", fontsize="medium")
            axis.set_ylabel("ratio to anchor")
    return _save(figure, axes[0][0], path)


def chain_plot(results: dict[str, Any], path: str) -> str:
    """TTR with checks against version depth in the U4 chain, one panel per model, the anchor dashed."""
    models = [model for model in results["models"].values() if "chain" in model]
    labels = _labels(results)
    figure, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models):
        chain = model["chain"]
        versions = [depth + 1 for depth in chain["depths"]]
        axis.plot(versions, chain[ANCHOR]["ttr_s"], "k--", label="raw torch (anchor)")
        for name, entry in chain["approaches"].items():
            axis.plot(versions, entry["ttr_checks_s"], marker="o", markersize=3, label=labels.get(name, name))
        axis.set_ylim(bottom=0)
        axis.set_xlabel("version (1: the full snapshot)")
        axis.set_ylabel("TTR with checks (s)")
        axis.set_title(model["label"])
    figure.suptitle("U4: time to recover vs version chain depth")
    return _save(figure, axes[0][0], path)


def provenance_plot(provenance: dict[str, Any], path: str) -> str:
    """Per model: storage breakdown per provenance version (stacked) and TTR per version."""
    models = list(provenance["models"].values())
    figure, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 7), squeeze=False)
    for column, model in enumerate(models):
        versions = model["versions"]
        names = [version["name"] for version in versions]
        bottom = [0.0] * len(versions)
        for part in versions[0]["storage_breakdown"]:
            values = [version["storage_breakdown"][part] / 1e6 for version in versions]
            axes[0][column].bar(names, values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values)]
        axes[0][column].set_ylabel("storage (MB)")
        axes[0][column].set_title(f"{model['label']}: storage per version")
        axes[1][column].bar(names, [version["ttr_checks_s"] for version in versions], color="dimgray")
        axes[1][column].set_ylabel("TTR with checks incl. retraining (s)")
        axes[1][column].set_title(f"{model['label']}: time to recover")
    return _save(figure, axes[0][0], path)


def write_all(results: dict[str, Any], out_dir: str, suffix: str) -> list[str]:
    """Every plot the results allow, as PNGs in `out_dir`; returns their paths."""
    paths = []
    if results["models"]:
        paths += [storage_plot(results, os.path.join(out_dir, f"storage{suffix}.png")),
                  time_ratio_plot(results, os.path.join(out_dir, f"time_ratios{suffix}.png"))]
    if any("chain" in model for model in results["models"].values()):
        paths.append(chain_plot(results, os.path.join(out_dir, f"chain_ttr{suffix}.png")))
    if results["provenance"].get("available"):
        paths.append(provenance_plot(results["provenance"], os.path.join(out_dir, f"provenance{suffix}.png")))
    return paths


def checkpoint_storage_plot(results: dict[str, Any], path: str) -> str:
    """Bytes a training run's checkpoints take after each checkpoint: the mmlib store against the kept torch.save
    files, one panel per workload (`benchmarks.checkpoints` results); dotted, the store's peak during each save."""
    workloads = list(results["workloads"].values())
    figure, axes = plt.subplots(1, len(workloads), figsize=(5.0 * len(workloads), 3.8), squeeze=False)
    for axis, workload in zip(axes[0], workloads):
        checkpoints = workload["checkpoints"]
        steps = [entry["step"] for entry in checkpoints]
        axis.plot(steps, [entry["store_bytes"] / 1e6 for entry in checkpoints], marker="o", markersize=3,
                  label="mmlib store (after retention)")
        peaks = workload.get("store_bytes_before_pruning") or []
        if len(peaks) == len(steps):
            axis.plot(steps, [value / 1e6 for value in peaks], ":", color="C0", label="mmlib store, before pruning")
        axis.plot(steps, [entry["baseline_bytes"] / 1e6 for entry in checkpoints], marker="s", markersize=3,
                  color="C1", label="torch.save files (kept)")
        axis.plot(steps, [entry["baseline_peak_bytes"] / 1e6 for entry in checkpoints], ":", color="C1",
                  label="torch.save files, before deleting")
        axis.set_ylim(bottom=0)
        axis.set_xlabel("training step (a checkpoint at each marker)")
        axis.set_ylabel("bytes on disk (MB)")
        axis.set_title(workload["label"], fontsize="small")
    figure.suptitle("Storage of a training run's checkpoints")
    return _save(figure, axes[0][0], path)
