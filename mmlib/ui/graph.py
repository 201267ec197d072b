"""The layout of a lineage graph, drawn server-side as SVG: one row per version in depth-first order (children in
the order they were saved), a lane per branch, nodes whose area grows with the bytes the version added.

A version's first child continues its lane, every other child opens a lane of its own, so no node ever lies on
another branch's line; an edge into a new lane leaves its parent's row diagonally, between the rows.
"""

import math
from dataclasses import dataclass
from typing import Optional

from mmlib import maintenance
from mmlib.ui.data import Entry

ROW_HEIGHT = 30
LANE_WIDTH = 26
MARGIN = 18
MIN_RADIUS = 4.0
MAX_RADIUS = 11.0
LABEL_GAP = 16
LABEL_WIDTH = 900  # room for a label, its aliases and its approach, size and time


@dataclass(frozen=True)
class Node:
    """A placed version: its entry, centre and radius, and whether it is the version the graph was asked for."""

    entry: Entry
    x: float
    y: float
    radius: float
    focus: bool


@dataclass(frozen=True)
class Graph:
    """A laid-out lineage: nodes, edges as SVG path data, the canvas size and where the labels start."""

    nodes: list[Node]
    edges: list[str]
    width: int
    height: int
    label_x: int


def layout(entries: list[Entry], focus: Optional[str] = None) -> Graph:
    """Place `entries` (oldest first); a version whose base is not among them is a root. `focus` marks one model."""
    by_id = {entry.model_id: entry for entry in entries}
    roots = maintenance.tree_of([entry.version for entry in entries])
    largest = max([entry.size or 0 for entry in entries] + [1])
    placed: dict[str, Node] = {}
    edges = []
    next_lane = 0
    stack: list[tuple[maintenance.TreeNode, Optional[int], Optional[Node]]] = [(root, None, None)
                                                                               for root in reversed(roots)]
    while stack:
        tree_node, lane, parent = stack.pop()
        if lane is None:
            lane, next_lane = next_lane, next_lane + 1
        entry = by_id[tree_node.version.model_id]
        node = Node(entry, MARGIN + lane * LANE_WIDTH, MARGIN + len(placed) * ROW_HEIGHT,
                    MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * math.sqrt((entry.size or 0) / largest),
                    entry.model_id == focus)
        placed[entry.model_id] = node
        if parent is not None:
            edges.append(_edge(parent, node))
        children = tree_node.children
        stack += [(child, lane if index == 0 else None, node) for index, child in reversed(list(enumerate(children)))]
    label_x = MARGIN + max(next_lane - 1, 0) * LANE_WIDTH + int(MAX_RADIUS) + LABEL_GAP
    return Graph(list(placed.values()), edges, label_x + LABEL_WIDTH, 2 * MARGIN + max(len(placed) - 1, 0) * ROW_HEIGHT,
                 label_x)


def _edge(parent: Node, child: Node) -> str:
    """SVG path data from `parent` to `child`: straight down its lane, or into a new lane between the rows."""
    if parent.x == child.x:
        return f"M{parent.x:g},{parent.y:g}V{child.y:g}"
    return f"M{parent.x:g},{parent.y:g}L{child.x:g},{parent.y + ROW_HEIGHT / 2:g}V{child.y:g}"
