"""The profile's shape, built the same way by the agent's sampler and by the viewer from py-spy's output.

Both halves hand the TUI the same keys: the ranked tables' length (`TOP_N`), the pruned call tree and a
speedscope file, from per-thread stacks of labels. Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

TOP_N = 50
"""Rows kept in the ranked function and line tables."""
TREE_MIN_SHARE = 0.005
"""A call-tree node holding less than this share of the samples is pruned."""
TREE_MAX_DEPTH = 64
"""Frames kept below a thread in the call tree."""
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def call_tree(
    per_thread: dict[int, dict[tuple[str, ...], int]],
    thread_label: Callable[[int], str],
    label_info: dict[str, tuple[str, str, int]],
    total: int,
) -> dict[str, Any]:
    """Call tree (root 'all' > threads > frames) pruned to nodes holding >= 0.5% of samples, depth <= 64."""
    threshold = max(1, int(total * TREE_MIN_SHARE + 0.999999))

    def new_node(label: str) -> dict[str, Any]:
        name, path, line = label_info.get(label, (label, "", 0))
        return {"name": name, "file": path, "line": line, "total": 0, "self": 0, "children": {}}

    root = new_node("all")
    for ident, stacks in per_thread.items():
        thread_node = new_node(thread_label(ident))
        for path, count in stacks.items():
            thread_node["total"] += count
            node = thread_node
            for depth, label in enumerate(path, start=2):
                if depth > TREE_MAX_DEPTH:
                    break
                children = node["children"]
                child = children.get(label)
                if child is None:
                    child = children[label] = new_node(label)
                child["total"] += count
                node = child
            else:
                node["self"] += count
        root["total"] += thread_node["total"]
        root["children"][f"thread {ident}"] = thread_node

    def finish(node: dict[str, Any]) -> dict[str, Any]:
        kept = [finish(c) for c in node["children"].values() if c["total"] >= threshold]
        kept.sort(key=lambda c: (-c["total"], c["name"]))
        node["children"] = kept
        return node

    return finish(root)


def speedscope(
    per_thread: dict[int, dict[tuple[str, ...], int]],
    thread_label: Callable[[int], str],
    label_info: dict[str, tuple[str, str, int]],
    pid: int | None = None,
) -> dict[str, Any]:
    """A speedscope file (one 'sampled' profile per thread, weights in samples) from the same stacks, for
    the process `pid` (this one by default)."""
    if pid is None:
        pid = os.getpid()
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    profiles: list[dict[str, Any]] = []
    for ident in sorted(per_thread, key=lambda i: -sum(per_thread[i].values())):
        samples: list[list[int]] = []
        weights: list[int] = []
        for path, count in per_thread[ident].items():
            stack: list[int] = []
            for label in path:
                at = index.get(label)
                if at is None:
                    _name, file, line = label_info.get(label, (label, "", 0))
                    frame: dict[str, Any] = {"name": label}
                    if file:
                        frame["file"] = file
                        frame["line"] = line
                    at = index[label] = len(frames)
                    frames.append(frame)
                stack.append(at)
            samples.append(stack)
            weights.append(count)
        profiles.append(
            {
                "type": "sampled",
                "name": thread_label(ident),
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        )
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": f"perftop profile of pid {pid}",
        "activeProfileIndex": 0,
        "exporter": "perftop",
    }
