"""dfs-weight: SGLang's ``dfs-weight`` policy (sglang.md §1.2, ``_sort_by_dfs_weight``).

Each waiting request hangs at the radix-tree position where its prefix match ends; the weight of a
subtree is the number of waiting requests in it. The order walks the tree depth first, heavier
subtrees first (ties: the subtree holding the oldest request first), emitting a node's own
requests after its children (FCFS among them); requests with no match come last. The order is
recomputed every pass: O(n * depth) per pass. SGLang never degrades dfs-weight to FCFS.
Admission uses the shared skip rule of :mod:`.lpm` (skip non-fitting, keep filling).
"""

from __future__ import annotations

from typing import ClassVar

from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, Policy, Snapshot
from prefixsched.reference.policies.lpm import fill_skipping

__all__ = ["DFSWeight"]


@register
class DFSWeight(Policy):
    """SGLang's dfs-weight order (heavier subtrees of waiting requests first); skips non-fitting."""

    name: ClassVar[str] = "dfs-weight"
    description: ClassVar[str] = "SGLang dfs-weight: radix subtrees with more waiting requests first"

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        if b.full:  # nothing can be admitted; skip the O(n) ordering
            return Decision(())
        order = snap.cache.dfs_weight_order(list(snap.fcfs()))
        return fill_skipping(b, order)
