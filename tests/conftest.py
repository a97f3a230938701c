"""Shared pytest configuration: hypothesis profiles and the ``slow`` marker.

Hypothesis profiles (style_anchors.md §3), chosen by the environment variable
``PREFIXSCHED_HYPOTHESIS_PROFILE`` (default: ``ci`` when ``CI`` is set, else ``dev``), or by
hypothesis's own ``pytest --hypothesis-profile=NAME``:

- ``dev``  : local default. 25 examples, no deadline (2 shared cores), example database on.
- ``ci``   : extends hypothesis's built-in ``ci`` profile (derandomize=True, database=None,
  print_blob=True, too_slow suppressed) with deadline=None and 50 examples (twice dev's), so CI is
  reproducible and still well under its time budget.
- ``deep`` : nightly / before a release: 1000 examples, ``stateful_step_count=200``, no
  deadline, derandomize off (new examples every run).

Tests that want the profile's count must not hard-code ``max_examples`` in ``@settings``.

Slow tests (``@pytest.mark.slow``) are skipped unless ``--runslow`` is given or the environment
sets ``PREFIXSCHED_SLOW=1``. CI (``.ci/run``) runs ``pytest`` and then
``pytest -m slow --runslow`` with the ``ci`` profile, i.e. every slow test in its reduced form.

Tests marked ``sglang`` drive SGLang's own classes. Without a supported SGLang they skip with
the reason, unless ``PREFIXSCHED_REQUIRE_SGLANG=1`` (set by ``.ci/run`` in its SGLang venv):
then they fail (``prefixsched.integration.sglang_env.test_gate``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci",
    settings.get_profile("ci"),
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=1000,
    stateful_step_count=200,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(
    os.environ.get("PREFIXSCHED_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("sglang") for item in items):
        from prefixsched.integration.sglang_env import gate_for_tests

        action, reason = gate_for_tests()
        if action == "skip":
            for item in items:
                if item.get_closest_marker("sglang"):
                    item.add_marker(pytest.mark.skip(reason=reason))
        elif action == "fail":
            config.stash[_SGLANG_FAILURE] = reason
    if config.getoption("--runslow") or os.environ.get("PREFIXSCHED_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: give --runslow or PREFIXSCHED_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


_SGLANG_FAILURE = pytest.StashKey[str]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.config.stash.get(_SGLANG_FAILURE, None)
    if reason is not None and item.get_closest_marker("sglang"):
        pytest.fail(reason, pytrace=False)
