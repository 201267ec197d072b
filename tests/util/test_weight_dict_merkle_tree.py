"""WeightDictMerkleTree: node structure, equality, diff, serialisation and integrity."""

import copy

import blake3
import pytest
import torch

from mmlib.errors import IntegrityError
from mmlib.models import MobileNetV2
from mmlib.util.weight_dict_merkle_tree import (HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH, LAYERS, LEFT, OTHER, RIGHT,
                                                THIS, WeightDictMerkleTree)


def _state_dict():
    return {f"layer{i}.weight": torch.full((3, 3), float(i)) for i in range(5)}


def _layers(count: int) -> dict:
    return {f"layer{i}": torch.full((2, 2), float(i)) for i in range(1, count + 1)}


def _first_leaf(python_dict: dict) -> dict:
    node = python_dict
    while LEFT in node:
        node = node[LEFT]
    return node


def test_a_tree_is_its_root_node_built_from_nodes_like_the_original():
    tree = WeightDictMerkleTree.from_state_dict(_layers(2))
    assert isinstance(tree.left, WeightDictMerkleTree) and isinstance(tree.right, WeightDictMerkleTree)
    assert (tree.left.layer_key, tree.right.layer_key) == ("layer1", "layer2")
    leaves = [WeightDictMerkleTree(hash_value=leaf.hash_value, layer_key=leaf.layer_key,
                                   layer_weights_hash=leaf.layer_weights_hash) for leaf in (tree.left, tree.right)]
    by_hand = WeightDictMerkleTree(hash_value=tree.hash_value, left=leaves[0], right=leaves[1])
    assert by_hand == tree and by_hand.check_integrity()
    assert by_hand.to_python_dict() == tree.to_python_dict()
    assert tree.get_all_leaves() == leaves


def test_equal_weights_give_equal_trees_and_an_empty_diff():
    tree1 = WeightDictMerkleTree.from_state_dict(_state_dict())
    tree2 = WeightDictMerkleTree.from_state_dict(_state_dict())
    assert tree1 == tree2 and hash(tree1) == hash(tree2)
    assert tree1.diff(tree2) == (set(), {THIS: set(), OTHER: set()})


def test_diff_with_anything_but_a_tree_is_a_type_error_that_says_how_to_build_one():
    with pytest.raises(TypeError, match="diff compares two WeightDictMerkleTrees, got dict; build one with "
                                        "WeightDictMerkleTree.from_state_dict"):
        WeightDictMerkleTree.from_state_dict(_layers(2)).diff({})


def test_diff_names_exactly_the_changed_layers():
    changed = _state_dict()
    changed["layer3.weight"] = changed["layer3.weight"] + 1
    tree, other = WeightDictMerkleTree.from_state_dict(_state_dict()), WeightDictMerkleTree.from_state_dict(changed)
    assert tree != other
    assert tree.diff(other) == ({"layer3.weight"}, {THIS: set(), OTHER: set()})


def test_diff_of_layers_1_to_5_against_1_to_7_with_layer_1_changed():
    seven = _layers(7)
    seven["layer1"] = seven["layer1"] + 1
    tree, other = WeightDictMerkleTree.from_state_dict(_layers(5)), WeightDictMerkleTree.from_state_dict(seven)
    assert tree.diff(other) == ({"layer1"}, {THIS: set(), OTHER: {"layer6", "layer7"}})
    assert other.diff(tree) == ({"layer1"}, {THIS: {"layer6", "layer7"}, OTHER: set()})


def test_added_layer_appears_only_on_its_side():
    bigger = dict(_state_dict(), extra=torch.zeros(2))
    diff = WeightDictMerkleTree.from_state_dict(_state_dict()).diff(WeightDictMerkleTree.from_state_dict(bigger))
    assert diff == (set(), {THIS: set(), OTHER: {"extra"}})


def test_diff_against_the_empty_tree_lists_every_layer_on_one_side():
    tree, empty = WeightDictMerkleTree.from_state_dict(_layers(3)), WeightDictMerkleTree.from_state_dict({})
    assert tree.diff(empty) == (set(), {THIS: {"layer1", "layer2", "layer3"}, OTHER: set()})


def test_python_dict_round_trip_uses_the_public_keys():
    tree = WeightDictMerkleTree.from_state_dict(MobileNetV2().state_dict())
    python_dict = tree.to_python_dict()
    assert set(python_dict) == {HASH_VALUE, LEFT, RIGHT}
    assert set(_first_leaf(python_dict)) == {HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH}
    restored = WeightDictMerkleTree.from_python_dict(python_dict)
    assert restored == tree and restored.check_integrity()
    assert [leaf.layer_key for leaf in restored.get_all_leaves()] == list(MobileNetV2().state_dict())
    assert restored.layer_hashes() == tree.layer_hashes()


def test_a_tampered_node_fails_the_integrity_check():
    tree = WeightDictMerkleTree.from_state_dict(_state_dict())
    tree.get_all_leaves()[0].layer_weights_hash = "0" * 64
    assert not tree.check_integrity()


@pytest.mark.parametrize("field", [LAYER_KEY, LAYER_WEIGHT_HASH, HASH_VALUE])
def test_an_edited_leaf_is_refused_when_loading(field):
    python_dict = WeightDictMerkleTree.from_state_dict(_state_dict()).to_python_dict()
    leaf = _first_leaf(python_dict)
    leaf[field] = "layer9.weight" if field == LAYER_KEY else "0" * 64
    where = "layer9.weight" if field == LAYER_KEY else "layer0.weight"
    with pytest.raises(IntegrityError, match=f"does not add up at layer '{where}': its hash is not the hash of its "
                                             "layer key and weights; .*restore the store from a backup"):
        WeightDictMerkleTree.from_python_dict(python_dict)


@pytest.mark.parametrize("path", [(), (LEFT,), (RIGHT, LEFT)], ids=["root", "left", "right.left"])
def test_an_edited_inner_or_root_hash_is_refused_when_loading(path):
    python_dict = WeightDictMerkleTree.from_state_dict(_state_dict()).to_python_dict()
    node = python_dict
    for side in path:
        node = node[side]
    node[HASH_VALUE] = "f" * 64
    where = ".".join(("root",) + path)
    with pytest.raises(IntegrityError, match=f"does not add up at the node at {where}: its hash is not the hash of "
                                             "its children"):
        WeightDictMerkleTree.from_python_dict(python_dict)


def _rehashed(node: dict) -> WeightDictMerkleTree:
    """The tree a stored dict describes, every hash recomputed from the leaves up (what a forger would do)."""
    if LEFT not in node:
        leaf = WeightDictMerkleTree("", layer_key=node[LAYER_KEY], layer_weights_hash=node[LAYER_WEIGHT_HASH])
    else:
        leaf = WeightDictMerkleTree("", left=_rehashed(node[LEFT]),
                                    right=None if node[RIGHT] is None else _rehashed(node[RIGHT]))
    leaf.hash_value = leaf._expected_hash()
    return leaf


def test_a_tree_listing_one_layer_twice_is_refused_even_when_its_hashes_add_up():
    python_dict = WeightDictMerkleTree.from_state_dict(_layers(2)).to_python_dict()
    python_dict[RIGHT][LAYER_KEY] = python_dict[LEFT][LAYER_KEY]
    forged = _rehashed(python_dict).to_python_dict()
    with pytest.raises(IntegrityError, match="lists layer 'layer1' twice"):
        WeightDictMerkleTree.from_python_dict(forged)


def _malformed_dicts():
    valid = WeightDictMerkleTree.from_state_dict(_state_dict()).to_python_dict()
    without_right = copy.deepcopy(valid)
    del without_right[RIGHT]
    leaf_without_key = copy.deepcopy(valid)
    del _first_leaf(leaf_without_key)[LAYER_KEY]
    numeric_hash = copy.deepcopy(valid)
    _first_leaf(numeric_hash)[LAYER_WEIGHT_HASH] = 5
    list_child = dict(valid, **{LEFT: ["not", "a", "node"]})
    duplicate_leaf = dict(valid, **{RIGHT: copy.deepcopy(valid[LEFT])})
    return [None, "not a tree", [1, 2], {HASH_VALUE: 5}, {LEFT: {}}, without_right, leaf_without_key, numeric_hash,
            list_child, duplicate_leaf]


@pytest.mark.parametrize("python_dict", _malformed_dicts())
def test_a_malformed_dict_is_an_integrity_error_not_a_raw_key_or_type_error(python_dict):
    with pytest.raises(IntegrityError, match="Merkle tree"):
        WeightDictMerkleTree.from_python_dict(python_dict)


def test_json_extra_states_are_leaves_whose_values_count():
    state = dict(_state_dict(), **{"counter._extra_state": {"steps": 3}})
    changed = dict(state, **{"counter._extra_state": {"steps": 4}})
    tree, other = WeightDictMerkleTree.from_state_dict(state), WeightDictMerkleTree.from_state_dict(changed)
    assert tree != other
    assert tree.diff(other) == ({"counter._extra_state"}, {THIS: set(), OTHER: set()})


def test_tied_tensors_are_hashed_once_and_listed_under_each_name():
    shared = torch.ones(4)
    tree = WeightDictMerkleTree.from_state_dict({"encoder.weight": shared, "decoder.weight": shared})
    hashes = tree.layer_hashes()
    assert list(hashes) == ["encoder.weight", "decoder.weight"] and len(set(hashes.values())) == 1


def test_an_empty_state_dict_has_a_tree_that_survives_a_round_trip():
    tree = WeightDictMerkleTree.from_state_dict({})
    restored = WeightDictMerkleTree.from_python_dict(tree.to_python_dict())
    assert tree.to_python_dict() == {} and restored == tree and restored.check_integrity()
    assert tree.get_all_leaves() == [] and tree.layer_hashes() == {}


_ODD_OPERANDS = {
    "None": lambda: None,
    "a dict": dict,
    "a string": lambda: "abc",
    "an int": lambda: 5,
    "an empty node": WeightDictMerkleTree,
    "an int hash": lambda: WeightDictMerkleTree(hash_value=5),
    "a leaf without hashes": lambda: WeightDictMerkleTree(layer_key="layer1"),
    "another hash": lambda: WeightDictMerkleTree(hash_value="0" * 64),
}


@pytest.mark.parametrize("make_odd", _ODD_OPERANDS.values(), ids=_ODD_OPERANDS.keys())
def test_equality_with_anything_but_a_tree_of_the_same_root_hash_is_false(make_odd):
    tree, odd = WeightDictMerkleTree.from_state_dict(_layers(3)), make_odd()
    assert tree.__eq__(odd) is False and odd != tree


def test_two_empty_trees_are_equal_and_hash_alike():
    empty = WeightDictMerkleTree.from_state_dict({})
    assert empty == WeightDictMerkleTree() and hash(empty) == hash(WeightDictMerkleTree())
    assert empty.__eq__({}) is False and empty != WeightDictMerkleTree(hash_value=5)


def test_equality_of_nodes_built_from_odd_arguments_never_raises():
    odd_nodes = [WeightDictMerkleTree(hash_value=5), WeightDictMerkleTree(hash_value=torch.zeros(3)),
                 WeightDictMerkleTree(layer_key="layer1"), WeightDictMerkleTree(left=WeightDictMerkleTree())]
    real = WeightDictMerkleTree.from_state_dict(_layers(1))
    for node in odd_nodes:
        assert node != real and real != node and isinstance(hash(node), int)
        assert all(isinstance(node == other, bool) for other in odd_nodes)
    assert WeightDictMerkleTree(hash_value="a" * 64) == WeightDictMerkleTree(hash_value="a" * 64)


@pytest.mark.parametrize("count", [0, 1, 2, 5, 8])
def test_the_stored_document_lists_leaves_only_and_rebuilds_the_same_tree(count):
    tree = WeightDictMerkleTree.from_state_dict(_layers(count))
    document = tree.to_document()
    if count:
        assert document == {HASH_VALUE: tree.hash_value, LAYERS: [[key, value] for key, value in
                                                                 tree.layer_hashes().items()]}
    restored = WeightDictMerkleTree.from_document(document)
    assert restored == tree and restored.check_integrity()
    assert restored.to_python_dict() == tree.to_python_dict()


def test_documents_of_stores_written_before_the_compact_form_still_load():
    tree = WeightDictMerkleTree.from_state_dict(_state_dict())
    assert WeightDictMerkleTree.from_document(tree.to_python_dict()) == tree


def _edited_documents(document: dict):
    """Every way the compact document can be edited or damaged that loading must refuse."""
    layers = document[LAYERS]
    yield "a layer's hash changed", {**document, LAYERS: [[layers[0][0], "0" * 64]] + layers[1:]}
    yield "a layer renamed", {**document, LAYERS: [["renamed", layers[0][1]]] + layers[1:]}
    yield "two layers swapped", {**document, LAYERS: [layers[1], layers[0]] + layers[2:]}
    yield "a layer dropped", {**document, LAYERS: layers[1:]}
    yield "a layer listed twice", {**document, LAYERS: layers + [layers[0]]}
    yield "the root hash changed", {**document, HASH_VALUE: "0" * 64}
    yield "no root hash", {LAYERS: layers}
    yield "an extra key", {**document, "note": "x"}
    yield "no layers", {**document, LAYERS: []}
    yield "layers not a list", {**document, LAYERS: dict(layers)}
    yield "a pair too long", {**document, LAYERS: [layers[0] + ["x"]] + layers[1:]}
    yield "a hash not a string", {**document, LAYERS: [[layers[0][0], 5]] + layers[1:]}


def test_an_edited_or_damaged_document_raises_integrity_error():
    document = WeightDictMerkleTree.from_state_dict(_state_dict()).to_document()
    for what, edited in _edited_documents(document):
        with pytest.raises(IntegrityError):
            WeightDictMerkleTree.from_document(edited)
            pytest.fail(f"{what}: loaded without an error")


def test_repr_shows_the_layer_of_a_leaf_and_a_short_root_hash():
    tree = WeightDictMerkleTree.from_state_dict(_layers(2))
    assert repr(tree) == f"WeightDictMerkleTree(hash_value='{tree.hash_value[:12]}...')"
    assert repr(tree.left) == f"WeightDictMerkleTree(layer_key='layer1', hash_value='{tree.left.hash_value[:12]}...')"
    assert repr(WeightDictMerkleTree()) == "WeightDictMerkleTree()"
    assert repr(WeightDictMerkleTree(layer_key="x")) == "WeightDictMerkleTree(layer_key='x', hash_value=None)"



def _node_hash(*parts: str) -> str:
    """A node's hash recomputed independently: BLAKE3 of its parts, each followed by a zero byte."""
    return blake3.blake3(b"".join(part.encode() + b"\0" for part in parts)).hexdigest()


def test_node_hashes_are_blake3_of_their_parts_so_stored_trees_stay_checkable():
    """A leaf hashes its key and tensor hash, an inner node its children's hashes, and the last node of an odd
    level its one child and an empty string."""
    layers = {"a": "1" * 64, "b": "2" * 64, "c": "3" * 64}
    leaves = [_node_hash(key, value) for key, value in layers.items()]
    root = _node_hash(_node_hash(leaves[0], leaves[1]), _node_hash(leaves[2], ""))
    assert WeightDictMerkleTree.from_layer_hashes(layers).hash_value == root


@pytest.mark.parametrize("side", [LEFT, RIGHT])
def test_a_stored_tree_as_deep_as_allowed_loads_on_either_side_and_a_deeper_one_is_refused(side):
    def chain(depth: int) -> dict:
        """A node `depth` levels above its deepest leaf, each level one more leaf on the other side."""
        def leaf(key: str) -> dict:
            return {HASH_VALUE: _node_hash(key, "0" * 64), LAYER_KEY: key, LAYER_WEIGHT_HASH: "0" * 64}

        node = leaf("deepest")
        for level in range(depth):
            other = leaf(f"layer{level}")
            pair = {LEFT: node, RIGHT: other} if side == LEFT else {LEFT: other, RIGHT: node}
            node = {**pair, HASH_VALUE: _node_hash(pair[LEFT][HASH_VALUE], pair[RIGHT][HASH_VALUE])}
        return node

    assert WeightDictMerkleTree.from_python_dict(chain(64)).check_integrity()
    with pytest.raises(IntegrityError, match="nested deeper than 64 levels"):
        WeightDictMerkleTree.from_python_dict(chain(65))
