"""The project's version of the paper's evaluation: storage, time-to-save and time-to-recover per approach.

Run from the repository root: ``python -m benchmarks.run [--quick] [--models ...] [--out DIR]`` (or ``mmlib
bench``). For every model and approach it measures the model relations of the paper (U1 base, U2 partial
fine-tune, U3 full fine-tune, U4 version chain, and provenance when `ProvenanceSaveService` exists). Every time
is the median and the p90 of several runs measured in this process next to its anchor (raw ``torch.save`` of the
state dict into the store's directory; raw ``torch.load(weights_only=True)`` + constructing the model +
``load_state_dict``), and reported also as a ratio to it. Rounds interleave the anchor and the approaches after one
untimed warm-up round; each approach has its own fresh store; the environment is captured once beforehand; every
timed save and recovery starts with the service's in-process cache of recent versions emptied, so it reads its
base or its weights from the store. Each model is also measured as a user's model (U1-U3): its class copied into a
.py file of its own and saved with that file as code, each recovery by a service opened for it, and its U3 version
recovered once per approach in a fresh process against a raw load in a fresh process (`benchmarks.user_model`).
Writes ``benchmark[-quick].json`` and ``.md`` and PNG plots to the output directory
(default ``bench-results/``, which git ignores; ``benchmarks/results/`` holds the published reference run) and
prints the markdown report.
"""

import argparse
import copy
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from benchmarks import plots, provenance_section, report, user_model
from benchmarks.save_durability import durable_torch_save
from benchmarks.common import (ANCHOR, BATCH_SIZE, IMAGE_SIZE, MODEL_LABELS, RESULTS_DIR, Approach, Progress,
                               Step, median_seconds, ratio, raw_load, total_bytes, train_steps, without_cache)
from mmlib.approaches.base import AbstractSaveService
from mmlib.equal import state_dict_equal
from mmlib.models import REFERENCE_MODELS
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.environment import Environment
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment

logger = logging.getLogger(__name__)

FULL_MODELS = ["resnet18", "mobilenet_v2", "resnet50", "googlenet", "resnet152"]
QUICK_MODELS = ["resnet18"]
# Defaults that keep a full run near 20 minutes on 2 cores: ResNet-152's 10-version chain and any provenance
# retraining of the large models would add about as much again. Name models explicitly to run them anyway.
FULL_CHAIN_MODELS = ["resnet18", "mobilenet_v2", "resnet50", "googlenet"]
FULL_PROVENANCE_MODELS = ["resnet18", "resnet50"]
U1, U2, U3 = "U1", "U2", "U3"
RELATIONS = {U1: "base (fresh model, no base)", U2: "partial fine-tune (classifier only)",
             U3: "full fine-tune (new version)"}

# The paper's parameter update stores changed layers as they are, so it uses the plain codec; the improved
# update is measured with plain tensors and with the default compressed-delta codec.
APPROACHES = [
    Approach("baseline", "baseline", BaselineSaveService),
    Approach("param_update", "param update", WeightUpdateSaveService, {"improved_version": False, "codec": "plain"}),
    Approach("improved_update", "improved update (plain)", WeightUpdateSaveService,
             {"improved_version": True, "codec": "plain"}),
    Approach("improved_update_compressed", "improved update (compressed deltas)", WeightUpdateSaveService,
             {"improved_version": True}),
]
# Measured in U1 only: the baseline on a store opened with `durable=False` (no fsync), for scratch checkpoints,
# against plain torch.save. Every save is also compared with torch.save + fsync (DURABLE_ANCHOR): mmlib's saves
# are durable, plain torch.save is not.
SCRATCH = Approach("baseline_scratch", "baseline, open_store(durable=False)", BaselineSaveService)
DURABLE_ANCHOR = "anchor_durable"


@dataclass(frozen=True)
class Settings:
    """How much work a run does; `--quick` picks small values so CI can run it as a smoke test."""

    quick: bool
    models: list[str]
    repeats: int
    chain_models: list[str]
    chain_length: int
    chain_repeats: int
    train_steps: int
    provenance_models: list[str]
    provenance_versions: int
    provenance_repeats: int
    out_dir: str
    work_dir: Optional[str]

    @property
    def suffix(self) -> str:
        return "-quick" if self.quick else ""


def _model_key(name: str) -> str:
    """Accept `resnet50`, `ResNet-50`, `mobilenetv2`, ...; raise argparse errors for unknown names."""
    wanted = name.lower().replace("-", "").replace("_", "")
    for key in REFERENCE_MODELS:
        if key.replace("_", "") == wanted:
            return key
    raise argparse.ArgumentTypeError(f"unknown model {name!r}; choose from {', '.join(REFERENCE_MODELS)}")


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def parse_settings(argv: Optional[list[str]]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-18 only, 2 timed runs, a 4-version chain: a smoke test of a few minutes")
    parser.add_argument("--models", nargs="+", type=_model_key, metavar="MODEL",
                        help=f"models to run (default: {' '.join(FULL_MODELS)}; quick: {' '.join(QUICK_MODELS)})")
    parser.add_argument("--out", default=RESULTS_DIR, help=f"output directory (default: {RESULTS_DIR})")
    parser.add_argument("--repeats", type=_at_least(1),
                        help="timed runs per figure (default: 5, quick: 2; provenance: 2; the chain: 5, quick: 2, "
                             "as its target takes the slowest of 9 versions, which 2 runs leave to one outlier)")
    parser.add_argument("--chain-models", nargs="*", type=_model_key, metavar="MODEL",
                        help="models that also run the U4 chain (default: those of --models if given, else "
                             f"{' '.join(FULL_CHAIN_MODELS)}; quick: {' '.join(QUICK_MODELS)})")
    parser.add_argument("--provenance-models", nargs="*", type=_model_key, metavar="MODEL",
                        help="models that also run the provenance part (default: those of --models if given, else "
                             f"{' '.join(FULL_PROVENANCE_MODELS)}; quick: {' '.join(QUICK_MODELS)})")
    parser.add_argument("--chain-length", type=_at_least(2),
                        help="versions derived from the snapshot in the U4 chain (default: 9, so the chain has 10 "
                             "versions, version 1 the full snapshot; quick: 4)")
    parser.add_argument("--work-dir", help="where the stores and anchor files are written (default: system temp)")
    args = parser.parse_args(argv)
    quick = args.quick
    models = args.models or (QUICK_MODELS if quick else FULL_MODELS)
    default_chain = args.models or (QUICK_MODELS if quick else FULL_CHAIN_MODELS)
    default_provenance = args.models or (QUICK_MODELS if quick else FULL_PROVENANCE_MODELS)
    chain_models = args.chain_models if args.chain_models is not None else default_chain
    provenance_models = args.provenance_models if args.provenance_models is not None else default_provenance
    extra = sorted(set(chain_models) - set(models))
    if extra:
        parser.error(f"--chain-models {' '.join(extra)} are not among the models run ({' '.join(models)})")
    return Settings(quick=quick, models=models, repeats=args.repeats or (2 if quick else 5), chain_models=chain_models,
                    chain_length=args.chain_length or (4 if quick else 9),
                    chain_repeats=args.repeats or (2 if quick else 5),
                    train_steps=2 if quick else 3, provenance_models=provenance_models,
                    provenance_versions=2 if quick else 10, provenance_repeats=args.repeats or 2,
                    out_dir=os.path.abspath(args.out), work_dir=args.work_dir)


def _checks_name(checks: bool) -> str:
    return "checks" if checks else "no_checks"


def _timing(figure: str, timing: dict[str, Any], anchor: Optional[dict[str, Any]] = None,
            to: str = "anchor") -> dict[str, Any]:
    """A figure's median and p90 (`<figure>_s`, `<figure>_p90_s`) and, given its anchor's timing, their ratios to
    the anchor's median and p90 (`<figure>_ratio_to_<to>`, `..._p90`)."""
    fields = {f"{figure}_s": timing["median_s"], f"{figure}_p90_s": timing["p90_s"]}
    if anchor is not None:
        fields[f"{figure}_ratio_to_{to}"] = ratio(timing["median_s"], anchor["median_s"])
        fields[f"{figure}_ratio_to_{to}_p90"] = ratio(timing["p90_s"], anchor["p90_s"])
    return fields


class ModelBench:
    """Benchmarks one model: a fresh store per approach, anchor files in the same directory, one shared env."""

    code: Optional[str] = None  # the code file passed with each save; None: mmlib finds the class's source itself

    def __init__(self, key: str, settings: Settings, env: Environment, progress: Progress, root: str):
        self.key, self.label, self.cls = key, MODEL_LABELS.get(key, key), REFERENCE_MODELS[key]
        self.settings, self.env, self.progress, self.root = settings, env, progress, root
        self.approaches = list(APPROACHES)
        self.services: dict[str, AbstractSaveService] = {
            approach.name: self._open(approach) for approach in [*self.approaches, SCRATCH]}
        self.base_ids: dict[str, str] = {}
        self.base_model: Optional[torch.nn.Module] = None

    def _open(self, approach: Approach) -> AbstractSaveService:
        """A new service of `approach` over its store in this bench's directory (the scratch one not durable)."""
        return approach.create(*open_store(os.path.join(self.root, approach.name), durable=approach is not SCRATCH))

    def step(self, message: str) -> None:
        self.progress(f"{self.label}: {message}")

    def _anchor_path(self, name: str) -> str:
        return os.path.join(self.root, f"{ANCHOR}-{name}.pt")

    def variants(self, relation: str) -> list[torch.nn.Module]:
        """One model per round (round 0 is the warm-up): distinct weights, so no save finds its blob stored."""
        self.step(f"{relation} {RELATIONS[relation]}: building {self.settings.repeats + 1} models")
        rounds = range(self.settings.repeats + 1)
        if relation == U1:
            variants = []
            for round_index in rounds:
                torch.manual_seed(round_index)
                variants.append(self.cls().eval())
            return variants
        partial = relation == U2
        return [train_steps(copy.deepcopy(self.base_model), self.settings.train_steps,
                            seed=(1000 if partial else 2000) + round_index, partial=partial)
                for round_index in rounds]

    def _save_info(self, model: torch.nn.Module, base_id: Optional[str]) -> ModelSaveInfo:
        """What `save_model` gets for `model` derived from `base_id` (None: a snapshot), with the bench's code file."""
        return ModelSaveInfoBuilder().add_model_info(env=self.env, model=model, code=self.code,
                                                     base_model_id=base_id).build()

    def relation(self, relation: str, variants: list[torch.nn.Module]) -> dict[str, Any]:
        """TTS, TTR with and without checks, and storage of one relation for its `variants` (one per round), for the
        anchor and every approach (U1 adds the durable anchor and the non-durable baseline)."""
        approaches = self.approaches + ([SCRATCH] if relation == U1 else [])
        if relation == U1:
            self.base_model = variants[0]
        saved: dict[str, dict[int, str]] = {approach.name: {} for approach in approaches}

        def anchor_save(save: Callable[[dict, str], Any], kind: str) -> Step:
            def prepare(round_index: int) -> Callable[[], Any]:
                model, path = variants[round_index], self._anchor_path(f"{relation}-{kind}-{round_index}")
                return lambda: save(model.state_dict(), path)
            return prepare

        def approach_save(name: str) -> Step:
            """A save that finds its base in the store, not in the service's cache of recent versions."""
            service = self.services[name]

            def prepare(round_index: int) -> Callable[[], Any]:
                without_cache(service)
                info = self._save_info(variants[round_index], None if relation == U1 else self.base_ids[name])
                return lambda: saved[name].__setitem__(round_index, service.save_model(info))
            return prepare

        self.step(f"{relation}: timing saves ({self.settings.repeats} runs + warm-up)")
        anchors = {ANCHOR: anchor_save(torch.save, "plain"),
                   DURABLE_ANCHOR: anchor_save(durable_torch_save, "durable")}
        tts = median_seconds({**anchors, **{a.name: approach_save(a.name) for a in approaches}},
                             self.settings.repeats)
        if relation == U1:
            self.base_ids = {name: ids[0] for name, ids in saved.items()}
        measured_id = {name: ids[1] for name, ids in saved.items()}
        result: dict[str, Any] = {"description": RELATIONS[relation], "approaches": {}}
        self.step(f"{relation}: timing recoveries with and without checks")
        anchor_path = self._anchor_path(f"{relation}-plain-1")
        recover_steps: dict[str, Step] = {ANCHOR: lambda _round: lambda: raw_load(self.cls, anchor_path)}
        for name, model_id in measured_id.items():
            for checks in (True, False):
                recover_steps[f"{name}/{_checks_name(checks)}"] = self._recover_step(name, model_id, checks)
        ttr = median_seconds(recover_steps, self.settings.repeats)
        result[ANCHOR] = {**_timing("tts", tts[ANCHOR]), **_timing("ttr", ttr[ANCHOR]),
                          "file_bytes": os.path.getsize(anchor_path),
                          "runs": {"tts_s": tts[ANCHOR]["runs_s"], "ttr_s": ttr[ANCHOR]["runs_s"]}}
        result[DURABLE_ANCHOR] = {**_timing("tts", tts[DURABLE_ANCHOR], tts[ANCHOR]),
                                  "runs": {"tts_s": tts[DURABLE_ANCHOR]["runs_s"]}}
        for approach in approaches:
            name = approach.name
            sizes = self.services[name].model_save_size(measured_id[name])
            entry = {
                "model_id": measured_id[name],
                "storage_bytes": total_bytes(sizes),
                "size_info": sizes,
                **_timing("tts", tts[name], tts[ANCHOR]),
                **_timing("tts", tts[name], tts[DURABLE_ANCHOR], to="durable_anchor"),
                "recovered_equal": self._recovers_exactly(name, measured_id[name], variants[1]),
                "runs": {"tts_s": tts[name]["runs_s"]},
            }
            for checks in (True, False):
                timing, label = ttr[f"{name}/{_checks_name(checks)}"], f"ttr_{_checks_name(checks)}"
                entry.update(_timing(label, timing, ttr[ANCHOR]))
                entry["runs"][f"{label}_s"] = timing["runs_s"]
            result["approaches"][name] = entry
        baseline = result["approaches"].get("baseline")
        for entry in result["approaches"].values():
            entry["storage_ratio_to_baseline"] = (ratio(entry["storage_bytes"], baseline["storage_bytes"])
                                                  if baseline else None)
        return result

    def _recovers_exactly(self, name: str, model_id: str, expected: torch.nn.Module) -> bool:
        """Untimed check that the stored model comes back bit for bit (a benchmark of wrong results is void)."""
        recovered = self._recovery_service(name).recover_model(model_id, execute_checks=True).model
        return state_dict_equal(recovered.state_dict(), expected.state_dict())

    def _recovery_service(self, name: str) -> AbstractSaveService:
        """The service for one recovery: the bench's own, its cache of recent versions dropped (it reads the store)."""
        return without_cache(self.services[name])

    def _recover_step(self, name: str, model_id: str, checks: bool) -> Step:
        """A recovery that reads the store, by the service `_recovery_service` gives before each run (untimed)."""
        def prepare(_round_index: int) -> Callable[[], Any]:
            service = self._recovery_service(name)
            return lambda: service.recover_model(model_id, execute_checks=checks)
        return prepare

    def chain(self) -> dict[str, Any]:
        """U4: a chain of versions, each a full fine-tune of the previous one; TTR (with checks) per depth."""
        length = self.settings.chain_length
        self.step(f"U4 version chain: training {length} versions")
        versions = [self.base_model]
        for depth in range(1, length + 1):
            versions.append(train_steps(copy.deepcopy(versions[-1]), self.settings.train_steps, seed=3000 + depth,
                                        partial=False))
        self.step(f"U4: saving {length} versions per approach")
        ids = {}
        for approach in self.approaches:
            service = self.services[approach.name]
            chain_ids = [self.base_ids[approach.name]]
            for model in versions[1:]:
                chain_ids.append(service.save_model(self._save_info(model, chain_ids[-1])))
            ids[approach.name] = chain_ids
        for depth, model in enumerate(versions):
            torch.save(model.state_dict(), self._anchor_path(f"U4-v{depth}"))
        self.step(f"U4: timing recovery of every version ({self.settings.chain_repeats} runs + warm-up)")
        steps: dict[str, Step] = {}
        for depth in range(length + 1):
            path = self._anchor_path(f"U4-v{depth}")
            steps[f"{ANCHOR}/v{depth}"] = lambda _round, path=path: lambda: raw_load(self.cls, path)
            for name, chain_ids in ids.items():
                steps[f"{name}/v{depth}"] = self._recover_step(name, chain_ids[depth], True)
        ttr = median_seconds(steps, self.settings.chain_repeats)

        def per_depth(name: str, figure: str) -> list[float]:
            return [ttr[f"{name}/v{depth}"][figure] for depth in range(length + 1)]

        anchor = {"ttr_s": per_depth(ANCHOR, "median_s"), "ttr_p90_s": per_depth(ANCHOR, "p90_s")}
        result: dict[str, Any] = {"length": length, "depths": list(range(length + 1)), ANCHOR: anchor,
                                  "approaches": {}}
        for name, chain_ids in ids.items():
            seconds, slow = per_depth(name, "median_s"), per_depth(name, "p90_s")
            storage = [total_bytes(self.services[name].model_save_size(model_id)) for model_id in chain_ids]
            result["approaches"][name] = {
                "model_ids": chain_ids,
                "ttr_checks_s": seconds,
                "ttr_checks_p90_s": slow,
                "ttr_ratio_to_anchor": [ratio(s, a) for s, a in zip(seconds, anchor["ttr_s"])],
                "ttr_ratio_to_anchor_p90": [ratio(s, a) for s, a in zip(slow, anchor["ttr_p90_s"])],
                "growth_last_over_first": ratio(seconds[-1], seconds[1]),
                "slowest_update_over_snapshot": ratio(max(seconds[1:]), seconds[0]),
                "storage_bytes": storage,
                "storage_total_bytes": sum(storage),
                "recovered_equal": self._recovers_exactly(name, chain_ids[-1], versions[-1]),
            }
        return result


class UserModelBench(ModelBench):
    """The model as a user has it: its class imported from a copy of its module in a .py file of the user's (not
    from mmlib.models), saved with that file as code, and every recovery by a new service opened for it (untimed,
    well under a millisecond), so nothing of the saving service helps it. Its own stores, under `root`."""

    code: str

    def __init__(self, key: str, settings: Settings, env: Environment, progress: Progress, root: str):
        super().__init__(key, settings, env, progress, root)
        self.label = f"{self.label} (user's file)"
        self.code, self.cls = user_model.write_user_model(REFERENCE_MODELS[key], os.path.join(root, "user_models"))

    def adopt(self, models: list[torch.nn.Module]) -> list[torch.nn.Module]:
        """The user's class holding each model's tensors (shared, not copied; built on the meta device)."""
        adopted = []
        for model in models:
            with torch.device("meta"):
                user = self.cls()
            user.load_state_dict(model.state_dict(), assign=True)
            adopted.append(user.eval())
        return adopted

    def _recovery_service(self, name: str) -> AbstractSaveService:
        """A new service over the approach's store, as a user's next program opens it."""
        return self._open(next(approach for approach in [*self.approaches, SCRATCH] if approach.name == name))

    def fresh_processes(self, figures: dict[str, Any]) -> dict[str, Any]:
        """The measured U3 version recovered once per approach in a fresh process (checks on), against a raw load of
        its torch.save file in a fresh process: the recovery call and the process until the model is back. One raw
        load before them is left untimed, a warm-up, as in every other figure."""
        self.step(f"{U3}: recovering in fresh processes (a warm-up, a raw load, then each approach)")
        expected = self._anchor_path(f"{U3}-plain-1")
        user_model.fresh_process_raw_load(self.code, self.cls.__name__, expected)
        anchor = user_model.fresh_process_raw_load(self.code, self.cls.__name__, expected)
        result: dict[str, Any] = {"relation": U3, ANCHOR: anchor, "approaches": {}}
        for approach in self.approaches:
            entry = user_model.fresh_process_recovery(os.path.join(self.root, approach.name), approach.service_class,
                                                      dict(approach.kwargs),
                                                      figures["approaches"][approach.name]["model_id"], expected)
            for figure in ("recover", "process"):
                entry[f"{figure}_ratio_to_anchor"] = ratio(entry[f"{figure}_s"], anchor[f"{figure}_s"])
            result["approaches"][approach.name] = entry
        return result


def run_model(key: str, settings: Settings, env: Environment, progress: Progress) -> dict[str, Any]:
    """Every relation for one model, as mmlib.models and as a user's file, in a temporary directory that is removed
    afterwards. The user's case saves the same weights as the reference case, right after it."""
    root = tempfile.mkdtemp(prefix=f"mmlib-bench-{key}-", dir=settings.work_dir)
    try:
        bench = ModelBench(key, settings, env, progress, root)
        user = UserModelBench(key, settings, env, progress, os.path.join(root, "user"))
        relations, user_relations = {}, {}
        for relation in RELATIONS:
            variants = bench.variants(relation)
            relations[relation] = bench.relation(relation, variants)
            user_relations[relation] = user.relation(relation, user.adopt(variants))
        base = bench.base_model
        result: dict[str, Any] = {
            "label": bench.label,
            "parameters": sum(parameter.numel() for parameter in base.parameters()),
            "state_dict_bytes": sum(tensor.numel() * tensor.element_size() for tensor in base.state_dict().values()),
            "relations": relations,
            "user_model": {"code_file": os.path.relpath(user.code, root), "class": user.cls.__name__,
                           "relations": user_relations, "fresh_process": user.fresh_processes(user_relations[U3])},
        }
        if key in settings.chain_models:
            result["chain"] = bench.chain()
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _metadata(settings: Settings) -> dict[str, Any]:
    return {
        "mode": "quick" if settings.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "models": settings.models,
        "approaches": {approach.name: {"label": approach.label, "class": approach.service_class.__name__,
                                       "kwargs": dict(approach.kwargs)}
                       for approach in [*APPROACHES, SCRATCH]},
        "repeats": settings.repeats,
        "chain_models": settings.chain_models,
        "chain_length": settings.chain_length,
        "chain_repeats": settings.chain_repeats,
        "train_steps": settings.train_steps,
        "provenance_models": settings.provenance_models,
        "provenance_versions": settings.provenance_versions,
        "provenance_repeats": settings.provenance_repeats,
        "batch_size": BATCH_SIZE,
        "image_size": IMAGE_SIZE,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "work_dir": settings.work_dir or tempfile.gettempdir(),
    }


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark; returns the process exit code (0 on success)."""
    settings = parse_settings(argv)
    progress = Progress()
    progress(f"benchmark ({'quick' if settings.quick else 'full'}): models {', '.join(settings.models)}; "
             f"{settings.repeats} timed runs per figure")
    env = track_current_environment()
    results: dict[str, Any] = {"meta": _metadata(settings), "models": {}}
    for key in settings.models:
        results["models"][key] = run_model(key, settings, env, progress)
    baseline_bytes = {key: model["relations"][U3]["approaches"].get("baseline", {}).get("storage_bytes")
                      for key, model in results["models"].items()}
    results["provenance"] = provenance_section.run(settings.provenance_models, settings.provenance_versions,
                                                   settings.provenance_repeats, settings.work_dir, env, progress,
                                                   baseline_bytes)
    results["targets"] = report.evaluate_targets(results)
    results["meta"]["elapsed_s"] = progress.elapsed
    results["meta"]["load_average_at_end"] = list(os.getloadavg())
    os.makedirs(settings.out_dir, exist_ok=True)
    progress("writing report and plots")
    results["plots"] = plots.write_all(results, settings.out_dir, settings.suffix)
    markdown = report.markdown(results)
    paths = report.write(results, markdown, settings.out_dir, settings.suffix)
    print(markdown)
    progress(f"done; results in {', '.join(paths + results['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
