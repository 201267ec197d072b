"""Provenance test helpers: a tiny model and a train service whose training cannot be reproduced.

This file is stored as code by the tests and imported from the store at recovery, so it imports only
installed packages.
"""

import torch

from mmlib.demo.image_classification import ImageClassificationTrainService


class TinyNet(torch.nn.Module):
    """A small CNN for 3-class 64x64 images (fast to train in tests)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(8, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(inputs))


class UnseededNoiseTrainService(ImageClassificationTrainService):
    """Trains like the example service, then adds noise from an unseeded generator (a non-deterministic step)."""

    def train(self, model: torch.nn.Module, number_batches=None) -> None:
        super().train(model, number_batches=number_batches)
        generator = torch.Generator()
        generator.seed()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)


class WideNet(TinyNet):
    """TinyNet with a wide hidden layer (about 100k parameters): its weights and momentum buffers dwarf the
    documents of a version, so what a version stores shows in its byte count."""

    def __init__(self):
        super().__init__()
        self.classifier = torch.nn.Sequential(torch.nn.Linear(8, 8192), torch.nn.ReLU(), torch.nn.Linear(8192, 3))
