"""Turns benchmark results into the targets verdict, markdown tables and the JSON/markdown files.

One table writer (`table`) serves every section, so all tables look alike.
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from benchmarks.common import ANCHOR

logger = logging.getLogger(__name__)

COMPRESSED = "improved_update_compressed"


@dataclass(frozen=True)
class Target:
    """A figure the project aims for (issue #15's table): the model, where the figure lives in that model's results
    (or, for provenance, in the provenance section's), and the largest acceptable value."""

    name: str
    model: str
    path: tuple[str, ...]
    threshold: float
    unit: str
    section: str = "models"

    def measured(self, results: dict[str, Any]) -> Optional[float]:
        value: Any = results.get(self.section, {})
        if self.section == "provenance":
            value = value.get("models", {})
        for key in (self.model, *self.path):
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value if isinstance(value, (int, float)) and not math.isnan(value) else None


def _u(relation: str, approach: str, figure: str) -> tuple[str, ...]:
    return ("relations", relation, "approaches", approach, figure)


TARGETS = [
    Target("U3 full fine-tune, compressed update: TTS / raw torch.save", "resnet50",
           _u("U3", COMPRESSED, "tts_ratio_to_anchor"), 3.0, "x"),
    Target("U3 full fine-tune, compressed update: TTS / torch.save + fsync (durable against durable)", "resnet50",
           _u("U3", COMPRESSED, "tts_ratio_to_durable_anchor"), 3.0, "x"),
    Target("U3 compressed update: TTR with checks / raw load", "resnet50",
           _u("U3", COMPRESSED, "ttr_checks_ratio_to_anchor"), 0.6, "x"),
    Target("U3 compressed update: TTR without checks / raw load", "resnet50",
           _u("U3", COMPRESSED, "ttr_no_checks_ratio_to_anchor"), 0.6, "x"),
    Target("U4 chain (version 1 the snapshot): slowest later version / version 1, checks on", "resnet18",
           ("chain", "approaches", COMPRESSED, "slowest_update_over_snapshot"), 1.5, "x"),
    Target("provenance, SGD momentum 0.9: bytes a version after the first adds / a snapshot", "resnet18",
           ("max_growth_share_after_first",), 0.05, "%", section="provenance"),
    Target("U1 baseline TTS / torch.save + fsync (durable against durable)", "resnet50",
           _u("U1", "baseline", "tts_ratio_to_durable_anchor"), 1.0, "x"),
    Target("U1 baseline with open_store(durable=False): TTS / plain torch.save", "resnet50",
           _u("U1", "baseline_scratch", "tts_ratio_to_anchor"), 1.2, "x"),
    Target("U1 baseline: TTR with checks / raw load", "resnet50", _u("U1", "baseline", "ttr_checks_ratio_to_anchor"),
           1.5, "x"),
    *(Target(f"U3 storage, compressed update / baseline snapshot ({model})", model,
             _u("U3", COMPRESSED, "storage_ratio_to_baseline"), 0.59, "%") for model in ("resnet18", "resnet50")),
    *(Target(f"U2 storage, compressed update / baseline snapshot ({model})", model,
             _u("U2", COMPRESSED, "storage_ratio_to_baseline"), 0.02, "%") for model in ("resnet18", "resnet50")),
]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: measured value, threshold and met (None when the figure was not measured in this run)."""
    evaluated = []
    for target in TARGETS:
        value = target.measured(results)
        evaluated.append({"target": target.name, "model": target.model, "unit": target.unit, "measured": value,
                          "threshold": target.threshold, "met": None if value is None else value <= target.threshold})
    return evaluated


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; cells are converted with str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e6:.1f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def fmt_seconds(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1e3:.0f} ms" if value >= 0.1 else f"{value * 1e3:.1f} ms"


def fmt_ratio(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_share(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _fmt_target_value(value: Optional[float], unit: str) -> str:
    return fmt_share(value) if unit == "%" else fmt_ratio(value)


def _status(met: Optional[bool]) -> str:
    return "not measured in this run" if met is None else ("met" if met else "NOT met")


def _seconds_cell(figures: dict[str, Any], figure: str) -> str:
    """`median / p90` of a timing figure (`<figure>_s` and `<figure>_p90_s`; n/a where a run did not record it)."""
    return f"{fmt_seconds(figures.get(f'{figure}_s'))} / {fmt_seconds(figures.get(f'{figure}_p90_s'))}"


def _ratio_cell(figures: dict[str, Any], figure: str) -> str:
    """`median / p90` of a ratio figure (`<figure>` and `<figure>_p90`)."""
    return f"{fmt_ratio(figures.get(figure))} / {fmt_ratio(figures.get(f'{figure}_p90'))}"


def _exact(entry: dict[str, Any]) -> str:
    return "yes" if entry["recovered_equal"] else "NO"


RELATION_HEADERS = ["model", "relation", "approach", "storage", "vs baseline", "TTS", "x anchor", "TTR checks",
                    "x anchor", "TTR no checks", "x anchor", "exact"]


def _relation_rows(models: Iterable[tuple[str, dict[str, Any]]], labels: dict[str, str]) -> list[list[str]]:
    """Rows of the U1-U3 table for (model label, its relations) pairs: each relation's anchors, then approaches."""
    rows = []
    for label, relations in models:
        for relation, figures in relations.items():
            anchor = figures[ANCHOR]
            rows.append([label, relation, "raw torch (anchor)", fmt_bytes(anchor["file_bytes"]), "",
                         _seconds_cell(anchor, "tts"), "1.00x", _seconds_cell(anchor, "ttr"), "1.00x", "", "", ""])
            durable = figures.get("anchor_durable")
            if durable is not None:
                rows.append([label, relation, "raw torch.save + fsync (durable anchor)", "", "",
                             _seconds_cell(durable, "tts"), _ratio_cell(durable, "tts_ratio_to_anchor"),
                             "", "", "", "", ""])
            for name, entry in figures["approaches"].items():
                rows.append([label, relation, labels.get(name, name), fmt_bytes(entry["storage_bytes"]),
                             fmt_share(entry["storage_ratio_to_baseline"]),
                             _seconds_cell(entry, "tts"), _ratio_cell(entry, "tts_ratio_to_anchor"),
                             _seconds_cell(entry, "ttr_checks"), _ratio_cell(entry, "ttr_checks_ratio_to_anchor"),
                             _seconds_cell(entry, "ttr_no_checks"),
                             _ratio_cell(entry, "ttr_no_checks_ratio_to_anchor"), _exact(entry)])
    return rows


def _user_model_section(results: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The user's-model case: its U1-U3 table and its recoveries in fresh processes."""
    models = [model for model in results["models"].values() if "user_model" in model]
    if not models:
        return ["Not measured in this run."]
    lines = [", ".join(f"{model['label']}: class `{model['user_model']['class']}` of "
                       f"`{model['user_model']['code_file']}`" for model in models) + ".", "",
             table(RELATION_HEADERS, _relation_rows(((model["label"], model["user_model"]["relations"])
                                                     for model in models), labels)),
             "", "### A recovery in a fresh process", "",
             "Once per model and approach, a new Python process imports mmlib, opens the store and recovers the "
             "measured U3 version with checks (`recover_model`, timed in the process); the anchor is a new process "
             "importing torch and the user's file, then `torch.load(weights_only=True)` + constructing + "
             "`load_state_dict`. The process time runs from spawning it to the model being back (interpreter start, "
             "imports, opening the store, recovery); one run each, after one untimed raw load in a fresh process.", ""]
    rows = []
    for model in models:
        fresh = model["user_model"]["fresh_process"]
        anchor = fresh[ANCHOR]
        rows.append([model["label"], fresh["relation"], "raw load (anchor)", fmt_seconds(anchor["recover_s"]), "1.00x",
                     fmt_seconds(anchor["process_s"]), "1.00x", _exact(anchor)])
        for name, entry in fresh["approaches"].items():
            rows.append([model["label"], fresh["relation"], labels.get(name, name), fmt_seconds(entry["recover_s"]),
                         fmt_ratio(entry["recover_ratio_to_anchor"]), fmt_seconds(entry["process_s"]),
                         fmt_ratio(entry["process_ratio_to_anchor"]), _exact(entry)])
    return lines + [table(["model", "relation", "approach", "recovery call", "x anchor", "process until recovered",
                           "x anchor", "exact"], rows)]


def _slowest(seconds: list[float]) -> str:
    """The longest recovery in a chain and the version (counted from 1, the snapshot) it belongs to."""
    depth = max(range(len(seconds)), key=seconds.__getitem__)
    return f"{fmt_seconds(seconds[depth])} (version {depth + 1})"


def _chain_rows(results: dict[str, Any], labels: dict[str, str]) -> list[list[str]]:
    rows = []
    for model in results["models"].values():
        chain = model.get("chain")
        if chain is None:
            continue
        anchor = chain[ANCHOR]["ttr_s"]
        rows.append([model["label"], "raw torch (anchor)", *_depth_cells(anchor, chain[ANCHOR].get("ttr_p90_s")),
                     _slowest(anchor), fmt_ratio(max(anchor[1:]) / anchor[0]), "1.00x", "", ""])
        for name, entry in chain["approaches"].items():
            seconds, last_ratio_p90 = entry["ttr_checks_s"], entry.get("ttr_ratio_to_anchor_p90")
            rows.append([model["label"], labels.get(name, name), *_depth_cells(seconds, entry.get("ttr_checks_p90_s")),
                         _slowest(seconds), fmt_ratio(entry["slowest_update_over_snapshot"]),
                         f"{fmt_ratio(entry['ttr_ratio_to_anchor'][-1])} / "
                         f"{fmt_ratio(last_ratio_p90[-1] if last_ratio_p90 else None)}",
                         fmt_bytes(entry["storage_total_bytes"]), _exact(entry)])
    return rows


def _depth_cells(medians: list[float], p90s: Optional[list[float]]) -> list[str]:
    """`median / p90` of versions 1, 2 and the last of a chain."""
    return [f"{fmt_seconds(medians[depth])} / {fmt_seconds(p90s[depth] if p90s else None)}" for depth in (0, 1, -1)]


def _chain_section(results: dict[str, Any], labels: dict[str, str], chain_length: int) -> str:
    rows = _chain_rows(results, labels)
    if not rows:
        return "Not run (no model was chosen for it with --chain-models)."
    return table(["model", "approach", "TTR version 1 (snapshot)", "TTR version 2", f"TTR version {chain_length + 1}",
                  "slowest version", "slowest of versions 2+ / version 1", f"version {chain_length + 1} x anchor",
                  "storage, all versions", f"version {chain_length + 1} exact"], rows)


def _provenance_section(provenance: dict[str, Any]) -> list[str]:
    if not provenance.get("available"):
        return [f"Not measured: {provenance.get('reason', 'ProvenanceSaveService is not available')}."]
    lines = [provenance["description"]]
    for model in provenance["models"].values():
        parts = list(model["versions"][0]["storage_breakdown"])
        rows = [[model["label"], version["name"], fmt_bytes(version["storage_bytes"]),
                 *(fmt_bytes(version["storage_breakdown"][part]) for part in parts),
                 fmt_seconds(version["tts_s"]), fmt_ratio(version["tts_ratio_to_anchor"]),
                 fmt_seconds(version["ttr_checks_s"]), fmt_ratio(version["ttr_ratio_to_anchor"]),
                 "yes" if version["recovered_equal"] else "NO"]
                for version in model["versions"]]
        lines += ["", table(["model", "version", "storage", *parts, "TTS", "x anchor",
                             "TTR checks (incl. retraining)", "x anchor", "exact"], rows),
                  "", f"{model['label']}: all {len(model['versions'])} versions together "
                      f"{fmt_bytes(model['storage_total_bytes'])} (dataset counted once) vs "
                      f"{fmt_bytes(model['baseline_total_bytes'])} as baseline snapshots "
                      f"({fmt_share(model['storage_ratio_to_baseline'])}); the store's files grew by "
                      f"{fmt_bytes(model['store_bytes_on_disk'])} on disk for them."]
    return lines + _provenance_growth_lines(provenance)


def _provenance_growth_lines(provenance: dict[str, Any]) -> list[str]:
    """The bytes each provenance version adds to the store, as a share of one snapshot of the model, with the
    largest share after the first version (which also stores the dataset)."""
    lines = []
    for model in provenance["models"].values():
        rows = [[model["label"], version["name"], "stored" if version["stores_training_state"] else "carried",
                 fmt_bytes(version["store_growth_bytes"]), fmt_share(version["store_growth_share_of_snapshot"])]
                for version in model["versions"]]
        lines += ["", table(["model", "version", "training state", "store growth", "share of a snapshot"], rows),
                  "", f"{model['label']}: each version after the first adds at most "
                      f"{fmt_share(model['max_growth_share_after_first'])} of a {fmt_bytes(model['snapshot_bytes'])} "
                      f"snapshot (training state stored every {model['checkpoint_interval']} versions)."]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report: settings, per-relation table, chain table, provenance and targets."""
    meta = results["meta"]
    labels = {name: info["label"] for name, info in meta["approaches"].items()}
    chain_length = meta["chain_length"]
    lines = [
        f"# mmlib benchmark ({meta['mode']} mode)",
        "",
        f"{meta['started']}; torch {meta['torch_version']} on {meta['machine']}, {meta['cpu_count']} CPUs, "
        f"{meta['torch_threads']} torch threads; median / p90 of {meta['repeats']} timed runs after a warm-up "
        f"(chain: {meta['chain_repeats']}); fine-tunes: {meta['train_steps']} SGD steps on "
        f"{meta['batch_size']} random {meta['image_size']}x{meta['image_size']} images; "
        f"run took {meta.get('elapsed_s', 0):.0f} s; 1-minute load average {meta['load_average_at_start'][0]:.1f} "
        f"at the start, {meta.get('load_average_at_end', [float('nan')])[0]:.1f} at the end.",
        "",
        "Anchors: raw `torch.save(model.state_dict(), path)` into the store's directory, the same followed by "
        "`fsync` of the file and its directory (the durable anchor: mmlib's saves are durable), and raw "
        "`torch.load(path, weights_only=True)` + constructing the model + `load_state_dict`. "
        "Each approach saves into its own fresh store next to the anchor files; every timed save and recovery "
        "starts with the service's in-process cache emptied (it reads its base or weights from the store). "
        "Storage share is relative to the baseline approach in the same relation; `exact` says the recovered "
        "state dict equals the saved one bit for bit. Times are `median / p90` (p90 by nearest rank: with fewer "
        "than 10 runs, the slowest); a ratio's median divides medians, its p90 divides p90s.",
    ]
    lines += ["", "## U1-U3: storage, time-to-save, time-to-recover", "",
              table(RELATION_HEADERS, _relation_rows(((model["label"], model["relations"])
                                                      for model in results["models"].values()), labels)),
              "", "## U1-U3 for a user's model: its class in its own file, saved with that file as code", "",
              "The same weights as above, saved from the class of a copy of the model's module in a .py file of "
              "the user's (imported from its path, not from mmlib.models) and passed as `code=` with every save; "
              "each approach in fresh stores of its own, with its own anchors measured in the same rounds. Every "
              "recovery is by a new save service opened on the store for it (untimed). (The reference case above is "
              "stored with code too: mmlib finds the source file of the mmlib.models module itself.)", "",
              *_user_model_section(results, labels),
              "", f"## U4: version chain of {chain_length} fine-tuned versions (TTR with checks)", "",
              _chain_section(results, labels, chain_length),
              "", "## Provenance", "", *_provenance_section(results["provenance"]),
              "", "## Targets (issue #15's table)", "",
              table(["target", "model", "measured", "threshold", "status"],
                    [[target["target"], target["model"], _fmt_target_value(target["measured"], target["unit"]),
                      _fmt_target_value(target["threshold"], target["unit"]), _status(target["met"])]
                     for target in results["targets"]])]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], markdown_text: str, out_dir: str, suffix: str) -> list[str]:
    """Write `benchmark<suffix>.json` and `.md` into `out_dir`; returns their paths."""
    json_path = os.path.join(out_dir, f"benchmark{suffix}.json")
    markdown_path = os.path.join(out_dir, f"benchmark{suffix}.md")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, allow_nan=False)
    with open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write(markdown_text)
    return [json_path, markdown_path]
