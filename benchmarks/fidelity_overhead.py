"""What the fidelity checks cost per save and recovery, next to raw torch.save / torch.load of the same model.

Run from the repository root: ``python -m benchmarks.fidelity_overhead [--model resnet50] [--repeats 5]``.
Times (medians, rounds interleaved) the pieces a save and a recovery add to writing and reading weights:
capturing the state layout (sharing, module versions, extra states, ...), validating that the recorded class
rebuilds the architecture on the meta device (paid once per architecture and service: later saves of the
same architecture find it in the service's cache), rebuilding with the layout restored, and the checked
recovery's hashing of the rebuilt model. Prints a markdown table.
"""

import argparse
import os
import tempfile

import torch

from benchmarks.common import MODEL_LABELS, median_seconds, raw_load, ratio
from mmlib.approaches.base import merkle_tree
from mmlib.approaches.model_state import capture, check_rebuildable, module_types, rebuild
from mmlib.models import REFERENCE_MODELS


def measure(model_key: str, repeats: int) -> list[tuple[str, float, str]]:
    """(step, median milliseconds, ratio to its anchor) for every step."""
    cls = REFERENCE_MODELS[model_key]
    model = cls()
    captured = capture(model)
    modules = module_types(model)
    with tempfile.TemporaryDirectory(prefix="mmlib-fidelity-") as directory:
        path = os.path.join(directory, "anchor.pt")
        torch.save(model.state_dict(), path)
        steps = {
            "anchor: torch.save": lambda _: lambda: torch.save(model.state_dict(), path),
            "capture (state layout)": lambda _: lambda: capture(model),
            "validate architecture on meta (first save per service)":
                lambda _: lambda: check_rebuildable(cls, captured, modules, f"{cls.__name__}()"),
            "anchor: torch.load + construct + load_state_dict": lambda _: lambda: raw_load(cls, path),
            "rebuild (meta + assign + layout)": lambda _: lambda: rebuild(cls, captured.tensors, captured.layout),
            "check: capture + hash the rebuilt model": lambda _: lambda: merkle_tree(capture(model)),
        }
        medians = {name: result["median_s"] for name, result in median_seconds(steps, repeats).items()}
    save_anchor = medians["anchor: torch.save"]
    load_anchor = medians["anchor: torch.load + construct + load_state_dict"]
    rows = []
    for name, seconds in medians.items():
        anchor = load_anchor if name.startswith(("anchor: torch.load", "rebuild", "check")) else save_anchor
        rows.append((name, seconds * 1e3, f"{ratio(seconds, anchor):.3f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    print(f"## Fidelity overhead, {MODEL_LABELS.get(arguments.model, arguments.model)}\n")
    print("| step | median ms | ratio to its anchor |\n|---|---|---|")
    for name, milliseconds, share in measure(arguments.model, arguments.repeats):
        print(f"| {name} | {milliseconds:.1f} | {share} |")


if __name__ == "__main__":
    main()
