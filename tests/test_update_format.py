"""The update blob format: a header that names a model outside its model list is refused."""

import json
import struct

import pytest
import zstandard

from mmlib.approaches.update_format import Location, read_update
from mmlib.errors import IntegrityError


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
