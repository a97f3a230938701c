"""The SGLang plugin: prefixsched's reference policies inside an unmodified SGLang.

Entry point: ``[project.entry-points."sglang.srt.plugins"] prefixsched =
"prefixsched.integration.sglang.plugin:register"``. SGLang's ``load_plugins()``
(``srt/plugins/__init__.py``) runs :func:`register` in every process it starts, the scheduler
processes included (``run_scheduler_process`` calls it first: they are spawned, so a monkeypatch in
the launcher would not reach them), then ``HookRegistry.apply_hooks()`` patches the targets.

Configuration (environment variables, read by every process; the launcher's environment is
inherited by the spawned ones)
-------------------------------------------------------------------------------------------------
``PREFIXSCHED_POLICY``
    A policy spec with the CLI's syntax (``dlpm:8000``, ``vtc``, ``k-lpm:2``, ``lpm:128``; see
    ``prefixsched policies``). Unset or empty: the plugin registers nothing. Keep SGLang's
    ``--schedule-policy`` at ``lpm`` or ``fcfs`` (its choices are fixed); while a prefixsched
    policy is active SGLang's own ordering is switched off.
``PREFIXSCHED_POLICY_PARAMS``
    Optional JSON object of keyword parameters (``{"weights": {"a": 2}, "charge": "extend"}``).
``PREFIXSCHED_WEIGHTS``
    Optional JSON object ``{"w_e": 1, "w_q": 2}``: the service weights the policies charge with.
``PREFIXSCHED_DEFAULT_CLIENT``
    Client of requests with neither a routing key nor a session id (default ``"default"``).
``PREFIXSCHED_STATE_LOG``
    Optional path: one JSON line per pass that admitted something (step, admitted ids, chunked
    request, cache hits, ``policy.state()``); ``{pid}`` in the path is replaced by the process
    id, else ``.<pid>`` is appended (one file per scheduler process / TP rank).
``PREFIXSCHED_POLICY_FILE``
    Optional path of a text file holding a policy spec, re-read when it changes (one server,
    several policies in turn; ``off`` / ``sglang:*`` = SGLang's own scheduling). Enables the
    plugin even without ``PREFIXSCHED_POLICY``.
``PREFIXSCHED_DISPATCH``
    A dispatcher spec (``d2lpm:16000``) for SGLang's data-parallel controller
    (:mod:`prefixsched.integration.sglang.dp`).

Hooks (``HookRegistry``, all ``AROUND``; targets in ``python/sglang/``)
------------------------------------------------------------------------
- ``srt/managers/scheduler.py::Scheduler.get_prefill_adder_class`` (0.5.23): returns the adder
  class bound to the scheduler's policy (:func:`~.adapter.bound_adder_class`). SGLang 0.5.17 has
  no such method; there ``Scheduler._get_new_batch_prefill_raw`` rebinds the scheduler module's
  ``PrefillAdder`` name to the bound class for the duration of the pass (the scheduler looks the
  name up at call time). The same hook binds the driver to ``scheduler.policy`` in both versions.
- ``srt/managers/schedule_policy.py::SchedulePolicy.calc_priority``: a no-op while a prefixsched
  policy is active (the policy drives the adder; the queue order is not used, and no native
  match or LRU touch happens there). Consequence, measured on CPU: SGLang 0.5.23's own ``fcfs``
  matches every waiting request's prefix in ``calc_priority`` (or, without fast matching,
  touches them every 32 passes), refreshing their LRU recency; without that touch a different
  prefix can be evicted under KV pressure (1 of 3,186 steps differed in the twin run; 0 with the
  touch off).
- ``Scheduler._add_request_to_queue``: arrival accounting. The policy's ``on_arrival`` sees the
  queue *without* the new request, as the protocol requires; it is called after SGLang accepted
  the request into the queue (an ``AROUND`` rather than a ``BEFORE`` hook, so a request SGLang
  aborts on entry -- priority validation, ``--max-queued-requests`` -- is not an arrival).
  Retracted (``is_retracted=True``) and preempted requests re-queued under an id seen before are
  not arrivals (decision: their client's backlog never emptied, so VTC's lift and DLPM's rejoin
  reset must not fire); they go to the back of the FCFS order, as in SGLang's queue.
- ``Scheduler.process_batch_result``: charging. The output tokens each client's requests gained
  while SGLang processed the batch (``len(req.output_ids)`` before and after: one per decoding
  request, the first token of each request whose prefill completed, none for a middle chunk) and
  the requests that finished go to ``policy.on_step_end``. Under overlap scheduling this runs one
  step late (SGLang processes a batch's result after launching the next batch): the policy's
  counters lag one step behind the GPU (approximation, stated).

Versions and failure
--------------------
:data:`~._shim.SUPPORTED_VERSIONS` (0.5.23 CPU, 0.5.17 GPU image). An unsupported version, a
missing hook target, an unknown policy or bad parameters is logged as one clear ``ERROR`` line in
the server log and nothing is registered: SGLang's own scheduler runs unchanged. Unsupported
server features (priority scheduling, LoRA, disaggregation, diffusion LLMs, hierarchical-cache
storage, pipeline parallelism) turn the driver off for that scheduler with the same kind of
message. Any exception inside a hook turns that scheduler's driver off (logged with its
traceback); a scheduler process is never crashed by the plugin.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from prefixsched.errors import InputError
from prefixsched.integration.sglang._shim import check_version, install_torchvision_standin, resolvable, sglang_version
from prefixsched.integration.sglang.adapter import DEFAULT_CLIENT, PolicyDriver, bound_adder_class
from prefixsched.theory.model import ServiceWeights

__all__ = ["register", "PluginConfig", "read_config", "driver_of", "status", "TARGETS"]

logger = logging.getLogger("prefixsched.sglang")

SCHED = "sglang.srt.managers.scheduler.Scheduler"
POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"

#: Hook targets by role; ``adder_class`` exists in 0.5.23 only (0.5.17 uses ``prefill_raw``).
TARGETS: dict[str, str] = {
    "adder_class": f"{SCHED}.get_prefill_adder_class",
    "prefill_raw": f"{SCHED}._get_new_batch_prefill_raw",
    "calc_priority": f"{POLICY}.calc_priority",
    "arrival": f"{SCHED}._add_request_to_queue",
    "result": f"{SCHED}.process_batch_result",
}


class PluginConfig:
    """The parsed environment (module docstring). Raises :class:`InputError` naming the
    variable on a bad value."""

    def __init__(self, env: dict[str, str]) -> None:
        from prefixsched.reference.policies import create

        self.spec = (env.get("PREFIXSCHED_POLICY") or "").strip()
        self.dispatch = (env.get("PREFIXSCHED_DISPATCH") or "").strip()
        self.params = _json_object(env, "PREFIXSCHED_POLICY_PARAMS")
        w = _json_object(env, "PREFIXSCHED_WEIGHTS")
        try:
            self.weights = ServiceWeights.from_dict(w, "PREFIXSCHED_WEIGHTS") if w else ServiceWeights()
        except InputError:
            raise
        self.default_client = (env.get("PREFIXSCHED_DEFAULT_CLIENT") or DEFAULT_CLIENT).strip() or DEFAULT_CLIENT
        self.state_log = (env.get("PREFIXSCHED_STATE_LOG") or "").strip() or None
        self.policy_file = (env.get("PREFIXSCHED_POLICY_FILE") or "").strip() or None
        if self.spec:
            try:
                create(self.spec, **self.params)  # validate now: unknown policy, bad parameters
            except InputError as e:
                raise InputError("PREFIXSCHED_POLICY", f"{self.spec!r}: {e}") from None
            except TypeError as e:
                raise InputError("PREFIXSCHED_POLICY_PARAMS", f"{self.params!r}: {e}") from None
        if self.dispatch:
            from prefixsched.reference.cluster import create_dispatcher

            try:
                create_dispatcher(self.dispatch)
            except InputError as e:
                raise InputError("PREFIXSCHED_DISPATCH", f"{self.dispatch!r}: {e}") from None

    def new_policy(self) -> Any:
        from prefixsched.reference.policies import create

        return create(self.spec, **self.params)


def _json_object(env: dict[str, str], name: str) -> dict[str, Any]:
    raw = (env.get(name) or "").strip()
    if not raw:
        return {}
    try:
        v = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(name, f"is not valid JSON ({e.msg} at column {e.colno}): {raw!r}") from None
    if not isinstance(v, dict):
        raise InputError(name, f"must be a JSON object, got {raw!r}")
    return v


def read_config(env: dict[str, str] | None = None) -> PluginConfig:
    """Parse the plugin's environment variables (``os.environ`` by default)."""
    return PluginConfig(dict(os.environ if env is None else env))


_CONFIG: PluginConfig | None = None
_REGISTERED = False
_VERSION: str | None = None
#: Create a driver for every scheduler the hooks see (a real server). The twin driver and the
#: tests turn this off and bind their drivers explicitly, so SGLang classes used elsewhere in
#: the same process are left alone.
_AUTO_ATTACH = True


def status() -> dict[str, Any]:
    """What the plugin did in this process (for logs and tests)."""
    return {
        "registered": _REGISTERED,
        "policy": None if _CONFIG is None else _CONFIG.spec,
        "dispatch": None if _CONFIG is None else _CONFIG.dispatch,
        "sglang_version": _VERSION,
    }


def _calling_process_role() -> str:
    f = sys._getframe(1)
    for _ in range(40):
        if f is None:
            break
        name = f.f_code.co_name
        if name == "run_detokenizer_process":
            return "detokenizer"
        if name == "run_scheduler_process":
            return "scheduler"
        if name == "run_data_parallel_controller_process":
            return "dp_controller"
        f = f.f_back
    return "other"


def register() -> None:
    """The entry point SGLang's ``load_plugins()`` calls (module docstring). Never raises."""
    try:
        _register()
    except Exception:  # noqa: BLE001 - a plugin must never break the server's start
        logger.exception("prefixsched: plugin registration failed; SGLang runs without prefixsched")





def _register() -> None:
    global _CONFIG, _REGISTERED, _VERSION
    if _REGISTERED:
        return
    try:
        cfg = read_config()
    except InputError as e:
        logger.error("prefixsched: %s; the plugin registers nothing, SGLang's own scheduler runs unchanged", e)
        return
    if not cfg.spec and not cfg.dispatch and not cfg.policy_file:
        logger.info("prefixsched: PREFIXSCHED_POLICY and PREFIXSCHED_DISPATCH are unset; plugin idle")
        return
    version = sglang_version()
    ok, msg = check_version(version)
    if not ok:
        logger.error("prefixsched: %s; the plugin registers nothing, SGLang's own scheduler runs unchanged", msg)
        return
    role = _calling_process_role()
    if role == "detokenizer":
        return
    install_torchvision_standin(transformers_sees_it=version == "0.5.17")
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    hooks: list[tuple[str, Any]] = []
    if cfg.spec or cfg.policy_file:
        want = ["prefill_raw", "calc_priority", "arrival", "result"]
        if resolvable(TARGETS["adder_class"]):
            want.insert(0, "adder_class")
        elif version != "0.5.17":
            want.insert(0, "adder_class")  # reported missing below
        missing = [TARGETS[k] for k in want if not resolvable(TARGETS[k])]
        if missing:
            logger.error(
                "prefixsched: SGLang %s lacks hook target(s) %s; the plugin registers nothing, SGLang's own "
                "scheduler runs unchanged",
                version,
                ", ".join(missing),
            )
            return
        fns = {
            "adder_class": _hook_adder_class,
            "prefill_raw": _hook_prefill_raw,
            "calc_priority": _hook_calc_priority,
            "arrival": _hook_add_request,
            "result": _hook_process_result,
        }
        hooks += [(TARGETS[k], fns[k]) for k in want]
    if cfg.dispatch:
        from prefixsched.integration.sglang import dp

        dp_hooks = dp.hooks(version, cfg)
        if dp_hooks is None:
            logger.error("prefixsched: SGLang %s: the DP controller hook target is missing; dispatch unchanged", version)
        else:
            hooks += dp_hooks
    for target, fn in hooks:
        HookRegistry.register(target, fn, HookType.AROUND)
    _CONFIG = cfg
    _VERSION = version
    _REGISTERED = True
    if cfg.dispatch:
        from prefixsched.integration.sglang import dp

        dp.install_spawn_entry(version)
    logger.info(
        "prefixsched: %s; policy %s, dispatch %s (%d hooks, process role %s)",
        msg,
        cfg.spec or "-",
        cfg.dispatch or "-",
        len(hooks),
        role,
    )


# ---------------------------------------------------------------------------------------------
# per-scheduler driver


def _unsupported(sched: Any) -> str | None:
    checks = [
        ("enable_priority_scheduling", "priority scheduling (--enable-priority-scheduling)"),
        ("enable_lora", "LoRA"),
        ("enable_hicache_storage", "hierarchical-cache storage prefetch"),
        ("enable_lmcache", "LMCache"),
        ("dllm_config", "diffusion LLMs (dllm)"),
    ]
    for attr, what in checks:
        if getattr(sched, attr, None):
            return what
    mode = getattr(sched, "disaggregation_mode", None)
    if mode is not None and str(getattr(mode, "name", mode)).upper() not in ("NULL", "NONE"):
        return f"prefill/decode disaggregation ({mode})"
    pp = getattr(getattr(sched, "server_args", None), "pp_size", 1) or 1
    if pp > 1:
        return "pipeline parallelism (--pp-size > 1)"
    return None


def _open_state_log(path: str) -> Any:
    pid = os.getpid()
    path = path.replace("{pid}", str(pid)) if "{pid}" in path else f"{path}.{pid}"
    return open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process


def driver_of(sched: Any, *, create: bool = True) -> PolicyDriver | None:
    """The :class:`PolicyDriver` of a scheduler (created on first use when the plugin is
    configured with a policy or a policy file); None when the plugin has no policy. With
    ``PREFIXSCHED_POLICY_FILE`` the file is checked on every call (:func:`_follow_policy_file`)."""
    d = sched.__dict__.get("_prefixsched_driver")
    cfg = _CONFIG
    if d is None and create and _AUTO_ATTACH and cfg is not None and (cfg.spec or cfg.policy_file):
        try:
            log = _open_state_log(cfg.state_log) if cfg.state_log else None
        except OSError as e:
            logger.error("prefixsched: cannot open PREFIXSCHED_STATE_LOG %r: %s (no state log)", cfg.state_log, e)
            log = None
        from prefixsched.reference.policies import create as create_policy

        d = PolicyDriver(
            cfg.new_policy() if cfg.spec else create_policy("fcfs"),
            spec=cfg.spec or "off",
            weights=cfg.weights,
            default_client=cfg.default_client,
            sglang_version=_VERSION or "0.5.23",
            state_log=log,
        )
        why = _unsupported(sched)
        if why is not None:
            d.active = False
            d.off_reason = f"unsupported: {why}"
            d.unsupported = True  # type: ignore[attr-defined]
            logger.error(
                "prefixsched: policy %s does not support %s; SGLang's own scheduler runs unchanged", cfg.spec, why
            )
        elif not cfg.spec:
            d.active = False
            d.off_reason = "no policy yet (PREFIXSCHED_POLICY_FILE)"
        else:
            logger.info("prefixsched: policy %s drives this scheduler's admission", cfg.spec)
        sched.__dict__["_prefixsched_driver"] = d
    if d is not None:
        if cfg is not None and cfg.policy_file and not getattr(d, "unsupported", False):
            _follow_policy_file(d, cfg)
        pol = getattr(sched, "policy", None)
        if pol is not None and getattr(pol, "_prefixsched_driver", None) is not d:
            try:
                pol._prefixsched_driver = d
            except AttributeError:  # pragma: no cover - a policy object with __slots__
                pass
    return d


NATIVE_WORDS = ("", "off", "native", "sglang")


def _follow_policy_file(d: PolicyDriver, cfg: PluginConfig) -> None:
    """``PREFIXSCHED_POLICY_FILE``: one policy spec (CLI syntax) in a text file, re-read when the
    file changes (size or mtime), so one server runs several policies in turn (the GPU script
    runs LPM, DLPM, VTC and k-LPM on one launch). ``off``, ``native``, ``sglang``, ``sglang:*``
    or an empty file: SGLang's own scheduling. A switch gives a fresh policy object (counters
    from zero); switch while the server is idle. A bad spec logs an error and runs native."""
    path = cfg.policy_file
    assert path is not None
    try:
        st = os.stat(path)
        sig: Any = (st.st_mtime_ns, st.st_size)
    except OSError:
        sig = None
    if sig == getattr(d, "_file_sig", "unset"):
        return
    d._file_sig = sig  # type: ignore[attr-defined]
    spec = ""
    if sig is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                spec = fh.read().strip()
        except OSError as e:
            logger.error("prefixsched: cannot read PREFIXSCHED_POLICY_FILE %r: %s; native scheduling", path, e)
    if spec in NATIVE_WORDS or spec.startswith("sglang:"):
        d.active = False
        d.off_reason = f"native scheduling ({spec or 'empty policy file'})"
        d.spec = spec or "off"
        logger.info("prefixsched: policy file %s: SGLang's own scheduling", path)
    else:
        from prefixsched.reference.policies import create as create_policy

        try:
            pol = create_policy(spec, **cfg.params)
        except Exception as e:  # noqa: BLE001
            d.active = False
            d.off_reason = f"bad policy file spec {spec!r}: {e}"
            logger.error("prefixsched: policy file %s holds %r: %s; SGLang's own scheduling", path, spec, e)
            return
        d.policy = pol
        d.spec = spec
        d.active = True
        d.off_reason = None
        logger.info("prefixsched: policy file %s: policy %s drives admission from now on", path, spec)
    if d.state_log is not None:
        import json

        d.state_log.write(json.dumps({"switch": d.spec, "step": d.step, "active": d.active}) + "\n")
        d.state_log.flush()


# ---------------------------------------------------------------------------------------------
# hooks (AROUND: fn(original, *args, **kwargs))


def _hook_adder_class(orig: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    cls = orig(self, *args, **kwargs)
    try:
        d = driver_of(self)
        if d is None or not d.active:
            return cls
        return bound_adder_class(d, self, cls)
    except Exception as e:  # noqa: BLE001
        d = driver_of(self, create=False)
        if d is not None:
            d.turn_off("get_prefill_adder_class", e)
        return cls


def _hook_prefill_raw(orig: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        d = driver_of(self)
    except Exception:  # noqa: BLE001
        logger.exception("prefixsched: creating the policy driver failed; SGLang's own scheduler runs")
        return orig(self, *args, **kwargs)
    if d is None or not d.active or _VERSION != "0.5.17":
        return orig(self, *args, **kwargs)
    mod = sys.modules[type(self).__module__] if type(self).__module__ in sys.modules else None
    mod = sys.modules.get("sglang.srt.managers.scheduler", mod)
    base = getattr(mod, "PrefillAdder", None)
    if base is None:
        return orig(self, *args, **kwargs)
    try:
        mod.PrefillAdder = bound_adder_class(d, self, base)
    except Exception as e:  # noqa: BLE001
        d.turn_off("_get_new_batch_prefill_raw", e)
        return orig(self, *args, **kwargs)
    try:
        return orig(self, *args, **kwargs)
    finally:
        mod.PrefillAdder = base


def _hook_calc_priority(orig: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """A no-op while a prefixsched policy drives the adder, unless the policy *is* one of SGLang's
    own (``Policy.native_policy()``: FCFS, LPM): then SGLang's ``calc_priority`` runs as that
    ``--schedule-policy`` (with the policy's own LPM fallback threshold, if it sets one), whatever
    the server was launched with: it sorts the queue and refreshes LRU stamps as SGLang always does,
    and the policy walks ``snap.queue()``. The ``sglang`` engine models exactly this."""
    d = getattr(self, "_prefixsched_driver", None)
    if d is None or not d.active:
        return orig(self, *args, **kwargs)
    nat = d.policy.native_policy()
    if nat is None:
        return None
    # SGLang's own calc_priority, as the policy's --schedule-policy (and its LPM fallback), whatever
    # the server was launched with
    from sglang.srt.managers import schedule_policy as sp

    name, opts = nat
    enum = sp.CacheAwarePolicy(name) if name in {e.value for e in sp.CacheAwarePolicy} else sp.CacheAgnosticPolicy(name)
    fb = opts.get("fcfs_fallback")
    saved = (self.policy, sp.WAITING_QUEUE_PREFIX_MATCH_MAX)
    self.policy = enum
    if fb is not None:
        sp.WAITING_QUEUE_PREFIX_MATCH_MAX = int(fb)
    try:
        return orig(self, *args, **kwargs)
    finally:
        self.policy, sp.WAITING_QUEUE_PREFIX_MATCH_MAX = saved


def _hook_add_request(orig: Any, self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    out = orig(self, req, *args, **kwargs)
    try:
        d = driver_of(self)
        if d is None or not d.active:
            return out
        is_retracted = kwargs.get("is_retracted", args[0] if args else False)
        q = self.waiting_queue
        if q and q[-1] is req:
            if is_retracted:
                d.requeue(req)
            else:
                d.on_arrival(self, req)
    except Exception as e:  # noqa: BLE001
        d = driver_of(self, create=False)
        if d is not None:
            d.turn_off("_add_request_to_queue", e)
    return out


def _hook_process_result(orig: Any, self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    d = driver_of(self, create=False)
    before = None
    if d is not None and d.active:
        try:
            fm = batch.forward_mode
            if fm.is_extend() or fm.is_decode():
                before = {id(r): (len(r.output_ids), r.finished()) for r in batch.reqs}
        except Exception as e:  # noqa: BLE001
            d.turn_off("process_batch_result", e)
    out = orig(self, batch, *args, **kwargs)
    if before is not None and d is not None:
        d.on_step_end(self, batch, before)
    return out
