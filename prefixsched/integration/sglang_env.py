"""Loading SGLang lazily, behind a version check, on a CPU-only machine.

Nothing in prefixsched imports SGLang (or torch) at import time: every function that needs it
calls :func:`load` first, which

1. reads the installed SGLang version from the package metadata (no import) and checks it
   against :data:`SUPPORTED_VERSIONS` (0.5.23: the CPU conformance venv that ``.ci/run`` builds;
   0.5.17: the GPU image's version, ``/work/shared/specs/sglang.md`` §3);
2. applies the torchvision stand-in (spec §2) *only if* the real ``torchvision`` cannot be
   imported: every PyPI torchvision wheel links the CUDA build of torch, and
   ``sglang.srt.configs`` imports ``torchvision.transforms`` at module level;
3. imports the scheduler modules (``sglang.srt.managers.schedule_policy`` etc., ~5 s on CPU);
4. publishes the runtime config SGLang's policies read (``get_schedule()``, ``get_disagg()``,
   ...): a tiny Llama ``config.json`` in a private temporary directory and
   ``publish(ServerArgs(model_path=DIR, device="cpu", skip_tokenizer_init=True, ...),
   role="scheduler")`` (``srt/runtime_context.py::publish``). ``ServerArgs(model_path="dummy")``,
   what SGLang's own tests use, needs the Hugging Face hub and fails offline.

Errors: :class:`SGLangUnavailable` (a :class:`~prefixsched.errors.PrefixschedError`) with a
one-line reason when SGLang is missing, its version is not supported, or it fails to import;
the message says how to install the supported version.

Decisions (the spec leaves them open):

- The stand-in registers ``torchvision``, ``torchvision.transforms`` and
  ``torchvision.transforms.functional`` (each with a ``ModuleSpec``), the last two exposing an
  ``InterpolationMode`` enum; any other attribute raises ``AttributeError`` naming the stand-in.
  transformers' ``is_torchvision_available()`` is called once *before* the stubs go in, so its
  ``lru_cache`` keeps ``False`` and transformers never tries to use them.
- :func:`publish_config` re-publishes only when the requested :class:`ServerArgs` fields change
  (SGLang's publish is process-wide, last publish wins); the published fields are returned by
  :func:`published_config`.
- ``PREFIXSCHED_SGLANG_ANY_VERSION=1`` lets an unsupported version load (with the check's reason
  kept in :func:`status`), for trying a new release; nothing in CI sets it.
"""

from __future__ import annotations

import atexit
import enum
import importlib
import importlib.machinery
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass, field
from typing import Any

from prefixsched.errors import PrefixschedError

__all__ = [
    "SUPPORTED_VERSIONS",
    "SGLangUnavailable",
    "SGLangStatus",
    "installed_version",
    "check_version",
    "status",
    "available",
    "load",
    "publish_config",
    "published_config",
    "published_server_args",
    "torchvision_stand_in_active",
    "TINY_LLAMA_CONFIG",
    "REQUIRE_ENV",
    "gate_for_tests",
]

#: Environment variable under which tests marked ``sglang`` fail (not skip) without SGLang.
REQUIRE_ENV = "PREFIXSCHED_REQUIRE_SGLANG"

#: Supported SGLang versions -> where each one is used.
SUPPORTED_VERSIONS: dict[str, str] = {
    "0.5.23": "CPU conformance venv built by .ci/run (torch 2.13.0+cpu)",
    "0.5.17": "GPU image (torch 2.11.0+cu130; /work/shared/specs/sglang.md section 3)",
}

INSTALL_HINT = (
    "install the CPU build as .ci/run does: torch==2.13.0+cpu, then "
    "`pip install --no-deps sglang==0.5.23` plus the minimal dependency list "
    "(/work/shared/specs/sglang.md section 2)"
)

#: The tiny Llama config published for the scheduler classes (no weights are ever loaded).
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 1,
    "vocab_size": 32000,
    "max_position_embeddings": 1 << 20,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float32",
}

_TORCHVISION_STUBS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class SGLangUnavailable(PrefixschedError, ImportError):
    """SGLang is not installed, has an unsupported version, or fails to import (message says
    which, and how to install the supported version)."""


@dataclass
class SGLangStatus:
    """What :func:`load` found. ``version`` is None when SGLang is not installed."""

    version: str | None
    supported: bool
    reason: str | None = None
    loaded: bool = False
    torchvision_stand_in: bool = False
    config: dict[str, Any] = field(default_factory=dict)


_STATE: dict[str, Any] = {"loaded": False, "stand_in": False, "config": None, "model_dir": None}


def installed_version() -> str | None:
    """SGLang's version from the package metadata (SGLang is not imported), or None."""
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_version(version: str | None) -> None:
    """Raise :class:`SGLangUnavailable` unless ``version`` is in :data:`SUPPORTED_VERSIONS`.

    ``None`` means not installed. The message names the version found and the supported ones.
    """
    if version is None:
        raise SGLangUnavailable(f"sglang is not installed; {INSTALL_HINT}")
    if version not in SUPPORTED_VERSIONS:
        known = ", ".join(f"{v} ({w})" for v, w in SUPPORTED_VERSIONS.items())
        raise SGLangUnavailable(f"sglang {version} is not supported; supported: {known}")


def status() -> SGLangStatus:
    """The version check's verdict without importing SGLang (``loaded`` tells whether
    :func:`load` already ran in this process)."""
    v = installed_version()
    try:
        check_version(v)
        ok, reason = True, None
    except SGLangUnavailable as e:
        ok, reason = False, str(e)
    return SGLangStatus(
        version=v,
        supported=ok,
        reason=reason,
        loaded=_STATE["loaded"],
        torchvision_stand_in=_STATE["stand_in"],
        config=dict(_STATE["config"] or {}),
    )


def available() -> tuple[bool, str | None]:
    """``(True, None)`` if :func:`load` would get past the version check, else ``(False, reason)``."""
    st = status()
    if st.supported or (st.version is not None and os.environ.get("PREFIXSCHED_SGLANG_ANY_VERSION") == "1"):
        return True, None
    return False, st.reason


def gate_for_tests(environ: dict[str, str] | None = None) -> tuple[str, str | None]:
    """What the test suite does with tests marked ``sglang``: ``("run", None)`` when SGLang
    passes the version check, else ``("fail", reason)`` if ``PREFIXSCHED_REQUIRE_SGLANG=1``
    (``.ci/run``'s SGLang venv sets it, so a broken install cannot pass as skipped) or
    ``("skip", reason)``. ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    ok, reason = available()
    if ok:
        return "run", None
    if env.get(REQUIRE_ENV) == "1":
        return "fail", f"{REQUIRE_ENV}=1 but SGLang cannot be used: {reason}"
    return "skip", f"sglang: {reason}"


def torchvision_stand_in_active() -> bool:
    """True when :func:`load` had to register the torchvision stand-in."""
    return bool(_STATE["stand_in"])


def _real_torchvision_importable() -> bool:
    before = {k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")}
    try:
        importlib.import_module("torchvision.transforms")
        return True
    except Exception:  # ImportError, or RuntimeError/OSError from a CUDA-linked wheel
        for k in [k for k in sys.modules if (k == "torchvision" or k.startswith("torchvision.")) and k not in before]:
            del sys.modules[k]
        return False


class InterpolationMode(enum.Enum):
    """Stand-in for ``torchvision.transforms.InterpolationMode`` (values as torchvision's)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name, f"prefixsched stand-in for {name} (the real torchvision cannot be imported)")
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(attr: str) -> Any:  # noqa: N807 (module __getattr__)
        raise AttributeError(
            f"{name}.{attr} is not available: prefixsched registered a torchvision stand-in because "
            "the real torchvision cannot be imported against this torch build"
        )

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def _apply_torchvision_stand_in() -> bool:
    """Register the stand-in modules when the real torchvision cannot be imported (spec §2).
    Returns True if the stand-in is (now) in place."""
    if _STATE["stand_in"]:
        return True
    if _real_torchvision_importable():
        return False
    try:  # cache transformers' verdict before the stubs make find_spec succeed
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()
    except Exception:
        pass
    mods = {n: _stub_module(n) for n in _TORCHVISION_STUBS}
    mods["torchvision.transforms"].InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    mods["torchvision.transforms.functional"].InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    mods["torchvision"].transforms = mods["torchvision.transforms"]  # type: ignore[attr-defined]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    sys.modules.update(mods)
    _STATE["stand_in"] = True
    return True


def _model_dir() -> str:
    d = _STATE["model_dir"]
    if d is None:
        d = tempfile.mkdtemp(prefix="prefixsched-sglang-model-")
        with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(TINY_LLAMA_CONFIG, fh)
        atexit.register(shutil.rmtree, d, True)
        _STATE["model_dir"] = d
    return d


def load() -> types.SimpleNamespace:
    """Check the version, apply the torchvision stand-in if needed, import SGLang's scheduler
    modules and publish the default runtime config (module docstring). Idempotent.

    Returns
    -------
    types.SimpleNamespace
        The SGLang modules the conformance code uses: ``schedule_policy``, ``schedule_batch``,
        ``radix_cache``, ``base_prefix_cache``, ``allocator_token``, ``allocator_paged``,
        ``memory_pool``, ``sampling_params``, ``new_token_ratio``, ``scheduler`` (the last may be
        None when ``sglang.srt.managers.scheduler`` fails to import; ``scheduler_error`` then
        says why).

    Raises
    ------
    SGLangUnavailable
        SGLang missing, unsupported (unless ``PREFIXSCHED_SGLANG_ANY_VERSION=1``), or an import
        failure (the message names the missing module).
    """
    if _STATE["loaded"]:
        return _STATE["mods"]
    v = installed_version()
    try:
        check_version(v)
    except SGLangUnavailable:
        if v is None or os.environ.get("PREFIXSCHED_SGLANG_ANY_VERSION") != "1":
            raise
    _apply_torchvision_stand_in()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Only CUDA ... support AWQ/GGUF" etc. on CPU
            mods = types.SimpleNamespace(
                schedule_policy=importlib.import_module("sglang.srt.managers.schedule_policy"),
                schedule_batch=importlib.import_module("sglang.srt.managers.schedule_batch"),
                radix_cache=importlib.import_module("sglang.srt.mem_cache.radix_cache"),
                base_prefix_cache=importlib.import_module("sglang.srt.mem_cache.base_prefix_cache"),
                allocator_token=importlib.import_module("sglang.srt.mem_cache.allocator.token"),
                allocator_paged=importlib.import_module("sglang.srt.mem_cache.allocator.paged"),
                memory_pool=importlib.import_module("sglang.srt.mem_cache.memory_pool"),
                sampling_params=importlib.import_module("sglang.srt.sampling.sampling_params"),
                new_token_ratio=importlib.import_module(
                    "sglang.srt.managers.scheduler_components.new_token_ratio_tracker"
                ),
                scheduler=None,
                scheduler_error=None,
            )
            try:
                mods.scheduler = importlib.import_module("sglang.srt.managers.scheduler")
            except Exception as e:  # the replay falls back to its own loop (conformance docstring)
                mods.scheduler_error = f"{type(e).__name__}: {e}"
    except ImportError as e:
        raise SGLangUnavailable(
            f"sglang {v} is installed but fails to import ({type(e).__name__}: {e}); {INSTALL_HINT}"
        ) from e
    _STATE["mods"] = mods
    _STATE["loaded"] = True
    publish_config()
    return mods


def publish_config(**server_args: Any) -> dict[str, Any]:
    """Publish ``ServerArgs(model_path=<tiny llama>, device="cpu", skip_tokenizer_init=True,
    **server_args)`` for the role ``"scheduler"`` (``srt/runtime_context.py::publish``), unless
    the same fields are already published. Returns the published fields.

    Typical fields: ``schedule_conservativeness`` (float, default 1.0; NewTokenRatioTracker),
    ``retraction_policy`` ("length" | "priority"), ``schedule_policy``.

    Raises
    ------
    SGLangUnavailable
        Through :func:`load`.
    """
    if not _STATE["loaded"]:
        load()
        if not server_args:
            return dict(_STATE["config"])
    cfg = {"device": "cpu", "skip_tokenizer_init": True, **server_args}
    if _STATE["config"] == cfg:
        return dict(cfg)
    server_args_mod = importlib.import_module("sglang.srt.server_args")
    runtime_context = importlib.import_module("sglang.srt.runtime_context")
    log = logging.getLogger("sglang")
    level = log.level
    log.setLevel(logging.ERROR)  # CPU-fallback notices (no Intel AMX, ...) are not ours to print
    try:
        sa = server_args_mod.ServerArgs(model_path=_model_dir(), **cfg)
        runtime_context.publish(sa, role="scheduler")
    finally:
        log.setLevel(level)
    _STATE["config"] = cfg
    _STATE["server_args"] = sa
    return dict(cfg)


def published_config() -> dict[str, Any]:
    """The ServerArgs fields last published by :func:`publish_config` (empty before)."""
    return dict(_STATE["config"] or {})


def published_server_args() -> Any:
    """The ``ServerArgs`` object last published (None before :func:`load`)."""
    return _STATE.get("server_args")
