"""Importing SGLang from prefixsched: lazily, version-checked, and on a CPU-only machine.

Responsibilities (the same as the project's ``prefixsched.integration.sglang_env``; this is the
plugin's own small copy, to be folded into that module at merge):

- :func:`import_sglang` imports ``sglang`` only when asked (prefixsched never needs it otherwise)
  and returns ``(module, version)``, or raises :class:`SGLangUnavailable` with the reason.
- :func:`check_version` says whether a version is one this plugin was written against
  (:data:`SUPPORTED_VERSIONS`: 0.5.23, the CPU venv of the conformance tests, and 0.5.17, the GPU
  image of ``integration/gpu/run_live.sh``; sglang.md §2-3).
- :func:`install_torchvision_standin`: every PyPI torchvision wheel links the CUDA build of torch,
  so on a CPU torch ``import torchvision`` fails, and SGLang imports ``torchvision.transforms`` at
  module level (``configs/__init__.py -> ... -> multimodal/internvl_utils.py``). Only when the real
  package cannot be imported, transformers' ``is_torchvision_available()`` is called once first
  (it caches False, so transformers never takes its torchvision paths) and stub modules
  ``torchvision``, ``torchvision.transforms``, ``torchvision.transforms.functional`` (with an
  ``InterpolationMode`` enum), ``torchvision.transforms.v2[.functional]`` and ``torchvision.io``;
  any other name read from them is a placeholder class whose use raises (0.5.17 imports
  ``decode_jpeg`` and ``pil_to_tensor`` at module level) are registered in ``sys.modules``, each with a ``ModuleSpec``
  (sglang.md §2). Nothing of torchvision is ever executed by the scheduler classes.
- :func:`publish_cpu_runtime`: SGLang 0.5.23's scheduler classes read process-wide config
  namespaces; off a real server they must be published first (else ``ValueError: config namespace
  'disagg' not published``). It writes a tiny Llama ``config.json`` into a temporary directory (no
  hub access) and publishes ``ServerArgs(model_path=DIR, device="cpu", skip_tokenizer_init=True)``
  with ``role="scheduler"`` (``srt/runtime_context.py::publish``). 0.5.17 has no runtime context:
  nothing to publish there.

The version is read from ``sglang.version.__version__`` (the code actually imported), not from the
installed distribution's metadata, so a source tree put first on ``sys.path`` reports itself.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import json
import os
import sys
import tempfile
import types
from typing import Any

__all__ = [
    "SUPPORTED_VERSIONS",
    "SGLangUnavailable",
    "import_sglang",
    "sglang_version",
    "check_version",
    "install_torchvision_standin",
    "publish_cpu_runtime",
    "TINY_LLAMA_CONFIG",
]

#: Versions the hook targets were read from: version -> where it is used.
SUPPORTED_VERSIONS: dict[str, str] = {
    "0.5.23": "CPU venv (conformance and plugin tests)",
    "0.5.17": "GPU image (sglang.md §3: newest release pinning torch 2.11.0)",
}

#: A two-layer Llama, enough for ``ServerArgs`` to resolve a model config offline.
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 65536,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float32",
}


class SGLangUnavailable(ImportError):
    """SGLang cannot be imported here (not installed, or an import error); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


_STANDIN = False
_PUBLISHED: str | None = None
_MODEL_DIR: str | None = None


def install_torchvision_standin(*, transformers_sees_it: bool = False) -> bool:
    """Register the torchvision stub modules if the real torchvision cannot be imported.

    ``transformers_sees_it``: make transformers' ``is_torchvision_available()`` answer True
    instead of caching False. SGLang 0.5.17 registers image processors at import
    (``configs/janus_pro.py``), which transformers refuses without torchvision; the stand-in
    classes are never called by the scheduler. Returns True if the stand-in is (now or already)
    installed, False if the real package imported. Idempotent.
    """
    global _STANDIN
    if _STANDIN:
        return True
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "__file__", None):
        return False
    try:
        importlib.import_module("torchvision")
        return False
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    try:  # make transformers cache "no torchvision" before the stubs exist (0.5.23 recipe)
        from transformers.utils import import_utils

        if transformers_sees_it:
            _transformers_sees_torchvision(import_utils)
        else:
            import_utils.is_torchvision_available()
    except Exception:
        pass

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        NEAREST_EXACT = "nearest-exact"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"
        BOX = "box"
        HAMMING = "hamming"
        LANCZOS = "lanczos"

    def _unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is a stand-in here (CPU torch): image decoding is unavailable")

    def _missing(modname: str) -> Any:
        def __getattr__(attr: str) -> Any:  # any other name: a class whose use raises
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (), {"__init__": _unavailable, "__module__": modname})

        return __getattr__

    mods = {}
    names = (
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.transforms.v2",
        "torchvision.transforms.v2.functional",
        "torchvision.io",
    )
    for name in names:
        m = types.ModuleType(name, "prefixsched stand-in: the real torchvision needs CUDA torch")
        pkg = name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2")
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=pkg)
        if pkg:
            m.__path__ = []
        m.__getattr__ = _missing(name)  # type: ignore[attr-defined]
        mods[name] = m
        sys.modules[name] = m
    mods["torchvision.transforms.functional"].InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    mods["torchvision.transforms"].InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    mods["torchvision"].transforms = mods["torchvision.transforms"]  # type: ignore[attr-defined]
    mods["torchvision"].io = mods["torchvision.io"]  # type: ignore[attr-defined]
    mods["torchvision"].__version__ = "0.0.0+prefixsched.standin"  # type: ignore[attr-defined]
    mods["torchvision.transforms"].v2 = mods["torchvision.transforms.v2"]  # type: ignore[attr-defined]
    mods["torchvision.transforms.v2"].functional = mods["torchvision.transforms.v2.functional"]  # type: ignore[attr-defined]
    io = mods["torchvision.io"]
    io.decode_jpeg = io.decode_image = io.read_image = _unavailable  # type: ignore[attr-defined]
    io.ImageReadMode = enum.Enum("ImageReadMode", "UNCHANGED GRAY GRAY_ALPHA RGB RGB_ALPHA")  # type: ignore[attr-defined]
    _STANDIN = True
    return True


def _transformers_sees_torchvision(import_utils: Any) -> None:
    """Make transformers answer "torchvision is available" everywhere it asks (the lru-cached
    predicate, the ``_is_package_available`` probe and the backends table)."""

    def yes() -> bool:
        return True

    orig = import_utils.is_torchvision_available
    import_utils.is_torchvision_available = yes
    if hasattr(import_utils, "is_torchvision_v2_available"):
        import_utils.is_torchvision_v2_available = yes
    mapping = getattr(import_utils, "BACKENDS_MAPPING", None)
    if isinstance(mapping, dict):
        for k, v in list(mapping.items()):
            if isinstance(v, tuple) and v and v[0] is orig:
                mapping[k] = (yes, *v[1:])
    for mod in list(sys.modules.values()):  # stale `from ... import is_torchvision_available`
        if getattr(mod, "is_torchvision_available", None) is orig:
            try:
                mod.is_torchvision_available = yes  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass


def sglang_version() -> str | None:
    """The version of the SGLang code importable here, or None if there is none.

    Read from the package's ``_version.py`` found on ``sys.path`` without importing ``sglang``
    (0.5.17's ``sglang/__init__.py`` already imports torchvision), else from an imported
    ``sglang.version``, else from the installed distribution's metadata.
    """
    import importlib.util
    import re

    mod = sys.modules.get("sglang")
    try:
        spec = importlib.util.find_spec("sglang") if mod is None else mod.__spec__
    except (ImportError, ValueError):
        spec = None
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec is not None else []
    for loc in locations:
        path = os.path.join(loc, "_version.py")
        try:
            with open(path, encoding="utf-8") as fh:
                m = re.search(r"""^__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", fh.read(), re.M)
        except OSError:
            continue
        if m:
            return m.group(1)
    if "sglang.version" in sys.modules:
        return str(sys.modules["sglang.version"].__version__)
    if spec is None:
        return None
    try:
        from importlib import metadata

        return metadata.version("sglang")
    except Exception:
        return None


def check_version(version: str | None) -> tuple[bool, str]:
    """``(ok, message)`` for an SGLang version (:data:`SUPPORTED_VERSIONS`)."""
    if version is None:
        return False, "SGLang is not installed"
    if version in SUPPORTED_VERSIONS:
        return True, f"SGLang {version} ({SUPPORTED_VERSIONS[version]})"
    known = ", ".join(sorted(SUPPORTED_VERSIONS))
    return False, f"SGLang {version} is not a version this plugin supports (supported: {known})"


def import_sglang(*, standin: bool = True) -> tuple[types.ModuleType, str]:
    """Import the SGLang scheduler modules and return ``(sglang, version)``.

    Parameters
    ----------
    standin:
        Install the torchvision stand-in first when the real torchvision cannot be imported.

    Raises
    ------
    SGLangUnavailable
        If ``sglang`` is not installed or ``sglang.srt.managers.scheduler`` fails to import (the
        message names the exception).
    """
    version = sglang_version()
    if version is None:
        raise SGLangUnavailable("SGLang is not installed (pip install 'prefixsched[sglang]' and sglang)")
    if standin:
        install_torchvision_standin(transformers_sees_it=version == "0.5.17")
    try:
        import sglang

        importlib.import_module("sglang.srt.managers.scheduler")
    except Exception as e:  # noqa: BLE001 - reported, never raised through
        raise SGLangUnavailable(f"importing SGLang {version} failed: {type(e).__name__}: {e}") from e
    return sglang, version


def publish_cpu_runtime(model_dir: str | None = None, **server_args: Any) -> str:
    """Publish SGLang's runtime config for a CPU process (module docstring); returns the model
    directory used. ``server_args`` are extra ``ServerArgs`` fields (``chunked_prefill_size``,
    ``pp_max_micro_batch_size``, ...); without them the call is idempotent per process, with
    them it re-publishes (SGLang: last publish wins). On SGLang without ``srt.runtime_context``
    (0.5.17) this only writes the config directory.

    Raises
    ------
    SGLangUnavailable
        If SGLang cannot be imported or ``publish`` fails (the message names the exception).
    """
    global _PUBLISHED, _MODEL_DIR
    if _PUBLISHED is not None and not server_args and model_dir in (None, _PUBLISHED):
        return _PUBLISHED
    import_sglang()
    if model_dir is None:
        if _MODEL_DIR is None:
            _MODEL_DIR = tempfile.mkdtemp(prefix="prefixsched-sgl-")
            with open(os.path.join(_MODEL_DIR, "config.json"), "w", encoding="utf-8") as fh:
                json.dump(TINY_LLAMA_CONFIG, fh)
        model_dir = _MODEL_DIR
    try:
        rc = importlib.import_module("sglang.srt.runtime_context")
    except ModuleNotFoundError:
        _PUBLISHED = model_dir
        return model_dir
    try:
        from sglang.srt.server_args import ServerArgs

        args = ServerArgs(model_path=model_dir, device="cpu", skip_tokenizer_init=True, **server_args)
        rc.publish(args, role="scheduler")
    except Exception as e:  # noqa: BLE001
        raise SGLangUnavailable(f"publishing SGLang's CPU runtime config failed: {type(e).__name__}: {e}") from e
    _PUBLISHED = model_dir
    return model_dir


def resolvable(target: str) -> bool:
    """True if the dotted ``module.attr.name`` hook target exists in the installed SGLang."""
    import pkgutil

    obj_path, _, attr = target.rpartition(".")
    try:
        return hasattr(pkgutil.resolve_name(obj_path), attr)
    except Exception:  # noqa: BLE001 - any import failure means "not resolvable"
        return False
