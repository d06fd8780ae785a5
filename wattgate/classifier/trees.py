"""Boosted trees as a model document holds them: flattened arrays, validated on load, scored all at once or one request.

The shipped model's head and a served model's transferred head (``served.py``) are both ``Trees``; their
document section (``trees_doc``) holds the arrays as base64 of little-endian numpy buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.quickscore import QuickScorer, build
from wattgate.classifier.textmodel import check_floats, check_int, decode_array, encode_array, need


@dataclass(frozen=True)
class Trees:
    """Boosted trees flattened into arrays (leaves point to themselves) and walked all at once."""

    baseline: NDArray[np.float64]  # (n_classes,)
    n_trees: int
    n_nodes: int  # nodes per tree (padded)
    depth: int
    feature: NDArray[np.int64]  # (n_trees * n_nodes,)
    threshold: NDArray[np.float64]
    left: NDArray[np.int64]  # global node index
    right: NDArray[np.int64]
    value: NDArray[np.float64]
    # Serving copies: the roots, and children interleaved (2i: right, 2i+1: left) so a step is one gather.
    roots: NDArray[np.int64] = field(init=False, repr=False, compare=False)
    children: NDArray[np.int64] = field(init=False, repr=False, compare=False)
    # The request path's scorer (same results, a fraction of the numpy calls); None for deep trees.
    quick: QuickScorer | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children = np.empty(2 * self.left.size, dtype=np.int64)
        children[0::2], children[1::2] = self.right, self.left
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "roots", np.arange(self.n_trees, dtype=np.int64) * self.n_nodes)
        arrays = (self.feature, self.threshold, self.left, self.right, self.value)
        object.__setattr__(self, "quick", build(self.n_trees, self.n_nodes, self.depth, arrays, self.baseline))

    def raw_batch(self, xs: NDArray[np.float64]) -> NDArray[np.float64]:
        """``raw`` of every row of ``xs`` at once: (rows, classes)."""
        rows = np.arange(len(xs))[:, None]
        node = np.broadcast_to(self.roots, (len(xs), self.n_trees))
        for _ in range(self.depth):
            node = self.children[2 * node + (xs[rows, self.feature[node]] <= self.threshold[node])]
        n_classes = self.baseline.size
        out: NDArray[np.float64] = self.baseline + self.value[node].reshape(len(xs), -1, n_classes).sum(axis=1)
        return out

    def raw3(self, x: Sequence[float]) -> tuple[float, ...]:
        """The three logits of one request (``x``: every feature, in model order), the gateway's hot path."""
        quick = self.quick
        if quick is not None:
            return quick.raw(x)
        out: tuple[float, ...] = tuple(self.raw(np.asarray(x, dtype=np.float64)).tolist())
        return out

    def raw(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        node = self.roots
        for _ in range(self.depth):
            node = self.children[2 * node + (x[self.feature[node]] <= self.threshold[node])]  # NaN goes right
        n_classes = self.baseline.size
        out: NDArray[np.float64] = self.baseline + self.value[node].reshape(-1, n_classes).sum(axis=0)
        return out


def parse_trees(head: Any, n_features: int, what: str = "head") -> Trees:
    """Validated trees of a document's ``head`` section (``what``: where it sits, for error messages)."""
    keys = {"kind", "baseline", "n_trees", "n_nodes", "depth", "feature", "threshold", "left", "right", "value"}
    need(isinstance(head, dict) and set(head) == keys and head.get("kind") == "trees", f"bad {what!r} section")
    n_trees = check_int(head["n_trees"], f"{what}.n_trees", 3, 100_000)
    n_nodes = check_int(head["n_nodes"], f"{what}.n_nodes", 1, 100_000)
    depth = check_int(head["depth"], f"{what}.depth", 0, 64)
    need(n_trees % 3 == 0, f"{what}.n_trees must be a multiple of 3")
    size = n_trees * n_nodes
    feature = decode_array(head["feature"], "int32", size, f"{what}.feature").astype(np.int64)
    left = decode_array(head["left"], "int32", size, f"{what}.left").astype(np.int64)
    right = decode_array(head["right"], "int32", size, f"{what}.right").astype(np.int64)
    need(bool(((feature >= 0) & (feature < n_features)).all()), f"{what}.feature index out of range")
    tree_of = np.arange(size) // n_nodes
    for arr, side in ((left, "left"), (right, "right")):
        need(bool(((arr >= 0) & (arr < size) & (arr // n_nodes == tree_of)).all()), f"{what}.{side} out of its tree")
    return Trees(
        baseline=check_floats(head["baseline"], 3, f"{what}.baseline"),
        n_trees=n_trees,
        n_nodes=n_nodes,
        depth=depth,
        feature=feature,
        threshold=decode_array(head["threshold"], "float64", size, f"{what}.threshold"),
        left=left,
        right=right,
        value=decode_array(head["value"], "float64", size, f"{what}.value"),
    )


def trees_doc(trees: Trees) -> dict[str, Any]:
    """The document section ``parse_trees`` reads back to the same trees."""
    return {
        "kind": "trees",
        "baseline": [float(v) for v in trees.baseline],
        "n_trees": trees.n_trees,
        "n_nodes": trees.n_nodes,
        "depth": trees.depth,
        "feature": encode_array(trees.feature, "<i4"),
        "threshold": encode_array(trees.threshold, "<f8"),
        "left": encode_array(trees.left, "<i4"),
        "right": encode_array(trees.right, "<i4"),
        "value": encode_array(trees.value, "<f8"),
    }
