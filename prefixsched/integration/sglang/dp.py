"""D²LPM as the dispatcher of SGLang's data-parallel controller (``--dp-size N``).

With ``PREFIXSCHED_DISPATCH=d2lpm[:Q_w]`` the plugin registers an ``AROUND`` hook on
``srt/managers/data_parallel_controller.py::DataParallelController.init_dispatcher``: after
SGLang built its dispatch table (whatever ``--load-balance-method`` chose), the controller's
``self.dispatching`` is replaced by :class:`DPDispatch`, which runs the reference
:class:`~prefixsched.reference.cluster.D2LPMDispatcher` (Algorithm 2 of Cao et al., arXiv:2501.14312:
per-(client, worker) deficits ``q_{i,w}`` with quantum ``Q_w``, the approximate global radix tree
with optimistic insert, the least-loaded credited worker). There is no second implementation:
``select`` / ``on_dispatch`` / ``on_finish`` / ``on_evict`` are the reference class's. Requests
with ``routed_dp_rank`` set keep SGLang's direct routing (``maybe_external_dp_rank_routing``).
The worker is sent the request with the controller module's own ``sock_send``.

Processes. In 0.5.23 the controller process runs ``load_plugins()`` itself. In 0.5.17 it does not
(it is spawned from ``srt/entrypoints/engine.py`` without it), so the launcher's plugin load
rebinds ``engine.run_data_parallel_controller_process`` to :func:`dp_controller_entry`, a
module-level function (picklable by reference for the ``spawn`` start method) that calls
``load_plugins()`` and then SGLang's original function.

Feedback: how eviction and finish events reach the dispatcher (decisions)
---------------------------------------------------------------------------
Algorithm 2 needs three signals from the workers: finishes (``q_{i,w} -= w_q * output_len``,
``s_w -= 1``), evictions (``R.EVICT(P, w)``) and the load ``s_w``.

- **Exact mode** (``feedback="events"``): the caller delivers every finish and eviction through
  :meth:`DPDispatch.on_finish` / :meth:`DPDispatch.on_evict`, in time order. This is what the
  CPU test does with the cluster simulator's events, and it reproduces the simulator's dispatch
  decisions exactly.
- **Deployment mode** (``feedback="snapshots"``, what the hook installs): SGLang's controller never
  sees a request finish (outputs go from the schedulers to the detokenizer) and receives no
  eviction events. What reaches it is the periodic load snapshot of every rank
  (``load_snapshot_reader``: running + waiting requests, refreshed at most every 20 ms). So
  (1) ``s_w`` is taken from the latest snapshot (plus one per request dispatched since, the same
  speculative count as SGLang's ``DPBudget``); (2) the output charge ``w_q * output_len`` is
  made **at dispatch** with ``max_new_tokens`` (the client's bound, >= the real output length) in
  place of the real output length at finish; (3) no eviction reaches the global tree, so its tags
  are optimistic and only ever added (D²LPM's tree is "approximate" by design; stale tags send a
  request to a worker that lost the prefix, costing one re-prefill there). Wiring evictions for
  real means enabling SGLang's KV-cache events (``--kv-events-config``, ``BlockRemoved`` events
  published per rank over ZMQ by ``scheduler_components/kv_events_publisher.py``) and calling
  :meth:`DPDispatch.on_evict` from a subscriber thread; that is not done here.

Client id: as the plugin (routing key, session id, ``PREFIXSCHED_DEFAULT_CLIENT``). Page keys:
the prompt's token ids at page size 1 (one global-tree node per distinct prompt token; the tree
has no memory budget, dlpm.md §8.11). All workers are assumed active (elastic DP is not handled).
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

from prefixsched.integration.sglang._shim import resolvable
from prefixsched.integration.sglang.adapter import DEFAULT_CLIENT, client_of
from prefixsched.reference.cluster import D2LPMDispatcher, Dispatcher, create_dispatcher
from prefixsched.theory.model import Request, ServiceWeights, page_keys

__all__ = ["DPDispatch", "hooks", "install_spawn_entry", "dp_controller_entry", "TARGET"]

logger = logging.getLogger("prefixsched.sglang")

TARGET = "sglang.srt.managers.data_parallel_controller.DataParallelController.init_dispatcher"


def _prompt_of(req: Any) -> Any:
    ids = getattr(req, "input_ids", None)
    if ids is None:
        ids = getattr(req, "origin_input_ids", None)
    if ids is None:
        raise ValueError(f"request {getattr(req, 'rid', '?')!r} carries no token ids (input_ids)")
    return ids


class DPDispatch:
    """A reference dispatcher driven by SGLang request objects (module docstring).

    Parameters
    ----------
    dispatcher:
        A fresh reference dispatcher (``D2LPMDispatcher`` for D²LPM; any
        :class:`~prefixsched.reference.cluster.Dispatcher` works).
    workers:
        Number of data-parallel workers ``D``.
    weights:
        Service weights ``w_e, w_q``.
    feedback:
        ``"events"`` (exact; finishes and evictions delivered by the caller) or ``"snapshots"``
        (deployment approximation, module docstring).
    page_size:
        Tokens per page of the global tree's keys.
    clock:
        ``() -> seconds`` for the dispatcher's ``now`` (informational).

    Raises
    ------
    ValueError
        For an unknown ``feedback`` or ``workers < 1``.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        workers: int,
        *,
        weights: ServiceWeights | None = None,
        feedback: str = "events",
        page_size: int = 1,
        default_client: str = DEFAULT_CLIENT,
        clock: Any = None,
    ) -> None:
        if feedback not in ("events", "snapshots"):
            raise ValueError(f"feedback: must be 'events' or 'snapshots', got {feedback!r}")
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self.dispatcher = dispatcher
        self.workers = workers
        self.feedback = feedback
        self.page_size = page_size
        self.default_client = default_client
        w = weights or ServiceWeights()
        dispatcher.bind(types.SimpleNamespace(weights=w), workers)  # type: ignore[arg-type]
        self.w_q = w.w_q
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        self.loads = [0] * workers  # s_w as the cluster simulator counts it
        self.inflight: dict[str, tuple[Request, int]] = {}
        self.decisions: list[tuple[str, int]] = []

    def request_of(self, req: Any, now: float) -> Request:
        ids = _prompt_of(req)
        sp = getattr(req, "sampling_params", None)
        out = getattr(sp, "max_new_tokens", None) or 1
        return Request(
            id=str(req.rid),
            client=client_of(req, self.default_client),
            arrival=float(now),
            prompt=tuple(ids),
            output_len=int(out),
        )

    def select(self, req: Any, snapshot_loads: Sequence[int] | None = None) -> int:
        """Pick the worker for ``req`` and record the dispatch (Algorithm 2 lines 1-12)."""
        now = float(self.clock())
        r = self.request_of(req, now)
        keys = page_keys(r.prompt, self.page_size)
        if snapshot_loads is not None and self.feedback == "snapshots":
            self.loads = [int(x) for x in snapshot_loads]
            if isinstance(self.dispatcher, D2LPMDispatcher):
                self.dispatcher.s = list(self.loads)
        w = int(self.dispatcher.select(r, keys, now, list(self.loads)))
        if not 0 <= w < self.workers:
            raise RuntimeError(f"dispatcher {self.dispatcher.name!r} chose worker {w} of {self.workers}")
        self.dispatcher.on_dispatch(r, keys, w, now)
        self.loads[w] += 1
        if self.feedback == "snapshots":
            if isinstance(self.dispatcher, D2LPMDispatcher):  # output charged now, with max_new_tokens
                self.dispatcher.q[r.client][w] -= self.w_q * r.output_len
        else:
            self.inflight[r.id] = (r, w)
        self.decisions.append((r.id, w))
        return w

    def on_finish(self, rid: str, output_len: int | None = None) -> None:
        """Request ``rid`` produced its last token (exact mode). ``output_len``: the real output
        length (default: the ``max_new_tokens`` it was dispatched with)."""
        item = self.inflight.pop(str(rid), None)
        if item is None:
            return
        r, w = item
        if output_len is not None and output_len != r.output_len:
            r = Request(r.id, r.client, r.arrival, r.prompt, int(output_len))
        self.dispatcher.on_finish(r, w, float(self.clock()))
        self.loads[w] -= 1

    def on_evict(self, worker: int, token_ids: Sequence[int], start_tokens: int) -> None:
        """``worker`` evicted the tokens ``token_ids[start_tokens:]`` of a cached path."""
        keys = page_keys(tuple(token_ids), self.page_size)
        self.dispatcher.on_evict(worker, keys, start_tokens // self.page_size, float(self.clock()))


# ---------------------------------------------------------------------------------------------
# the controller hook


def _controller_dispatch(ctl: Any, dd: DPDispatch) -> Any:
    mod = sys.modules[type(ctl).__module__]

    def dispatching(req: Any) -> None:
        try:
            if ctl.maybe_external_dp_rank_routing(req):
                return
            loads = None
            if dd.feedback == "snapshots" and hasattr(ctl, "dp_budget"):
                refresh = getattr(ctl, "refresh_load_budget", None)
                if refresh is not None:
                    refresh()
                loads = list(ctl.dp_budget.total_requests)[: dd.workers]
            w = dd.select(req, loads)
        except Exception:  # noqa: BLE001 - never lose a request: fall back to SGLang's method
            logger.exception("prefixsched: D2LPM dispatch failed; this request goes through SGLang's method")
            ctl._prefixsched_native_dispatching(req)
            return
        mod.sock_send(ctl.workers[w], req)

    return dispatching


def _hook_init_dispatcher(orig: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    out = orig(self, *args, **kwargs)
    try:
        cfg = _CONFIG
        if cfg is None or not cfg.dispatch:
            return out
        workers = int(getattr(self, "launch_dp_size", 0) or len(self.workers))
        dd = DPDispatch(
            create_dispatcher(cfg.dispatch),
            workers,
            weights=cfg.weights,
            feedback="snapshots",
            default_client=cfg.default_client,
        )
        self._prefixsched_native_dispatching = self.dispatching
        self._prefixsched_dispatch = dd
        self.dispatching = _controller_dispatch(self, dd)
        logger.info("prefixsched: DP controller dispatches with %s over %d workers", cfg.dispatch, workers)
    except Exception:  # noqa: BLE001
        logger.exception("prefixsched: installing the DP dispatcher failed; SGLang's dispatch runs unchanged")
    return out


#: The plugin's configuration, handed over by :func:`hooks` (the plugin imports this module, not
#: the other way round).
_CONFIG: Any = None


def hooks(version: str | None, config: Any) -> list[tuple[str, Any]] | None:
    """The DP controller hooks for the plugin to register, or None if the target is missing.
    ``config`` is the plugin's configuration (its ``dispatch``, ``weights``, ``default_client``)."""
    global _CONFIG
    if not resolvable(TARGET):
        return None
    _CONFIG = config
    return [(TARGET, _hook_init_dispatcher)]


def dp_controller_entry(*args: Any, **kwargs: Any) -> Any:
    """SGLang 0.5.17's ``run_data_parallel_controller_process`` with ``load_plugins()`` first."""
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.managers import data_parallel_controller as dpc

    return dpc.run_data_parallel_controller_process(*args, **kwargs)


def install_spawn_entry(version: str | None) -> bool:
    """On 0.5.17 point the launcher at :func:`dp_controller_entry` (module docstring). Returns
    True if it rebound something."""
    if version != "0.5.17":
        return False
    eng = sys.modules.get("sglang.srt.entrypoints.engine")
    if eng is None or not hasattr(eng, "run_data_parallel_controller_process"):
        return False
    eng.run_data_parallel_controller_process = dp_controller_entry
    return True
