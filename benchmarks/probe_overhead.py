"""Time probe_inference on ResNet-18 with every layer recorded against a plain forward pass of the same input.

Run from the repository root: ``python -m benchmarks.probe_overhead``. Plain and probed runs alternate, so load
from other processes affects both alike; the medians and their ratio are printed and written to
``bench-results/probe_overhead.json`` (git ignores it; ``benchmarks/results/`` holds the published run). The
target is a ratio of at most 3.0.
"""

import argparse
import os
import platform
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch

from benchmarks.common import RESULTS_DIR, write_json
from mmlib.models import ResNet18
from mmlib.probe import probe_inference

TARGET_RATIO = 3.0
DEFAULT_OUTPUT = os.path.join(RESULTS_DIR, "probe_overhead.json")


def _seconds(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def measure(batch_size: int, image_size: int, runs: int) -> Dict[str, object]:
    """Median seconds of a plain no-grad forward pass and of probe_inference, and their ratio."""
    torch.manual_seed(0)
    model = ResNet18().eval()
    inp = torch.rand(batch_size, 3, image_size, image_size)

    def plain_forward() -> None:
        with torch.no_grad():
            model(inp)

    def probed_forward() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="probing records", category=UserWarning)
            probe_inference(model, inp)

    plain_forward()
    probed_forward()
    plain: List[float] = []
    probed: List[float] = []
    for _ in range(runs):
        plain.append(_seconds(plain_forward))
        probed.append(_seconds(probed_forward))
    plain_s, probed_s = statistics.median(plain), statistics.median(probed)
    ratio = probed_s / plain_s
    return {
        "model": "ResNet18",
        "batch_size": batch_size,
        "image_size": image_size,
        "runs": runs,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": platform.machine(),
        "plain_forward_s": plain_s,
        "probe_inference_s": probed_s,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"JSON file to write the results to (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    result = measure(args.batch_size, args.image_size, args.runs)
    print(f"plain forward:   {result['plain_forward_s']:.3f} s (median of {args.runs})")
    print(f"probe_inference: {result['probe_inference_s']:.3f} s (median of {args.runs}, all layers recorded)")
    print(f"ratio: {result['ratio']:.2f} (target <= {TARGET_RATIO}: {'met' if result['target_met'] else 'NOT met'})")
    write_json(args.output, result)
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
