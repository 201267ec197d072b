"""The update blob format: payloads on 8-byte boundaries, empty payloads, and headers that are refused."""

import json
import struct

import pytest
import zstandard

import numpy as np
import torch

from mmlib.approaches.update_format import Location, StoredTensor, read_update, write_update
from mmlib.errors import IntegrityError
from mmlib.util.delta import DeltaCodec


def _blob(models: list, src) -> bytes:
    """An update blob (no payloads) whose only tensor lives in model `models[src]`."""
    header = {"format": 3, "snapshot": "snap", "models": models,
              "tensors": {"w": {"src": src, "depth": 0, "keyframe": src}}}
    encoded = zstandard.ZstdCompressor().compress(json.dumps(header).encode())
    return b"MMLIBUPD" + struct.pack("<Q", len(encoded)) + encoded + b"\0" * (-len(encoded) % 8)


def test_a_header_naming_a_listed_model_is_read():
    assert read_update(_blob(["holder"], 0), "model").locations == {"w": Location("holder", 0, "holder")}


@pytest.mark.parametrize("models, src", [(["holder"], -1), (["holder"], 1), (["holder"], "0"), ([5], 0)],
                         ids=["negative-index", "past-the-end", "not-an-int", "not-a-model-id"])
def test_a_header_naming_a_model_outside_its_list_is_an_integrity_error(models, src):
    with pytest.raises(IntegrityError, match="not a valid mmlib weights update"):
        read_update(_blob(models, src), "model")


class _Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data) -> None:
        self.data += bytes(data)


def _written(stored: dict) -> bytearray:
    sink = _Sink()
    write_update(sink, "snap", list(stored), {}, stored)
    return sink.data


def test_every_payload_starts_on_an_8_byte_boundary_and_empty_ones_round_trip():
    plain = DeltaCodec()
    tensors = {"odd": torch.arange(3, dtype=torch.uint8), "empty": torch.zeros(0), "wide": torch.arange(5.0).double(),
               "seven": torch.ones(7, dtype=torch.uint8)}
    stored = {key: StoredTensor(plain, None, 0, tensor.dtype, tuple(tensor.shape), plain.encode(tensor))
              for key, tensor in tensors.items()}
    blob = _written(stored)
    index = read_update(blob, "model")
    start = np.frombuffer(blob, dtype=np.uint8).ctypes.data
    for key, tensor in tensors.items():
        payload = np.frombuffer(index.stored[key].payload, dtype=np.uint8)
        assert payload.tobytes() == plain.encode(tensor).tobytes()
        assert tensor.numel() == 0 or (payload.ctypes.data - start) % 8 == 0, f"{key} is not 8-byte aligned"


@pytest.mark.parametrize("damage, message", [
    (lambda blob: b"NOTMMLIB" + blob[8:], "it does not start with the update marker"),
    (lambda blob: blob[:16] + b"\xff" * (len(blob) - 16), "the update blob of model m1 is not a valid mmlib weights "
                                                           r"update \(.*\); run `mmlib verify`"),
], ids=["marker", "header"])
def test_a_damaged_blob_says_what_is_wrong(damage, message):
    blob = bytes(_written({}))
    with pytest.raises(IntegrityError, match=message):
        read_update(damage(blob), "m1")


@pytest.mark.parametrize("header, message", [
    ({"format": 9, "snapshot": "snap", "models": [], "tensors": {}}, r"format 9 is not one of the supported formats"),
    ({"format": 3, "snapshot": None, "models": [], "tensors": {}}, "it names no snapshot model"),
])
def test_an_unreadable_header_says_why(header, message):
    encoded = zstandard.ZstdCompressor().compress(json.dumps(header).encode())
    blob = b"MMLIBUPD" + struct.pack("<Q", len(encoded)) + encoded + b"\0" * (-len(encoded) % 8)
    with pytest.raises(IntegrityError, match=message):
        read_update(blob, "model")

