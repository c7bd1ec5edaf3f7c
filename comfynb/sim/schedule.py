"""Which node runs next: a port of ComfyUI's ExecutionList, so node order matches the traces.

Output nodes are added first; their uncached ancestors are pulled in depth-first. Among the
nodes whose inputs are ready, ComfyUI prefers an output node, then a node feeding an output,
then one two steps from an output, and otherwise the first in insertion order.
"""

from __future__ import annotations

from collections.abc import Callable


def is_link(value: object) -> bool:
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], (int, float))
    )


class ExecutionList:
    def __init__(self, prompt: dict, is_output: Callable[[str], bool], is_cached: Callable[[str], bool]):
        self._prompt = prompt
        self._is_output = is_output
        self._is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, bool]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            nid = stack.pop()
            if nid in self.pending:
                continue
            self.pending[nid] = True
            self._block_count[nid] = 0
            self._blocking[nid] = {}
            for value in self._prompt[nid].get("inputs", {}).values():
                if is_link(value):
                    if not self._is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], nid))
        for source, target in links:
            if not self._is_cached(source):
                self.add_node(source)
                if target not in self._blocking[source]:
                    self._blocking[source][target] = True
                    self._block_count[target] += 1

    def next(self) -> str | None:
        """The node to run next, None when done; raises if the rest can never run (a cycle)."""
        if not self.pending:
            return None
        ready = [n for n in self.pending if self._block_count[n] == 0]
        if not ready:
            raise DependencyCycleError(f"Dependency cycle detected among nodes {list(self.pending)}")
        for nid in ready:
            if self._is_output(nid):
                return nid
        for nid in ready:
            if any(self._is_output(b) for b in self._blocking[nid]):
                return nid
        for nid in ready:
            if any(self._is_output(b2) for b in self._blocking[nid] for b2 in self._blocking[b]):
                return nid
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self._blocking.pop(node_id):
            self._block_count[blocked] -= 1


class DependencyCycleError(Exception):
    """Raised when the remaining nodes wait on each other (ComfyUI: graph.DependencyCycleError)."""

    __module__ = "graph"
