"""``prefixsched check POLICY``: :func:`~prefixsched.testing.suite.check_policy` from the command
line, for a policy of your own (``module:Class``) or a registered one (``NAME``).

Registered by :func:`prefixsched.cli.build_parser` through :func:`add_parser`; hypothesis (the
``test`` extra) is imported only when the command runs. Exit status: 0 when every applicable
invariant holds and no measured figure exceeds a bound you gave, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from prefixsched.errors import InputError

__all__ = ["add_parser", "resolve_policy", "cmd_check"]


def resolve_policy(spec: str) -> Any:
    """``"package.module:Class"`` -> the class (imported); ``"NAME"`` -> the registered class.

    Raises :class:`InputError` (``POLICY``) if the module, the attribute or the name is unknown, or
    the object is not a :class:`~prefixsched.reference.policies.base.Policy` subclass."""
    from prefixsched.reference.policies import get
    from prefixsched.reference.policies.base import Policy

    if ":" not in spec:
        return get(spec)
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError("POLICY", f"cannot import module {mod_name!r}: {e}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError("POLICY", f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Policy)):
        raise InputError("POLICY", f"{spec!r} is not a Policy subclass (prefixsched.reference.policies.base.Policy)")
    return obj


def _params(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError("--params", f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise InputError("--params", f"must be a JSON object of constructor arguments, got {type(d).__name__}")
    return d


def cmd_check(args: argparse.Namespace) -> int:
    from prefixsched._io import dumps_json, write_json
    from prefixsched.testing.suite import check_policy

    cls = resolve_policy(args.policy)
    params = _params(args.params)
    try:
        cls(**params)
    except TypeError as e:
        raise InputError("--params", f"{args.policy} does not accept these parameters: {e}") from None
    rep = check_policy(
        cls,
        params=params,
        max_examples=args.examples,
        seed=args.seed,
        starvation_k=args.starvation_k,
        shrink=not args.no_shrink,
        max_gap_ratio=args.max_gap_ratio,
        max_starvation_picks=args.max_starvation_picks,
        max_starvation_s=args.max_starvation_s,
        compare=tuple(args.compare) if args.compare else None,
    )
    report = sys.stderr if args.json == "-" else sys.stdout
    print(rep, file=report)
    if args.json == "-":
        sys.stdout.write(dumps_json(rep.to_dict()))
    elif args.json is not None:
        write_json(args.json, rep.to_dict())
    return 0 if rep.ok else 1


def add_parser(sub: Any, positive_int: Any, nonneg_int: Any) -> None:
    """Add the ``check`` subcommand to ``sub`` (the CLI's subparsers)."""

    def bound(name: str):
        def parse(text: str) -> float:
            try:
                v = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}: must be a number, got {text!r}") from None
            if not v >= 0:
                raise argparse.ArgumentTypeError(f"{name}: must be >= 0, got {text!r}")
            return v

        return parse

    s = sub.add_parser(
        "check",
        help="judge a scheduling policy of your own: invariants, fairness, starvation, comparison",
        description=(
            "Run prefixsched's invariant suite (prefixsched.testing.check_policy) on a policy: progress, the "
            "independent checker, causality, work conservation, determinism, online-ness and the DLPM/VTC "
            "invariants that apply, then the measured figures of every policy (the backlogged service gap "
            "against VTC's bound, starvation of the oldest waiting request), each with a shrunk counterexample, "
            "and a comparison with LPM, VTC and DLPM on the same generated instances."
        ),
    )
    s.add_argument("policy", metavar="POLICY", help="module:Class (a Policy subclass of your own) or a registry NAME")
    s.add_argument("--params", metavar="JSON", default=None, help='constructor arguments, e.g. \'{"quantum": 16}\' (default: none)')
    s.add_argument("--examples", type=positive_int("--examples"), default=50, metavar="N",
                   help="generated instances (default: %(default)s)")
    s.add_argument("--seed", type=nonneg_int("--seed"), default=0, help="hypothesis seed (default: %(default)s)")
    s.add_argument("--starvation-k", type=positive_int("--starvation-k"), default=None, metavar="K",
                   help="also check INV-6 (the oldest request is served within every K picks) (default: off)")
    s.add_argument("--max-gap-ratio", type=bound("--max-gap-ratio"), default=None, metavar="R",
                   help="fail if a backlogged service gap exceeds R x VTC's bound (default: report only)")
    s.add_argument("--max-starvation-picks", type=bound("--max-starvation-picks"), default=None, metavar="P",
                   help="fail if more than P picks are made ahead of a fitting oldest request (default: report only)")
    s.add_argument("--max-starvation-s", type=bound("--max-starvation-s"), default=None, metavar="S",
                   help="fail if a fitting oldest request is passed over for longer than S (default: report only)")
    s.add_argument("--compare", nargs="*", default=["lpm", "vtc", "dlpm"], metavar="P",
                   help="policies to compare with on the same instances (default: %(default)s; none: --compare)")
    s.add_argument("--no-shrink", action="store_true", help="do not shrink counterexamples (faster) (default: shrink)")
    s.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT ('-': JSON alone on stdout) (default: none)")
    # the output path is checked before any work by the CLI's shared check (prefixsched.cli._check_outputs)
    s.set_defaults(_outputs=[("json", "--json", True)])
    s.set_defaults(func=cmd_check)
