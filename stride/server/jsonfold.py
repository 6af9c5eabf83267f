"""JSON values as a tree the templates render with `<details>`: big parts start folded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stride import _codec

FOLD_CHARS = 300  # a container or string longer than this (as JSON) starts folded
MAX_NODES = 3000  # past this many nodes the rest is shown as raw JSON text
PREVIEW_CHARS = 80


@dataclass(slots=True)
class Node:
    key: str | None
    kind: str  # object, array, string, scalar, raw
    text: str  # the JSON of a scalar, a preview of a long string or of a raw remainder
    size: int  # characters of JSON
    folded: bool = False
    children: list[Node] = field(default_factory=list)


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_NODES


def _json(value: Any) -> str:
    return _codec.dumps_str(value)


def fold(value: Any, key: str | None = None, budget: _Budget | None = None) -> Node:
    """The tree of `value`; after MAX_NODES nodes the rest of a container is left out."""
    budget = budget or _Budget()
    budget.left -= 1
    text = _json(value)
    if isinstance(value, dict):
        children = _children([(str(k), v) for k, v in value.items()], budget)
        return Node(key, "object", "", len(text), len(text) > FOLD_CHARS, children)
    if isinstance(value, list):
        children = _children([(None, v) for v in value], budget)
        return Node(key, "array", "", len(text), len(text) > FOLD_CHARS, children)
    if isinstance(value, str) and len(text) > FOLD_CHARS:
        return Node(key, "string", text, len(text), folded=True)
    return Node(key, "scalar", text, len(text))


def _children(items: list[tuple[str | None, Any]], budget: _Budget) -> list[Node]:
    nodes = []
    for index, (key, value) in enumerate(items):
        if budget.left <= 0:
            nodes.append(Node(None, "raw", f"… {len(items) - index} more not shown", 0))
            break
        nodes.append(fold(value, key, budget))
    return nodes


def preview(node: Node) -> str:
    """A one-line summary for a folded node."""
    if node.kind == "object":
        return f"{{…}} {len(node.children)} keys, {node.size:,} chars"
    if node.kind == "array":
        return f"[…] {len(node.children)} items, {node.size:,} chars"
    return node.text[:PREVIEW_CHARS] + f"… {node.size:,} chars"
