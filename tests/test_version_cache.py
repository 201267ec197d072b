"""VersionCache: the LRU cache of recently saved or recovered weight-update versions."""

import torch

from mmlib.approaches.update_format import Location
from mmlib.approaches.version_cache import VersionCache


def _remember(cache: VersionCache, model_id: str, keyframes=None) -> dict:
    """Cache a version of two tensors, one its own keyframe, with every value copied (as the paper's approach)."""
    state = {"own": torch.ones(2), "delta": torch.zeros(2)}
    locations = {"own": Location(model_id, 0, model_id), "delta": Location(model_id, 1, "keyframe-model")}
    cache.remember(model_id, state, locations, "snapshot", keyframes or {}, all_values=True)
    return state


def test_the_least_recently_used_version_is_dropped_first():
    cache = VersionCache(2)
    for model_id in ("a", "b"):
        _remember(cache, model_id)
    assert cache.get("a") is not None  # now b is the least recently used
    _remember(cache, "c")
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (True, None, True)
    _remember(cache, "a")  # remembering again also makes it the most recent
    _remember(cache, "d")
    assert (cache.get("c"), cache.get("a") is not None) == (None, True)
    assert repr(cache) == "VersionCache(capacity=2, cached=['d', 'a'])"  # the get above used a last
    cache.clear()
    assert (cache.get("a"), cache.get("d")) == (None, None)


def test_a_capacity_below_one_keeps_nothing():
    for capacity in (0, -1):
        cache = VersionCache(capacity)
        _remember(cache, "a")
        assert cache.get("a") is None


def test_cached_tensors_are_copies_and_own_full_copies_are_known_keyframes():
    cache = VersionCache(1)
    keyframe = torch.full((2,), 7.0)
    state = _remember(cache, "a", {"delta": keyframe, "unrelated": torch.ones(1)})
    state["own"].add_(1)  # training the model in place after the save
    version = cache.get("a")
    assert version is not None and version.snapshot_id == "snapshot"
    assert torch.equal(version.state["own"], torch.ones(2)) and torch.equal(version.state["delta"], torch.zeros(2))
    assert version.locations["delta"] == Location("a", 1, "keyframe-model")
    assert version.keyframes.keys() == {"own", "delta"}
    assert version.keyframes["own"] is version.state["own"] and version.keyframes["delta"] is keyframe
    _remember(cache, "b")  # no keyframe known for a delta: none recorded
    assert cache.get("b").keyframes.keys() == {"own"}


def test_a_cached_version_copies_the_tensors_later_deltas_are_of_and_describes_the_others():
    cache = VersionCache(2)
    state = {"keyframe": torch.ones(3), "delta": torch.ones(2, 2, dtype=torch.float16)}
    locations = {"keyframe": Location("v", 0, "v"), "delta": Location("v", 1, "k")}
    cache.remember("v", state, locations, "s", {}, all_values=False)
    cache.remember("w", state, locations, "s", {}, all_values=True)
    for tensor in state.values():
        tensor.add_(1)  # training in place after the save
    described = cache.get("v")
    assert torch.equal(described.state["keyframe"], torch.ones(3))
    assert torch.equal(described.keyframes["keyframe"], torch.ones(3))
    delta = described.state["delta"]
    assert delta.is_meta and delta.dtype == torch.float16 and delta.shape == (2, 2)
    assert all(torch.equal(tensor, torch.ones_like(tensor)) for tensor in cache.get("w").state.values())
