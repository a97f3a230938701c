"""The policy registry: duplicate names raise, unknown names list the known ones, third-party
policies arrive through the ``prefixsched.policies`` entry-point group, specs parse."""

from __future__ import annotations

import math

import pytest

import prefixsched.reference.policies as registry
from prefixsched.errors import InputError
from prefixsched.reference.policies import Decision, Policy, available, create, get, parse_spec, register

BUILTINS = {"fcfs", "lpm", "dfs-weight", "k-lpm", "vtc", "dlpm", "random"}


def test_builtins_are_registered_with_descriptions():
    av = available()
    assert BUILTINS <= set(av)
    assert all(av[n].strip() for n in BUILTINS)
    assert list(av) == sorted(av)


def test_duplicate_name_raises():
    class Again(Policy):
        name = "lpm"
        description = "a second lpm"

        def decide(self, snap):
            return Decision()

    with pytest.raises(ValueError, match="duplicate policy name 'lpm'"):
        register(Again)
    assert get("lpm") is not Again


def test_nameless_policy_is_refused():
    class NoName(Policy):
        def decide(self, snap):
            return Decision()

    with pytest.raises(ValueError, match="no name"):
        register(NoName)


def test_unknown_policy_lists_known():
    with pytest.raises(InputError) as e:
        get("lmp")
    msg = str(e.value)
    assert "unknown policy 'lmp'" in msg
    for n in BUILTINS:
        assert n in msg


def test_parse_spec_primary_param():
    assert parse_spec("k-lpm:4") == ("k-lpm", {"k": 4})
    assert parse_spec("k-lpm:inf") == ("k-lpm", {"k": math.inf})
    assert parse_spec("dlpm:2500.5") == ("dlpm", {"quantum": 2500.5})
    assert parse_spec("fcfs") == ("fcfs", {})
    with pytest.raises(InputError, match="takes no"):
        parse_spec("fcfs:2")
    with pytest.raises(InputError, match="not a number"):
        parse_spec("dlpm:lots")


def test_create_passes_only_accepted_params_and_spec_wins():
    p = create("dlpm:3000", quantum=9999, k=5, seed=1)
    assert p.params()["quantum"] == 3000
    q = create("k-lpm", quantum=9999, k=3)
    assert q.params()["k"] == 3
    f = create("fcfs", quantum=1, k=2, seed=3)  # FCFS takes none of them
    assert f.name == "fcfs"


class _FakeEntryPoint:
    def __init__(self, name, obj):
        self.name = name
        self._obj = obj

    def load(self):
        return self._obj


def test_entry_point_plugins_are_loaded(monkeypatch):
    class Plugin(Policy):
        name = "third-party-oldest"
        description = "a plugin policy: admits the oldest request only"

        def decide(self, snap):
            b = snap.batch()
            for e in snap.fcfs():
                if b.try_add(e):
                    break
            return Decision(tuple(b.admitted))

    def fake_entry_points(group=None):
        assert group == "prefixsched.policies"
        return [_FakeEntryPoint("third-party-oldest", Plugin)]

    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert get("third-party-oldest") is Plugin
    assert "third-party-oldest" in available()

    # and it runs in the simulator like a built-in
    from prefixsched.reference.simulator import simulate
    from prefixsched.theory.cost import CostModel
    from prefixsched.theory.model import Instance, Request
    from prefixsched.theory.schedule import check_trace

    inst = Instance(
        requests=tuple(Request(f"r{i}", "c", float(i), (1, 2, i + 3), 2) for i in range(4)),
        cost_model=CostModel.token_units(),
    )
    tr = simulate(inst, create("third-party-oldest"))
    assert check_trace(inst, tr).ok
    assert tr.policy["name"] == "third-party-oldest"


def test_entry_point_that_is_not_a_policy_is_refused(monkeypatch):
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group=None: [_FakeEntryPoint("junk", object())])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="does not load a Policy subclass"):
        available()


def test_lpm_spec_sets_sglangs_fcfs_fallback():
    """``lpm:128`` is SGLang's LPM, which falls back to FCFS above 128 waiting requests."""
    assert parse_spec("lpm:128") == ("lpm", {"fcfs_fallback": 128})
    assert create("lpm:128").params()["fcfs_fallback"] == 128
    assert create("lpm").params()["fcfs_fallback"] is None
