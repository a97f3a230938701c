"""Literal oracles of the scheduling policies (issue #13), in test code.

Each oracle is the paper's pseudo-code transcribed line by line, as naively as possible: plain
lists rebuilt at every call, full scans, no incremental index, no early exit that the pseudo-code
does not have, the paper's line numbers in comments. They import nothing from
``prefixsched.reference.policies`` (nor from ``reference.cluster``): what they read is the
:class:`~prefixsched.reference.policies.base.Snapshot` the engine hands every policy (waiting
entries with their ``cached_tokens`` / ``extend_tokens``, ``waiting_count`` / ``running_count``,
the service weights, and the step's admission budget ``snap.batch()``, which is the engine's
CAN_ADD). Where the reference implementation settles an open question of a spec, the oracle
follows the same documented decision, implemented its own way; every such place is marked
``DECISION`` with the reference docstring it follows.

=================  ====================================================  ===================
oracle             source                                                reference
=================  ====================================================  ===================
:class:`FCFS`      SGLang ``PrefillAdder`` loop (sglang.md §1.5-1.6)     ``policies/fcfs.py``
:class:`LPM`       SGLang ``lpm`` (sglang.md §1.2-1.5)                   ``policies/lpm.py``
:class:`KLPM`      klpm.md §3 Algorithm 1                                ``policies/klpm.py``
:class:`VTC`       vtc_fastswitch_preble.md §A.2 (+ artifact §A.5)       ``policies/vtc.py``
:class:`DLPM`      dlpm.md §2 Algorithm 1                                ``policies/dlpm.py``
:class:`D2LPM`     dlpm.md §3 Algorithm 2 (the global dispatcher)        ``cluster.py``
=================  ====================================================  ===================

Interfaces (duck-typed; :mod:`.lockstep` drives an oracle next to its reference):

- **policy oracle**: ``on_arrival(request, now, snap)``, ``decide(snap) -> tuple[str, ...]``
  (the ids to admit, in order), ``on_step_end(decoded, finished, snap)``, ``state() -> dict``
  with the same keys and meaning as the reference policy's ``state()``;
- **dispatcher oracle**: ``bind(instance, workers)``, ``select(request, keys, now, loads) ->
  int``, ``on_dispatch``, ``on_finish``, ``on_evict`` (the
  :class:`~prefixsched.reference.cluster.Dispatcher` call sequence) and ``state()``;
- **engine oracle** (to come with the ``sglang`` engine): the SGLang admission rule (stop at
  the first misfit, one chunked request, reservation with ``new_token_ratio``) as a function of
  the waiting queue, the running batch and the limits, compared with the engine's admitted set
  at every step. Register it in :data:`ENGINE_ORACLES` (engine name -> factory); none exists
  yet because the engine does not.

:data:`POLICY_ORACLES` and :data:`DISPATCHER_ORACLES` map the registry names to the oracle
classes; an oracle takes the reference's constructor parameters.
"""

from __future__ import annotations

from typing import Any, Callable

from oracles.d2lpm import D2LPM
from oracles.dlpm import DLPM
from oracles.fcfs import FCFS
from oracles.klpm import KLPM
from oracles.lpm import LPM
from oracles.vtc import VTC

__all__ = ["FCFS", "LPM", "KLPM", "VTC", "DLPM", "D2LPM", "POLICY_ORACLES", "DISPATCHER_ORACLES", "ENGINE_ORACLES"]

#: registry name -> oracle class (constructed with the reference policy's parameters)
POLICY_ORACLES: dict[str, Callable[..., Any]] = {
    "fcfs": FCFS,
    "lpm": LPM,
    "k-lpm": KLPM,
    "vtc": VTC,
    "dlpm": DLPM,
}

#: dispatcher name -> oracle class
DISPATCHER_ORACLES: dict[str, Callable[..., Any]] = {"d2lpm": D2LPM}

#: engine name -> admission-rule oracle (module docstring; empty until the ``sglang`` engine exists)
ENGINE_ORACLES: dict[str, Callable[..., Any]] = {}
