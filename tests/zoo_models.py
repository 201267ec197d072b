"""The model zoo: models people really use, beyond the reference CNNs, each with an input and a train step.

mmlib stores this file as the models' code (and as the provenance train service's code) and imports it from
the store at recovery, so it imports only installed packages; transformers is imported only by its factories.
"""

import itertools
from typing import Any, Callable

import torch
from torch import nn

from mmlib.demo.image_classification import OPTIMIZER, ImageClassificationTrainService, SGDOptimizer
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService
from mmlib.schema.restorable_object import StateDictRestorableObjectWrapper, StateFileRestorableObjectWrapper
from mmlib.util.init_from_file import create_object

VOCAB = 50


class TiedDecoderLM(nn.Module):
    """A GPT-2-style decoder: token and position embeddings, one causal attention block, output tied to the input."""

    def __init__(self, vocab: int = VOCAB, width: int = 16, context: int = 8):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(context, width)
        self.ln_attention = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, num_heads=2, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.token_embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding(torch.arange(length))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        normed = self.ln_attention(x)
        x = x + self.attention(normed, normed, normed, attn_mask=causal, need_weights=False)[0]
        x = x + self.mlp(self.ln_mlp(x))
        return self.head(self.ln_final(x))


class Recurrent(nn.Module):
    """An LSTM or GRU over feature sequences, with a linear read-out of the last step."""

    def __init__(self, cell: str = "lstm", features: int = 6, hidden: int = 8):
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(features, hidden, num_layers=2, batch_first=True)
        self.readout = nn.Linear(hidden, 3)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(sequence)
        return self.readout(output[:, -1])


class Encoder(nn.Module):
    """`nn.TransformerEncoder` (MultiheadAttention inside) with a linear head."""

    def __init__(self, width: int = 16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.1)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(sequence).mean(dim=1))


class Parametrized(nn.Module):
    """Layers with `weight_norm` and `spectral_norm` parametrizations (torch.nn.utils.parametrizations)."""

    def __init__(self):
        super().__init__()
        self.normed = nn.utils.parametrizations.weight_norm(nn.Linear(6, 8))
        self.spectral = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.spectral(torch.tanh(self.normed(features)))


class Normalized(nn.Module):
    """BatchNorm (running statistics) and GroupNorm."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 8)
        self.batch_norm = nn.BatchNorm1d(8)
        self.group_norm = nn.GroupNorm(2, 8)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.group_norm(self.batch_norm(self.linear(features)))


class BuffersAndAttributes(nn.Module):
    """A non-persistent buffer and a tensor kept as a plain attribute, both used by forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 6)
        self.register_buffer("mask", torch.linspace(0.5, 1.5, 6), persistent=False)
        self.offset = torch.full((6,), 0.25)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features) * self.mask + self.offset.to(features.dtype)


class ComplexLayer(nn.Module):
    """A complex64 weight and a complex128 buffer (e.g. a learned filter in the frequency domain)."""

    def __init__(self, features: int = 6):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, features, dtype=torch.complex64))
        self.register_buffer("phase", torch.exp(1j * torch.linspace(0, 3, features, dtype=torch.float64)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mixed = features.to(torch.complex64) @ self.weight
        return (mixed * self.phase.to(torch.complex64)).abs()


class Counter(nn.Module):
    """A module with JSON extra state (a counter and a label) that changes what forward computes."""

    def __init__(self):
        super().__init__()
        self.steps, self.label = 0, "fresh"

    def get_extra_state(self) -> dict:
        return {"steps": self.steps, "label": self.label}

    def set_extra_state(self, state: dict) -> None:
        self.steps, self.label = state["steps"], state["label"]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * (1 + self.steps)


class Calibration(nn.Module):
    """A module whose extra state is a tensor."""

    def __init__(self):
        super().__init__()
        self.scale = torch.ones(6)

    def get_extra_state(self) -> torch.Tensor:
        return self.scale

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.scale = state

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.scale


class WithExtraState(nn.Module):
    """Extra state of both kinds around a linear layer."""

    def __init__(self):
        super().__init__()
        self.counter = Counter()
        self.calibration = Calibration()
        self.linear = nn.Linear(6, 4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.calibration(self.counter(features)))


class NoParameters(nn.Module):
    """A model with neither parameters nor buffers (a fixed feature transform)."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature
        self.activation = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.activation(features) / self.temperature, dim=-1)


class SharedLayers(nn.Module):
    """One Linear applied twice under two names, and one buffer registered in two modules."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = self.first
        self.out = nn.Linear(6, 3)
        self.first_norm, self.second_norm = nn.Module(), nn.Module()
        scale = torch.linspace(1, 2, 6)
        self.first_norm.register_buffer("scale", scale)
        self.second_norm.register_buffer("scale", scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(features)) * self.first_norm.scale
        return self.out(torch.relu(self.second(hidden)) * self.second_norm.scale)


class VersionedLinear(nn.Linear):
    """A layer whose stored layout changed: version 1 state dicts held the weight transposed.

    Loading without the module version (as if saved by version 1) transposes the weight: a rebuild that
    drops `state_dict()._metadata` gives another model.
    """

    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if local_metadata.get("version", 1) < 2 and prefix + "weight" in state_dict:
            state_dict[prefix + "weight"] = state_dict[prefix + "weight"].t()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class Versioned(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = VersionedLinear(6, 6)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer(features)


class MixedPrecisionMLP(nn.Module):
    """An MLP with LayerNorm, cast as a whole to fp16 or bf16 after construction."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class DriftingLinear(nn.Linear):
    """A layer whose load hook changes the values it is given: rebuilding it gives other weights than were saved."""

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        if prefix + "weight" in state_dict:
            state_dict[prefix + "weight"] = state_dict[prefix + "weight"] + 1
        super()._load_from_state_dict(state_dict, prefix, *args)


class DriftingCounter(Counter):
    """A counter whose set_extra_state counts the load as a step: rebuilding it gives another extra state."""

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.steps += 1


# Every dtype torch.save accepts (the sub-byte int1..7 / uint1..7 it refuses).
STORABLE_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex128, torch.complex64, torch.complex32,
    torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
    torch.float4_e2m1fn_x2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32,
    torch.uint16, torch.uint8, torch.bool, torch.bits8, torch.bits16, torch.bits1x8, torch.bits2x4, torch.bits4x2,
]


class EveryDtype(nn.Module):
    """One buffer of every dtype torch.save accepts (a 3x5 tensor each), and a float parameter."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(5))
        for index, dtype in enumerate(STORABLE_DTYPES):
            self.register_buffer(f"buffer_{index}", torch.zeros(3, 5, dtype=dtype))

    def randomize(self, seed: int) -> "EveryDtype":
        """Give every buffer random bit patterns (NaNs, infinities and denormals included; bools 0 or 1, as any
        other byte in a bool is undefined behaviour for torch)."""
        generator = torch.Generator().manual_seed(seed)
        for buffer in self.buffers():
            raw = buffer.view(torch.uint8)
            high = 2 if buffer.dtype == torch.bool else 256
            raw.copy_(torch.randint(0, high, raw.shape, dtype=torch.uint8, generator=generator))
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.weight


def tiny_gpt2(layers: int = 2, width: int = 16, vocab: int = VOCAB):
    """transformers' GPT2LMHeadModel from a tiny config (no download; embeddings tied to the LM head)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_head=2, n_embd=width, vocab_size=vocab, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


def tiny_bert(layers: int = 2, width: int = 16, vocab: int = VOCAB):
    """transformers' BertModel from a tiny config (no download)."""
    from transformers import BertConfig, BertModel
    return BertModel(BertConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=2,
                                intermediate_size=32, vocab_size=vocab, max_position_embeddings=16))


def tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))


def features(seed: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(seed))


def sequences(seed: int, width: int = 6) -> torch.Tensor:
    return torch.randn(2, 5, width, generator=torch.Generator().manual_seed(seed))


# name -> function of a seed that gives an input batch the model takes
INPUTS: dict[str, Callable[[int], torch.Tensor]] = {
    "tokens": tokens, "features": features, "sequences": sequences,
    "encoder_sequences": lambda seed: sequences(seed, width=16),
}


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, a tuple, or a transformers ModelOutput), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [tensor for item in output for tensor in output_tensors(item)]
    return []


def model_input(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """`batch` cast to the model's floating dtype (fp16, bf16, fp64 models take inputs of their own dtype)."""
    dtype = next((parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()), None)
    return batch.to(dtype) if dtype is not None and batch.is_floating_point() else batch


def loss_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return sum(tensor.float().square().mean() for tensor in output_tensors(model(model_input(model, batch))))


class ZooTrainService(ImageClassificationTrainService):
    """Trains any zoo model for a few steps on seeded inputs with the stored SGD optimizer."""

    def train(self, model: nn.Module, inputs: str = "features", steps: int = 2, seed: int = 0) -> None:
        optimizer = self._optimizer(model)
        model.train()
        for step in itertools.islice(itertools.count(seed), steps):
            optimizer.zero_grad()
            loss_of(model, INPUTS[inputs](step)).backward()
            optimizer.step()


class ZooTrainWrapper(StateDictRestorableObjectWrapper):
    """Restores ZooTrainService with its optimizer (rebuilt on the recovered model's parameters)."""

    def restore_instance(self, file_pers_service: FilePersistenceService,
                         dict_pers_service: DictPersistenceService, restore_root: str) -> None:
        optimizer = self.load_state_obj(OPTIMIZER, StateFileRestorableObjectWrapper, file_pers_service,
                                        dict_pers_service, restore_root)
        self.instance = create_object(code=self.code.path, class_name=self.class_name)
        self.instance.state_objs = {OPTIMIZER: optimizer}


def zoo_train_wrapper(model: nn.Module, lr: float = 0.01, momentum: float = 0.9) -> ZooTrainWrapper:
    """A live ZooTrainService for `model`, wrapped for `add_prov_data`."""
    service = ZooTrainService()
    service.state_objs = {OPTIMIZER: StateFileRestorableObjectWrapper(
        init_args={"lr": lr, "momentum": momentum}, init_ref_type_args=["params"],
        instance=SGDOptimizer(model.parameters(), lr=lr, momentum=momentum))}
    return ZooTrainWrapper(instance=service)
