"""Recompute the probe of ``probe_store.py`` in this process and compare it with a stored summary.

Prints a per-layer same/diff table, then ``same`` if every layer matches bit-exactly, else ``diff`` and the first
diverging layer. The exit status is 0 for same and 1 for diff.
"""

import argparse
import sys
from typing import List, Optional

from probe_store import probe_reference_step

from mmlib.probe import ProbeInfo, ProbeSummary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="summary file written by probe_store.py")
    args = parser.parse_args(argv)
    stored = ProbeSummary(args.path)
    current = probe_reference_step()
    current.compare_to(stored, common=[ProbeInfo.LAYER_NAME],
                       compare=[ProbeInfo.INPUT_TENSOR, ProbeInfo.OUTPUT_TENSOR,
                                ProbeInfo.GRAD_INPUT_TENSOR, ProbeInfo.GRAD_OUTPUT_TENSOR])
    if current == stored:
        print("same")
        return 0
    layer_key, probe_field = current.first_divergence(stored)
    print(f"diff: first divergence at layer {layer_key!r}, field {probe_field.value}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
