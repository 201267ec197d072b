"""A Merkle tree over the per-tensor hashes of a state dict: finds changed layers without loading weights."""

from typing import Any, Mapping, Optional

import torch

from mmlib.util.hash import json_value_hash, new_hasher, tensor_hash

THIS = "this"
OTHER = "other"
LEFT = "left"
RIGHT = "right"
LAYER_KEY = "layer_key"
HASH_VALUE = "hash_value"
LAYER_WEIGHT_HASH = "layer_weight_hash"


def _combine(*parts: str) -> str:
    hasher = new_hasher()
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


class MerkleNode:
    """A leaf (one tensor: `layer_key`, `layer_weight_hash`) or an inner node (`left`, `right`)."""

    def __init__(self, hash_value: str, layer_key: Optional[str] = None, layer_weight_hash: Optional[str] = None,
                 left: Optional["MerkleNode"] = None, right: Optional["MerkleNode"] = None):
        self.hash_value = hash_value
        self.layer_key = layer_key
        self.layer_weight_hash = layer_weight_hash
        self.left = left
        self.right = right

    @property
    def is_leaf(self) -> bool:
        return self.left is None

    def expected_hash(self) -> str:
        """The hash this node must carry given its children (or its layer)."""
        if self.is_leaf:
            return _combine(self.layer_key, self.layer_weight_hash)
        return _combine(self.left.hash_value, self.right.hash_value if self.right else "")

    def to_python_dict(self) -> dict:
        if self.is_leaf:
            return {HASH_VALUE: self.hash_value, LAYER_KEY: self.layer_key, LAYER_WEIGHT_HASH: self.layer_weight_hash}
        node = {HASH_VALUE: self.hash_value, LEFT: self.left.to_python_dict()}
        node[RIGHT] = self.right.to_python_dict() if self.right else None
        return node

    @classmethod
    def from_python_dict(cls, node: dict) -> "MerkleNode":
        if LEFT not in node:
            return cls(node[HASH_VALUE], layer_key=node[LAYER_KEY], layer_weight_hash=node[LAYER_WEIGHT_HASH])
        right = node.get(RIGHT)
        return cls(node[HASH_VALUE], left=cls.from_python_dict(node[LEFT]),
                   right=cls.from_python_dict(right) if right else None)

    def __repr__(self) -> str:
        return f"MerkleNode({self.layer_key or 'inner'}, {self.hash_value[:12]})"


class WeightDictMerkleTree:
    """Leaves are the state dict's tensors in key order; equal roots mean equal weights."""

    def __init__(self, root: Optional[MerkleNode] = None):
        self.root = root

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> "WeightDictMerkleTree":
        """Hash every entry (a tensor, or a JSON extra state) and build the tree; a tensor object listed under
        several names (tied weights) is hashed once."""
        known: dict[int, str] = {}
        layer_hashes = {}
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                layer_hashes[key] = json_value_hash(value)
                continue
            if id(value) not in known:
                known[id(value)] = tensor_hash(value)
            layer_hashes[key] = known[id(value)]
        return cls.from_layer_hashes(layer_hashes)

    @classmethod
    def from_layer_hashes(cls, layer_hashes: Mapping[str, str]) -> "WeightDictMerkleTree":
        """Build the tree from precomputed per-tensor hashes."""
        level = [MerkleNode(_combine(key, weight_hash), layer_key=key, layer_weight_hash=weight_hash)
                 for key, weight_hash in layer_hashes.items()]
        if not level:
            return cls(None)
        while len(level) > 1:
            pairs = [(level[i], level[i + 1] if i + 1 < len(level) else None) for i in range(0, len(level), 2)]
            level = [MerkleNode(_combine(left.hash_value, right.hash_value if right else ""), left=left, right=right)
                     for left, right in pairs]
        return cls(level[0])

    def to_python_dict(self) -> dict:
        """The tree as nested dicts (JSON/BSON friendly); `{}` for the tree of an empty state dict."""
        return self.root.to_python_dict() if self.root else {}

    @classmethod
    def from_python_dict(cls, python_dict: Optional[dict]) -> "WeightDictMerkleTree":
        """Rebuild a tree from `to_python_dict` output."""
        return cls(MerkleNode.from_python_dict(python_dict) if python_dict else None)

    def get_all_leaves(self) -> list[MerkleNode]:
        """The leaves in key order."""
        leaves, stack = [], [self.root] if self.root else []
        while stack:
            node = stack.pop()
            if node.is_leaf:
                leaves.append(node)
            else:
                stack.extend(child for child in (node.right, node.left) if child)
        return leaves

    def layer_hashes(self) -> dict[str, str]:
        """Layer key -> tensor hash for every leaf."""
        return {leaf.layer_key: leaf.layer_weight_hash for leaf in self.get_all_leaves()}

    def check_integrity(self) -> bool:
        """True when every node's hash matches its children (or its layer)."""
        stack = [self.root] if self.root else []
        while stack:
            node = stack.pop()
            if node.hash_value != node.expected_hash():
                return False
            stack.extend(child for child in (node.left, node.right) if child)
        return True

    def diff(self, other: "WeightDictMerkleTree") -> tuple[dict, dict]:
        """Layers and leaves that differ: ({THIS: keys, OTHER: keys}, {THIS: nodes, OTHER: nodes}).

        Equal roots cost one comparison; otherwise leaves are matched by their hashes.
        """
        diff_nodes = {THIS: set(), OTHER: set()}
        if self == other:
            return {THIS: set(), OTHER: set()}, diff_nodes
        mine, theirs = self.get_all_leaves(), other.get_all_leaves()
        their_hashes = {leaf.hash_value for leaf in theirs}
        my_hashes = {leaf.hash_value for leaf in mine}
        diff_nodes[THIS] = {leaf for leaf in mine if leaf.hash_value not in their_hashes}
        diff_nodes[OTHER] = {leaf for leaf in theirs if leaf.hash_value not in my_hashes}
        diff_weights = {side: {leaf.layer_key for leaf in nodes} for side, nodes in diff_nodes.items()}
        return diff_weights, diff_nodes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightDictMerkleTree):
            return NotImplemented
        if self.root is None or other.root is None:
            return self.root is other.root
        return self.root.hash_value == other.root.hash_value

    def __hash__(self) -> int:
        return hash(self.root.hash_value if self.root else None)
