"""Tour of mmlib.probe: a layer summary, forward and backward comparisons, and mmlib.equal's model checks.

GoogLeNet has dropout before its classifier, so two training steps differ unless the random state is fixed.
"""

import copy
import warnings
from typing import Tuple

import torch
from torch import nn

from mmlib.deterministic import set_deterministic
from mmlib.equal import blackbox_model_equal, model_equal, whitebox_model_equal
from mmlib.models import GoogLeNet
from mmlib.probe import ProbeInfo, ProbeSummary, probe_inference, probe_training
from mmlib.util.dummy_data import imagenet_target

BATCH_SIZE = 2
IMAGE_SIZE = 64
FORWARD_FIELDS = [ProbeInfo.INPUT_TENSOR, ProbeInfo.OUTPUT_TENSOR]
BACKWARD_FIELDS = FORWARD_FIELDS + [ProbeInfo.GRAD_INPUT_TENSOR, ProbeInfo.GRAD_OUTPUT_TENSOR]


def small_input() -> torch.Tensor:
    return torch.rand(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE)


def training_step(model: nn.Module, inp: torch.Tensor, target: torch.Tensor) -> ProbeSummary:
    """Probe one SGD step of `model` in training mode."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return probe_training(model, inp, optimizer, nn.CrossEntropyLoss(), target)


def report(summary1: ProbeSummary, summary2: ProbeSummary) -> None:
    print(f"equal: {summary1 == summary2}; first divergence: {summary1.first_divergence(summary2)}")
    print()


def print_a_summary() -> None:
    print("== summary of the first 10 layer calls of GoogLeNet (inference)")
    model = GoogLeNet().eval()
    summary = probe_inference(model, small_input(), forward_indices=range(1, 11))
    summary.print_summary([ProbeInfo.FORWARD_INDEX, ProbeInfo.LAYER_NAME, ProbeInfo.INPUT_SHAPE,
                           ProbeInfo.OUTPUT_SHAPE, ProbeInfo.OUTPUT_TENSOR])
    print()


def forward_compare() -> None:
    print("== forward compare: a model and a copy of its weights, same input")
    model1 = GoogLeNet().eval()
    model2 = GoogLeNet().eval()
    model2.load_state_dict(model1.state_dict())
    inp = small_input()
    summary1, summary2 = probe_inference(model1, inp), probe_inference(model2, inp)
    summary1.compare_to(summary2, [ProbeInfo.LAYER_NAME], FORWARD_FIELDS)
    report(summary1, summary2)


def backward_compare() -> Tuple[nn.Module, nn.Module]:
    print("== backward compare: one training step each, random state not reset (dropout masks differ)")
    model1 = GoogLeNet()
    model2 = copy.deepcopy(model1)
    inp = small_input()
    target = imagenet_target(inp)
    summary1, summary2 = training_step(model1, inp, target), training_step(model2, inp, target)
    summary1.compare_to(summary2, [ProbeInfo.LAYER_NAME], BACKWARD_FIELDS)
    report(summary1, summary2)
    return model1, model2


def deterministic_backward_compare() -> Tuple[nn.Module, nn.Module]:
    print("== deterministic backward compare: set_deterministic() before building and training each model")
    summaries, models = [], []
    for _ in range(2):
        set_deterministic()
        model = GoogLeNet()
        inp = small_input()
        summaries.append(training_step(model, inp, imagenet_target(inp)))
        models.append(model)
    summaries[0].compare_to(summaries[1], [ProbeInfo.LAYER_NAME], BACKWARD_FIELDS)
    report(summaries[0], summaries[1])
    return models[0], models[1]


def equality_checks(name: str, model1: nn.Module, model2: nn.Module) -> None:
    """The three model checks of mmlib.equal: weights, outputs, and both."""
    print(f"== model equality after the {name} training step")
    print(f"whitebox_model_equal: {whitebox_model_equal(model1, model2)}")
    print(f"blackbox_model_equal: {blackbox_model_equal(model1, model2, small_input)}")
    print(f"model_equal:          {model_equal(model1, model2, small_input)}")
    print()


def main() -> None:
    warnings.filterwarnings("ignore", message="probing records", category=UserWarning)  # small inputs: fine
    print_a_summary()
    forward_compare()
    nondeterministic_models = backward_compare()
    deterministic_models = deterministic_backward_compare()
    equality_checks("non-deterministic", *nondeterministic_models)
    equality_checks("deterministic", *deterministic_models)


if __name__ == "__main__":
    main()
