"""prefixsched.integration.sglang_env: version check, test gate, lazy import, torchvision stand-in.

Unmarked tests run everywhere (no SGLang needed); tests marked ``sglang`` need SGLang 0.5.23
(they skip without it, and fail instead under PREFIXSCHED_REQUIRE_SGLANG=1, as in .ci/run).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from prefixsched.errors import PrefixschedError
from prefixsched.integration import sglang_env as E


def test_supported_versions_declared():
    assert set(E.SUPPORTED_VERSIONS) == {"0.5.23", "0.5.17"}


@pytest.mark.parametrize("v", ["0.5.23", "0.5.17"])
def test_check_version_accepts_supported(v):
    E.check_version(v)


@pytest.mark.parametrize("v", ["0.5.22", "0.5.24", "0.4.0", "0.5.23rc1"])
def test_check_version_names_the_version_and_the_supported_ones(v):
    with pytest.raises(E.SGLangUnavailable) as ei:
        E.check_version(v)
    msg = str(ei.value)
    assert v in msg and "0.5.23" in msg and "0.5.17" in msg
    assert isinstance(ei.value, PrefixschedError) and isinstance(ei.value, ImportError)


def test_check_version_missing_says_how_to_install():
    with pytest.raises(E.SGLangUnavailable, match="not installed.*--no-deps sglang==0.5.23"):
        E.check_version(None)


def _fake_version(monkeypatch, v):
    monkeypatch.setattr(E, "installed_version", lambda: v)


def test_gate_runs_skips_or_fails(monkeypatch):
    _fake_version(monkeypatch, "0.5.23")
    assert E.gate_for_tests({}) == ("run", None)
    _fake_version(monkeypatch, None)
    action, reason = E.gate_for_tests({})
    assert action == "skip" and "not installed" in reason
    action, reason = E.gate_for_tests({E.REQUIRE_ENV: "1"})
    assert action == "fail" and E.REQUIRE_ENV in reason and "not installed" in reason
    _fake_version(monkeypatch, "0.6.0")
    assert E.gate_for_tests({E.REQUIRE_ENV: "1"})[0] == "fail"
    assert E.gate_for_tests({E.REQUIRE_ENV: "0"})[0] == "skip"


def test_unsupported_version_may_be_forced(monkeypatch):
    _fake_version(monkeypatch, "0.6.0")
    assert E.available()[0] is False
    monkeypatch.setenv("PREFIXSCHED_SGLANG_ANY_VERSION", "1")
    assert E.available() == (True, None)


def test_load_without_sglang_is_a_clear_error(monkeypatch):
    if E.status().loaded:
        pytest.skip("SGLang already loaded in this process")
    _fake_version(monkeypatch, None)
    with pytest.raises(E.SGLangUnavailable, match="not installed"):
        E.load()


def test_importing_prefixsched_imports_neither_torch_nor_sglang():
    code = (
        "import sys\n"
        "import prefixsched, prefixsched.cli, prefixsched.integration.sglang_env, "
        "prefixsched.integration.conformance, prefixsched.integration.cli\n"
        "prefixsched.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sglang', 'torchvision', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stand_in_stub_modules_have_specs_and_interpolation_mode():
    mod = E._stub_module("torchvision.transforms")
    assert mod.__spec__.name == "torchvision.transforms"
    with pytest.raises(AttributeError, match="stand-in"):
        mod.Resize  # noqa: B018
    assert E.InterpolationMode.BICUBIC.value == "bicubic"


def test_stand_in_only_when_real_torchvision_fails():
    # in a child process: a fake importable torchvision means no stand-in; a broken one means stand-in
    code = (
        "import sys, types, importlib.machinery\n"
        "from prefixsched.integration import sglang_env as E\n"
        "tv = types.ModuleType('torchvision'); tv.__path__ = []\n"
        "tr = types.ModuleType('torchvision.transforms')\n"
        "sys.modules.update({'torchvision': tv, 'torchvision.transforms': tr})\n"
        "assert E._apply_torchvision_stand_in() is False and not E.torchvision_stand_in_active()\n"
        "del sys.modules['torchvision'], sys.modules['torchvision.transforms']\n"
        "class Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('torchvision'): raise RuntimeError('operator torchvision::nms does not exist')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "assert E._real_torchvision_importable() is False\n"
        "sys.meta_path.pop(0)\n"
        "E._real_torchvision_importable = lambda: False\n"
        "assert E._apply_torchvision_stand_in() is True and E.torchvision_stand_in_active()\n"
        "assert sys.modules['torchvision.transforms.functional'].InterpolationMode.BILINEAR.value == 'bilinear'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.sglang
def test_load_imports_the_scheduler_classes_and_publishes_config():
    m = E.load()
    assert m.scheduler is not None, m.scheduler_error
    assert hasattr(m.schedule_policy, "PrefillAdder") and hasattr(m.radix_cache, "RadixCache")
    st = E.status()
    assert st.loaded and st.supported and st.version in E.SUPPORTED_VERSIONS
    from sglang.srt.runtime_context import get_schedule

    E.publish_config(schedule_conservativeness=0.5)
    assert get_schedule().schedule_conservativeness == 0.5
    assert E.published_config()["schedule_conservativeness"] == 0.5
    E.publish_config(schedule_conservativeness=1.0)
    assert get_schedule().schedule_conservativeness == 1.0
    import torch

    assert not torch.cuda.is_available()  # the conformance venv is CPU-only


@pytest.mark.sglang
def test_stand_in_state_matches_torchvision_importability():
    E.load()
    import importlib

    tv = sys.modules.get("torchvision")
    if E.torchvision_stand_in_active():
        assert tv is not None and tv.__spec__.origin is None  # the stub, not a file
    else:
        importlib.import_module("torchvision.transforms")
