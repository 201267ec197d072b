"""Delta codecs: every codec round-trips every dtype bit-exactly, and deltas of small changes are small."""

import pytest
import torch

from mmlib.errors import IncompatibleModelError, IntegrityError
from mmlib.util.delta import DEFAULT_CODEC, DeltaCodec, UnknownCodecError, decode_chain

CODECS = ["plain", "plain-shuffle-zstd3", "xor", "xor-shuffle-zstd1", "xor-zstd3", "sub", "sub-shuffle-zstd1",
          "sub-zigzag", "sub-zigzag-shuffle-zstd1", "sub-zigzag-zstd9"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.complex64]


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_pair(dtype: torch.dtype, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """A base tensor and a slightly changed copy, with NaN, signed zero, inf and denormals among floats."""
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        base = torch.rand(shape, generator=generator) > 0.5
        return base, base ^ (torch.rand(shape, generator=generator) > 0.9)
    if dtype.is_floating_point or dtype.is_complex:
        base = torch.randn(shape, generator=generator, dtype=dtype)
        new = base + torch.randn(shape, generator=generator, dtype=dtype) * 1e-3
        if new.numel() >= 4:
            flat = new.view(-1)
            flat[:4] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40]).to(dtype)
        return base, new
    base = torch.randint(0, 100, shape, generator=generator, dtype=dtype)
    return base, base + torch.randint(-2, 3, shape, generator=generator).to(dtype)


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4, 5)], ids=str)
def test_round_trip_is_bit_exact(name, dtype, shape):
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(dtype, shape)
    decoded = codec.decode(codec.encode(new, base), dtype, shape, base)
    assert decoded.dtype == dtype and tuple(decoded.shape) == shape
    assert _bits(decoded) == _bits(new)
    expected = _bits(new)
    decoded.logical_not_() if dtype == torch.bool else decoded.add_(1)
    assert _bits(new) == expected, "the decoded tensor must own its memory"


@pytest.mark.parametrize("name", CODECS)
def test_non_contiguous_tensors_round_trip(name):
    codec = DeltaCodec.from_name(name)
    base, new = torch.randn(8, 6).t(), torch.randn(8, 6).t()
    assert _bits(codec.decode(codec.encode(new, base), new.dtype, new.shape, base)) == _bits(new)


def test_a_chain_of_deltas_decodes_to_its_last_version():
    versions = [torch.randn(1000)]
    for _ in range(5):
        versions.append(versions[-1] + torch.randn(1000) * 1e-4)
    steps = [(DeltaCodec(), DeltaCodec().encode(versions[0]))]
    for codec_name, (old, new) in zip(["xor-shuffle-zstd1", DEFAULT_CODEC] * 3, zip(versions, versions[1:])):
        codec = DeltaCodec.from_name(codec_name)
        steps.append((codec, codec.encode(new, old)))
    assert _bits(decode_chain(None, steps, torch.float32, (1000,))) == _bits(versions[-1])
    assert _bits(decode_chain(versions[0], steps[1:], torch.float32, (1000,))) == _bits(versions[-1])


@pytest.mark.parametrize("name", ["xor-shuffle-zstd1", "sub-zigzag-shuffle-zstd1", "xor-zstd3"])
def test_delta_of_a_small_change_is_smaller_than_the_plain_tensor(name):
    base = torch.randn(100_000)
    new = base + base * torch.randn(100_000) * 1e-5
    delta = len(DeltaCodec.from_name(name).encode(new, base))
    plain = len(DeltaCodec.from_name("plain-shuffle-zstd1").encode(new))
    assert delta < 0.75 * plain
    assert len(DeltaCodec.from_name(name).encode(base, base)) < 1000


def test_names_round_trip_and_bad_names_are_rejected():
    for name in CODECS:
        assert DeltaCodec.from_name(name).name == name
    assert not DeltaCodec.from_name("plain").needs_base and DeltaCodec.from_name("xor").needs_base
    for bad in ["zip", "xor-zstd", "xor-zstd99", "plain-zigzag", "xor-zigzag", "sub-shuffle-zigzag", "", None]:
        with pytest.raises(UnknownCodecError) as info:
            DeltaCodec.from_name(bad)
        assert isinstance(info.value, ValueError) and DEFAULT_CODEC in str(info.value)


def test_damaged_or_inconsistent_payloads_raise_integrity_error():
    codec = DeltaCodec.from_name(DEFAULT_CODEC)
    base, new = torch.randn(100), torch.randn(100)
    with pytest.raises(IntegrityError):
        codec.decode(codec.encode(new, base)[:10], torch.float32, (100,), base)
    with pytest.raises(IntegrityError):
        DeltaCodec.from_name("xor").decode(b"\0" * 12, torch.float32, (100,), base)
    with pytest.raises(IntegrityError):
        codec.decode(codec.encode(new, base), torch.float32, (100,), None)
    with pytest.raises(IntegrityError):
        codec.decode(codec.encode(new, base), torch.float32, (10, 10), base)


def test_encoding_against_a_base_of_another_shape_is_refused():
    with pytest.raises(IncompatibleModelError, match="plain"):
        DeltaCodec.from_name("xor").encode(torch.randn(4), torch.randn(5))
