"""Probe one deterministic training step of the reference GoogLeNet and store the summary.

Run this on one machine, then ``probe_load_compare.py --path <printed file>`` on another (or in a new process) to
check that the step is reproduced bit-exactly there, layer by layer.
"""

import argparse
import logging
import os
import warnings
from typing import List, Optional

import torch
from torch import nn

from mmlib.deterministic import set_deterministic
from mmlib.probe import ProbeSummary, probe_training
from mmlib.util.dummy_data import imagenet_target

logger = logging.getLogger(__name__)

SUMMARY_FILE_NAME = "googlenet_probe_summary.pt"
BATCH_SIZE = 2
IMAGE_SIZE = 112


def reference_googlenet() -> nn.Module:
    """torchvision's GoogLeNet where it imports, else mmlib's copy with the same layers and keys."""
    try:
        from torchvision.models import GoogLeNet
    except (ImportError, OSError, RuntimeError) as err:
        logger.info("torchvision is not usable (%s); using mmlib.models.GoogLeNet", err)
        from mmlib.models import GoogLeNet
        return GoogLeNet()
    return GoogLeNet(aux_logits=False, init_weights=True)


def probe_reference_step() -> ProbeSummary:
    """Probe one SGD step of a freshly seeded GoogLeNet on a fixed small random batch."""
    set_deterministic()
    model = reference_googlenet()
    model.train()
    inp = torch.rand(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE)
    target = imagenet_target(inp)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="probing records", category=UserWarning)  # small input: fine
        return probe_training(model, inp, optimizer, nn.CrossEntropyLoss(), target)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="directory to write the summary into")
    args = parser.parse_args(argv)
    os.makedirs(args.path, exist_ok=True)
    summary_path = os.path.join(args.path, SUMMARY_FILE_NAME)
    probe_reference_step().save(summary_path)
    print(summary_path)


if __name__ == "__main__":
    main()
