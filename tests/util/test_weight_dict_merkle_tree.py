"""WeightDictMerkleTree: equality, diff, serialisation and integrity."""

import torch

from mmlib.models import MobileNetV2
from mmlib.util.weight_dict_merkle_tree import (HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH, LEFT, OTHER, RIGHT, THIS,
                                                WeightDictMerkleTree)


def _state_dict():
    return {f"layer{i}.weight": torch.full((3, 3), float(i)) for i in range(5)}


def test_equal_weights_give_equal_trees_and_an_empty_diff():
    tree1 = WeightDictMerkleTree.from_state_dict(_state_dict())
    tree2 = WeightDictMerkleTree.from_state_dict(_state_dict())
    assert tree1 == tree2
    diff_weights, diff_nodes = tree1.diff(tree2)
    assert diff_weights == {THIS: set(), OTHER: set()} and diff_nodes == {THIS: set(), OTHER: set()}


def test_diff_names_exactly_the_changed_layers():
    changed = _state_dict()
    changed["layer3.weight"] = changed["layer3.weight"] + 1
    tree, other = WeightDictMerkleTree.from_state_dict(_state_dict()), WeightDictMerkleTree.from_state_dict(changed)
    assert tree != other
    diff_weights, diff_nodes = tree.diff(other)
    assert diff_weights == {THIS: {"layer3.weight"}, OTHER: {"layer3.weight"}}
    assert {node.layer_key for node in diff_nodes[OTHER]} == {"layer3.weight"}


def test_added_layer_appears_only_on_its_side():
    bigger = dict(_state_dict(), extra=torch.zeros(2))
    diff_weights, _ = WeightDictMerkleTree.from_state_dict(_state_dict()).diff(
        WeightDictMerkleTree.from_state_dict(bigger))
    assert diff_weights == {THIS: set(), OTHER: {"extra"}}


def test_python_dict_round_trip_uses_the_public_keys():
    tree = WeightDictMerkleTree.from_state_dict(MobileNetV2().state_dict())
    python_dict = tree.to_python_dict()
    assert set(python_dict) == {HASH_VALUE, LEFT, RIGHT}
    leaf = python_dict
    while LEFT in leaf:
        leaf = leaf[LEFT]
    assert set(leaf) == {HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH}
    restored = WeightDictMerkleTree.from_python_dict(python_dict)
    assert restored == tree and restored.check_integrity()
    assert [leaf.layer_key for leaf in restored.get_all_leaves()] == list(MobileNetV2().state_dict())


def test_tampered_leaf_fails_the_integrity_check():
    python_dict = WeightDictMerkleTree.from_state_dict(_state_dict()).to_python_dict()
    node = python_dict
    while LEFT in node:
        node = node[LEFT]
    node[LAYER_WEIGHT_HASH] = "0" * 64
    assert not WeightDictMerkleTree.from_python_dict(python_dict).check_integrity()


def test_json_extra_states_are_leaves_whose_values_count():
    state = dict(_state_dict(), **{"counter._extra_state": {"steps": 3}})
    changed = dict(state, **{"counter._extra_state": {"steps": 4}})
    tree, other = WeightDictMerkleTree.from_state_dict(state), WeightDictMerkleTree.from_state_dict(changed)
    assert tree != other
    assert tree.diff(other)[0] == {THIS: {"counter._extra_state"}, OTHER: {"counter._extra_state"}}


def test_an_empty_state_dict_has_a_tree_that_survives_a_round_trip():
    tree = WeightDictMerkleTree.from_state_dict({})
    restored = WeightDictMerkleTree.from_python_dict(tree.to_python_dict())
    assert tree.to_python_dict() == {} and restored == tree and restored.check_integrity()
