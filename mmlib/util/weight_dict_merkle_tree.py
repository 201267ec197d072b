"""A Merkle tree over the per-tensor hashes of a state dict: finds changed layers without loading weights.

As in the original MMlib, a tree is its root node: every node is a `WeightDictMerkleTree`. A leaf holds one
state dict entry (`layer_key`, `layer_weights_hash`), an inner node its `left` and `right` children.
"""

from typing import Any, Mapping, Optional

import torch

from mmlib.errors import IntegrityError
from mmlib.util.concurrency import parallel_map
from mmlib.util.hash import json_value_hash, new_hasher, tensor_hash

THIS = "this"
OTHER = "other"
LEFT = "left"
RIGHT = "right"
LAYER_KEY = "layer_key"
HASH_VALUE = "hash_value"
LAYER_WEIGHT_HASH = "layer_weight_hash"
LAYERS = "layers"  # the compact stored form: the root hash and each leaf's key and tensor hash, in order

_LEAF_KEYS = frozenset({HASH_VALUE, LAYER_KEY, LAYER_WEIGHT_HASH})
_INNER_KEYS = frozenset({HASH_VALUE, LEFT, RIGHT})
# Trees built by `from_layer_hashes` are balanced, so 64 levels hold 2**64 leaves; deeper dicts are not trees.
_MAX_DEPTH = 64
_EMPTY_TREE = object()
_FIX_HINT = ("the stored weight hashes were edited or damaged; restore the store from a backup or save the model "
             "again")


def _combine(*parts: str) -> str:
    """The hash of a node from its parts (a leaf's key and tensor hash, or its children's hashes)."""
    hasher = new_hasher()
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


class WeightDictMerkleTree:
    """A node, and the tree below it, of a Merkle tree whose leaves are a state dict's entries in key order.

    Equal root hashes mean equal weights. The tree of an empty state dict is a node with no field set.
    """

    def __init__(self, hash_value: Optional[str] = None, left: Optional["WeightDictMerkleTree"] = None,
                 right: Optional["WeightDictMerkleTree"] = None, layer_key: Optional[str] = None,
                 layer_weights_hash: Optional[str] = None):
        self.hash_value = hash_value
        self.left = left
        self.right = right
        self.layer_key = layer_key
        self.layer_weights_hash = layer_weights_hash

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> "WeightDictMerkleTree":
        """Hash every entry (a tensor, or a JSON extra state) and build the tree; a tensor object listed under
        several names (tied weights) is hashed once. Tensors are hashed on all cores (BLAKE3 releases the GIL)."""
        distinct = {id(value): value for value in state_dict.values() if isinstance(value, torch.Tensor)}
        known = dict(zip(distinct, parallel_map(tensor_hash, distinct.values(), size=lambda tensor: tensor.nbytes)))
        return cls.from_layer_hashes({key: known[id(value)] if isinstance(value, torch.Tensor)
                                      else json_value_hash(value) for key, value in state_dict.items()})

    @classmethod
    def from_layer_hashes(cls, layer_hashes: Mapping[str, str]) -> "WeightDictMerkleTree":
        """Build the tree from precomputed per-entry hashes, pairing neighbours level by level."""
        level = [cls._leaf(key, weights_hash) for key, weights_hash in layer_hashes.items()]
        if not level:
            return cls()
        while len(level) > 1:
            level = [cls._parent(level[i], level[i + 1] if i + 1 < len(level) else None)
                     for i in range(0, len(level), 2)]
        return level[0]

    @classmethod
    def _leaf(cls, layer_key: str, layer_weights_hash: str) -> "WeightDictMerkleTree":
        return cls(_combine(layer_key, layer_weights_hash), layer_key=layer_key,
                   layer_weights_hash=layer_weights_hash)

    @classmethod
    def _parent(cls, left: "WeightDictMerkleTree", right: Optional["WeightDictMerkleTree"]) -> "WeightDictMerkleTree":
        parent = cls(left=left, right=right)
        parent.hash_value = parent._expected_hash()
        return parent

    def _is_inner(self) -> bool:
        return self.left is not None or self.right is not None

    def _is_empty(self) -> bool:
        """Whether this is the tree of an empty state dict (no field set)."""
        return (not self._is_inner() and self.hash_value is None and self.layer_key is None
                and self.layer_weights_hash is None)

    def _expected_hash(self) -> Optional[str]:
        """The hash this node must carry given its children (or its layer); None when the node is malformed."""
        if self._is_inner():
            if not isinstance(self.left, WeightDictMerkleTree) or not isinstance(self.left.hash_value, str):
                return None
            if self.right is None:
                return _combine(self.left.hash_value, "")
            if not isinstance(self.right, WeightDictMerkleTree) or not isinstance(self.right.hash_value, str):
                return None
            return _combine(self.left.hash_value, self.right.hash_value)
        if not isinstance(self.layer_key, str) or not isinstance(self.layer_weights_hash, str):
            return None
        return _combine(self.layer_key, self.layer_weights_hash)

    def to_python_dict(self) -> dict:
        """The tree as nested dicts with string keys (JSON/BSON friendly); `{}` for the tree of an empty state
        dict."""
        if self._is_empty():
            return {}
        if not self._is_inner():
            return {HASH_VALUE: self.hash_value, LAYER_KEY: self.layer_key, LAYER_WEIGHT_HASH: self.layer_weights_hash}
        return {HASH_VALUE: self.hash_value, LEFT: self.left.to_python_dict() if self.left else None,
                RIGHT: self.right.to_python_dict() if self.right else None}

    def to_document(self) -> dict:
        """The tree as model documents store it: the root hash and each leaf's key and tensor hash, in order.

        Inner nodes are left out (loading recomputes them), which makes it a third of `to_python_dict`'s size:
        for a ResNet-18, 12 kB of JSON instead of 38 kB, which matters when an update stores a few kilobytes of weights.
        """
        if self._is_empty():
            return {}
        return {HASH_VALUE: self.hash_value, LAYERS: [[key, value] for key, value in self.layer_hashes().items()]}

    @classmethod
    def from_document(cls, document: Any) -> "WeightDictMerkleTree":
        """Rebuild a tree from `to_document` output or, as stores written before it hold it, from
        `to_python_dict` output.

        Raises IntegrityError when the document is malformed, lists a layer twice, or its root hash is not the one
        its layers give.
        """
        if not isinstance(document, dict) or LAYERS not in document:
            return cls.from_python_dict(document)
        layers = document[LAYERS]
        if (document.keys() != {HASH_VALUE, LAYERS} or not isinstance(layers, list) or not layers
                or not all(isinstance(layer, list) and len(layer) == 2 and all(isinstance(part, str) for part in layer)
                           for layer in layers)):
            raise IntegrityError(f"a stored Merkle tree must hold {HASH_VALUE!r} and a non-empty list of [layer key, "
                                 f"weights hash] pairs under {LAYERS!r}; {_FIX_HINT}")
        layer_hashes = dict(layers)
        if len(layer_hashes) != len(layers):
            raise IntegrityError(f"the stored Merkle tree lists a layer twice; {_FIX_HINT}")
        tree = cls.from_layer_hashes(layer_hashes)
        if tree.hash_value != document[HASH_VALUE]:
            raise IntegrityError(f"the stored Merkle tree does not add up: its root hash is not the hash of its "
                                 f"layers; {_FIX_HINT}")
        return tree

    @classmethod
    def from_python_dict(cls, python_dict: dict) -> "WeightDictMerkleTree":
        """Rebuild a tree from `to_python_dict` output, recomputing every hash bottom-up.

        Raises IntegrityError when the dict is malformed or a layer key or hash was edited.
        """
        if not isinstance(python_dict, dict):
            raise IntegrityError(f"a stored Merkle tree must be a dict, got {type(python_dict).__name__}; "
                                 f"{_FIX_HINT}")
        if not python_dict:
            return cls()
        seen_keys: set[str] = set()
        return cls._checked_node(python_dict, "root", 0, seen_keys)

    @classmethod
    def _checked_node(cls, node: Any, path: str, depth: int, seen_keys: set[str]) -> "WeightDictMerkleTree":
        """The node stored at `path`, its children checked first; raises IntegrityError for anything amiss."""
        if depth > _MAX_DEPTH:
            raise IntegrityError(f"the stored Merkle tree is nested deeper than {_MAX_DEPTH} levels at {path}; "
                                 f"{_FIX_HINT}")
        if not isinstance(node, dict) or not isinstance(node.get(HASH_VALUE), str):
            raise IntegrityError(f"the stored Merkle tree node at {path} is not a dict with a string "
                                 f"{HASH_VALUE!r}; {_FIX_HINT}")
        if LEFT in node:
            if node.keys() != _INNER_KEYS:
                raise IntegrityError(f"the stored Merkle tree node at {path} has keys {sorted(node)}, an inner node "
                                     f"has {sorted(_INNER_KEYS)}; {_FIX_HINT}")
            left = cls._checked_node(node[LEFT], f"{path}.{LEFT}", depth + 1, seen_keys)
            right = None
            if node[RIGHT] is not None:
                right = cls._checked_node(node[RIGHT], f"{path}.{RIGHT}", depth + 1, seen_keys)
            tree = cls(node[HASH_VALUE], left=left, right=right)
        else:
            if node.keys() != _LEAF_KEYS or not isinstance(node[LAYER_KEY], str) \
                    or not isinstance(node[LAYER_WEIGHT_HASH], str):
                raise IntegrityError(f"the stored Merkle tree node at {path} is neither an inner node (keys "
                                     f"{sorted(_INNER_KEYS)}) nor a leaf (string values for {sorted(_LEAF_KEYS)}); "
                                     f"{_FIX_HINT}")
            if node[LAYER_KEY] in seen_keys:
                raise IntegrityError(f"the stored Merkle tree lists layer {node[LAYER_KEY]!r} twice; {_FIX_HINT}")
            seen_keys.add(node[LAYER_KEY])
            tree = cls(node[HASH_VALUE], layer_key=node[LAYER_KEY], layer_weights_hash=node[LAYER_WEIGHT_HASH])
        if tree.hash_value != tree._expected_hash():
            what = f"layer {tree.layer_key!r}" if tree.layer_key is not None else f"the node at {path}"
            raise IntegrityError(f"the stored Merkle tree does not add up at {what}: its hash is not the hash of "
                                 f"its {'children' if tree._is_inner() else 'layer key and weights'}; {_FIX_HINT}")
        return tree

    def get_all_leaves(self) -> list["WeightDictMerkleTree"]:
        """The leaves in key order (none for the tree of an empty state dict)."""
        leaves, stack = [], [] if self._is_empty() else [self]
        while stack:
            node = stack.pop()
            if node._is_inner():
                stack.extend(child for child in (node.right, node.left) if child is not None)
            else:
                leaves.append(node)
        return leaves

    def layer_hashes(self) -> dict[str, str]:
        """Layer key -> weights hash for every leaf; TypeError for a leaf that lacks either (not a built tree)."""
        hashes = {}
        for leaf in self.get_all_leaves():
            if leaf.layer_key is None or leaf.layer_weights_hash is None:
                raise TypeError(f"{leaf!r} is not a leaf of a built Merkle tree (it lacks a layer key or weights "
                                "hash); build trees with WeightDictMerkleTree.from_state_dict")
            hashes[leaf.layer_key] = leaf.layer_weights_hash
        return hashes

    def check_integrity(self) -> bool:
        """True when every node's hash matches its children (or its layer)."""
        stack = [] if self._is_empty() else [self]
        while stack:
            node = stack.pop()
            if not isinstance(node, WeightDictMerkleTree) or node.hash_value != node._expected_hash():
                return False
            stack.extend(child for child in (node.left, node.right) if child is not None)
        return True

    def diff(self, other: "WeightDictMerkleTree") -> tuple[set[str], dict[str, set[str]]]:
        """Where two trees differ: (layer keys in both with different weights, {THIS: keys only in self, OTHER:
        keys only in other}).

        Equal roots cost one comparison; otherwise the leaves' weights hashes are matched by layer key.
        """
        if not isinstance(other, WeightDictMerkleTree):
            raise TypeError(f"diff compares two WeightDictMerkleTrees, got {type(other).__name__}; build one with "
                            "WeightDictMerkleTree.from_state_dict")
        if self == other:
            return set(), {THIS: set(), OTHER: set()}
        mine, theirs = self.layer_hashes(), other.layer_hashes()
        diff_weights = {key for key in mine.keys() & theirs.keys() if mine[key] != theirs[key]}
        return diff_weights, {THIS: set(mine.keys() - theirs.keys()), OTHER: set(theirs.keys() - mine.keys())}

    def _root_identity(self) -> object:
        """What `==` compares: the root hash, a marker for the empty tree, or None for a node that is neither."""
        if isinstance(self.hash_value, str):
            return self.hash_value
        return _EMPTY_TREE if self._is_empty() else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightDictMerkleTree):
            return False
        identity = self._root_identity()
        return identity is not None and identity == other._root_identity()

    def __hash__(self) -> int:
        return hash(self._root_identity())

    def __repr__(self) -> str:
        if self._is_empty():
            return "WeightDictMerkleTree()"
        layer = f"layer_key={self.layer_key!r}, " if not self._is_inner() else ""
        short_hash = self.hash_value[:12] + "..." if isinstance(self.hash_value, str) else self.hash_value
        return f"WeightDictMerkleTree({layer}hash_value={short_hash!r})"
