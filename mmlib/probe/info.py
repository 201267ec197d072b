"""What the probe records per layer call (`ProbeInfo`), in which mode it runs (`ProbeMode`), and one layer's record."""

from enum import Enum
from typing import Any, Dict


class ProbeInfo(Enum):
    """A piece of information the probe records per layer call."""

    LAYER_ID = "layer_id"
    FORWARD_INDEX = "forward_index"
    BACKWARD_INDEX = "backward_index"
    LAYER_NAME = "layer_name"
    INPUT_SHAPE = "input_shape"
    INPUT_TENSOR = "input_tensor"
    OUTPUT_SHAPE = "output_shape"
    OUTPUT_TENSOR = "output_tensor"
    GRAD_INPUT_SHAPE = "grad_input_shape"
    GRAD_INPUT_TENSOR = "grad_input_tensor"
    GRAD_OUTPUT_SHAPE = "grad_output_shape"
    GRAD_OUTPUT_TENSOR = "grad_output_tensor"


class ProbeMode(Enum):
    """Whether a probe runs a forward pass only or a full training step."""

    INFERENCE = "inference"
    TRAINING = "training"


LayerInfo = Dict[ProbeInfo, Any]
"""One recorded layer call: ``{ProbeInfo: value}``."""
