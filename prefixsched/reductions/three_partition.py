r"""3-PARTITION -> TTFT-feasibility in the previous-query ("prev") cache model (Theorem 1).

The decision problem [KLPM]_ §1.4: given queries :math:`(x_i, t_i)` (token strings, arrival
times) and a common bound :math:`T`, is there an order, served one query at a time and
non-preemptively, in which every query has :math:`\mathrm{TTFT} \le T`? In the *prev* model with
:math:`c_\mathrm{attn} = 0` a query costs :math:`|x| - \mathrm{LCP}(x, x_\mathrm{prev})` time units
(one uncached token = one unit), where :math:`x_\mathrm{prev}` is the query served just before it
(empty for the first). The k-LPM paper proves NP-hardness by a reduction from 3-PARTITION; its gadget
was not retrieved, so this module builds **our own** reduction (klpm.md §2.2 [OURS]).

3-PARTITION
-----------
Given :math:`3m` positive integers :math:`a_1..a_{3m}` and :math:`B` with :math:`B/4 < a_i < B/2`
and :math:`\sum a_i = mB`: can the items be split into :math:`m` groups of sum :math:`B` each? (The
size bounds force every group to hold exactly three items.) Strongly NP-complete [GJ79]_, so a
reduction that is polynomial in :math:`m` *and* :math:`B` (unary) suffices.

Construction (constants as built)
---------------------------------
Gadget lengths: shared item prefix :math:`\lambda = 1` (token ``p``), pair prefix
:math:`\rho` (default :math:`\rho = m`), :math:`c_\alpha = 0`, :math:`c_\beta = 1`. Window and bound

.. math::

    W = m(\lambda + B) + m(\rho + c_\alpha + c_\beta) = m(B + \rho + 2), \qquad T = W
    \qquad (= m(B + m + 2) \text{ for } \rho = m).

Pin times, measured from the window start :math:`T` (:math:`j = 1..m`):

.. math::

    r_j = j(B + 1) + (j - 1)(\rho + 1) + \rho .

All tokens named below are distinct symbols. :math:`5m + 2` queries, all with ``output_len = 1``:

==============  ======================================================  =================
query (id)      prompt                                                  arrival
==============  ======================================================  =================
``Ha``          :math:`h^T` (blocker)                                   :math:`0`
``item{i}``     :math:`p\,u_i^{a_i}` (:math:`i = 0..3m-1`, 0-based)     :math:`T`
``Sa{j}``       :math:`r_j^{\rho}`                                      :math:`r_j`
``Sb{j}``       :math:`r_j^{\rho}\,\beta`                               :math:`T + r_j`
``Hb``          :math:`g^T` (blocker)                                   :math:`2T`
==============  ======================================================  =================

Token ids: ``h = 0``, ``g = 1``, ``p = 2``, ``beta = 3``, ``r_j = 3 + j``, ``u_i = 4 + m + i``.

Why each gadget works
---------------------
1. *Blockers.* ``Ha`` costs :math:`T` and nothing else has arrived at time 0, so it must run on
   :math:`[0, T]`; ``Hb`` costs :math:`T` and must run on :math:`[2T, 3T]`. A query served after
   ``Hb`` finishes after :math:`3T`, past every other deadline (items :math:`2T`, ``Sa{j}``
   :math:`T + r_j`, ``Sb{j}`` :math:`2T + r_j` with :math:`r_j < T`). So the other :math:`5m`
   queries run inside the window :math:`[T, 2T]` of length :math:`W`.
2. *Pairs are adjacent.* Items cost :math:`a_i`, plus :math:`\lambda` for the first of each
   maximal run of consecutive items (they share only ``p``). ``Sa{j}`` costs :math:`\rho`
   (it can only reuse from ``Sb{j}``, which arrives at ``Sa{j}``'s deadline); ``Sb{j}`` costs
   :math:`c_\beta = 1` right after ``Sa{j}`` and :math:`\rho + 1` otherwise. The work is therefore
   at least :math:`\lambda + mB + m(\rho + 1) + \rho \cdot \#\{\text{split pairs}\}` while the
   window holds :math:`W = m(\lambda + B) + m(\rho+1)`: the slack is :math:`(m-1)\lambda`. If
   :math:`\rho \ge (m-1)\lambda + 1` no pair can be split.
3. *Pins.* ``Sa{j}`` finishes by its deadline :math:`T + r_j`, ``Sb{j}`` cannot start before its
   arrival :math:`T + r_j` and directly follows ``Sa{j}``: it occupies exactly
   :math:`[T + r_j, T + r_j + 1]`. Since :math:`r_m + 1 = W`, the pins cut the window into
   :math:`m` segments :math:`[\,T + r_{j-1} + 1,\; T + r_j\,]` (:math:`r_0 + 1 := 0`), each of
   length :math:`B + 1 + \rho`, whose last query is ``Sa{j}`` (cost :math:`\rho`). The items of
   segment :math:`j` are consecutive and follow a non-item, so they pay :math:`\lambda` once:
   their values sum to at most :math:`B`. With :math:`\sum a_i = mB` every segment holds exactly
   :math:`B`, i.e. three items: a 3-partition.
4. *Converse.* For triples :math:`G_1..G_m`, the order ``Ha, G_1, Sa1, Sb1, ..., G_m, Sam, Sbm,
   Hb`` finishes ``Sa{j}`` at exactly :math:`T + r_j` (TTFT :math:`= T`), every item by
   :math:`2T` (TTFT :math:`\le T`), ``Sb{j}`` with TTFT 1 and the blockers with TTFT :math:`T`.

The condition :math:`\rho \ge (m-1)\lambda + 1` is what the default :math:`\rho = m` meets with
equality. With ``rho`` below it (the negative control, e.g. :math:`\rho = 1` at :math:`m = 3`)
a schedule may split pairs and spend the slack elsewhere, and the equivalence fails on some
NO instances (see ``papers/klpm/reduction.md`` for counts).

The constants of klpm.md §2.2 were re-derived here and are correct as stated (in particular
:math:`r_m + 1 = W`, so the last pin ends exactly at :math:`2T`).

Size: the reduced instance is **pseudo-polynomial** in :math:`B`: the blockers alone hold
:math:`2T = 2m(B + \rho + 2)` tokens and the items :math:`mB + 3m`, so the instance has
:math:`\Theta(m(B + m))` prompt tokens (:func:`reduction_tokens`). That is what a reduction
from a *strongly* NP-complete problem may do (the values are read in unary), but it means a
large ``B`` cannot be built: :func:`reduce_to_ttft_feasibility` refuses instances above
:data:`MAX_REDUCTION_TOKENS` before allocating anything.

Units: the sequential model's time unit (one uncached prompt token); the :class:`Instance` uses
:meth:`CostModel.token_units` (``c_attn = 0``, no step overheads) and ``page_size = 1``, so it can be
saved as JSON and solved by ``prefixsched solve --model prev``.

Triples are always tuples of **0-based indices into** ``ThreePartition.values`` (values may
repeat); :meth:`ThreePartition.values_of` maps them to values.

References
----------
.. [KLPM] Dexter et al., *LLM Query Scheduling with Prefix Reuse and Latency Constraints*,
   arXiv:2502.04677, Theorem 1; our reconstruction in ``specs/klpm.md`` §2.2.
.. [GJ79] Garey, Johnson, *Computers and Intractability*, 1979, problem [SP15].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefixsched.errors import CheckerError, InputError, SolverLimitError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request, ServiceWeights

__all__ = [
    "ThreePartition",
    "Reduction",
    "solve_exact",
    "brute_force",
    "reduce_to_ttft_feasibility",
    "planted_instance",
    "perturbed_instance",
    "LAMBDA",
    "MAX_REDUCTION_TOKENS",
    "reduction_tokens",
]

#: Length of the shared item prefix (token ``p``), λ of klpm.md §2.2.
LAMBDA = 1

#: Largest reduced instance built (prompt tokens; 2 million ~ 25 MB of JSON). With ``rho = m``
#: that is about ``3 m B + 3 m**2 <= 2e6``, e.g. ``B`` up to ~660,000 for ``m = 1``.
MAX_REDUCTION_TOKENS = 2_000_000

Triples = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class ThreePartition:
    """A 3-PARTITION instance: ``3m`` integers with ``B/4 < a_i < B/2`` (strict), summing to ``mB``.

    Parameters
    ----------
    values:
        The ``3m`` item sizes ``a_i`` (positive integers; repeats allowed).
    bound:
        The bin size ``B``.

    Raises
    ------
    InputError
        Naming ``values``/``values[i]``/``bound`` and the offending value: not integers, a count
        that is not a positive multiple of 3, a value outside ``(B/4, B/2)``, or a wrong sum.
    """

    values: tuple[int, ...]
    bound: int
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        vals = self.values
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
            raise InputError("values", f"must be a sequence of integers, got {vals!r}")
        vals = tuple(vals)
        for i, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"values[{i}]", f"must be an integer, got {v!r}")
        b = self.bound
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise InputError("bound", f"must be an integer >= 1, got {b!r}")
        if len(vals) == 0 or len(vals) % 3:
            raise InputError("values", f"need 3m values (m >= 1), got {len(vals)}")
        for i, v in enumerate(vals):
            if not (4 * v > b and 2 * v < b):
                raise InputError(f"values[{i}]", f"must satisfy B/4 < a_i < B/2 = ({b / 4:g}, {b / 2:g}), got {v}")
        m = len(vals) // 3
        if sum(vals) != m * b:
            raise InputError("values", f"must sum to m*B = {m}*{b} = {m * b}, got {sum(vals)}")
        object.__setattr__(self, "values", vals)
        if not self.description:
            object.__setattr__(self, "description", f"3-PARTITION m={m} B={b} values={list(vals)}")

    @property
    def m(self) -> int:
        """Number of groups (``len(values) // 3``)."""
        return len(self.values) // 3

    def values_of(self, triples: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
        """The values of index triples (e.g. for printing)."""
        return tuple(tuple(self.values[i] for i in t) for t in triples)

    def check(self, triples: Sequence[Sequence[int]]) -> Triples:
        """Validate index triples as a solution and return them in canonical form.

        Canonical: each triple sorted, the triples sorted. Raises :class:`InputError` (field
        ``triples``) if they are not ``m`` disjoint triples covering every index with sum ``B``.
        """
        m, b = self.m, self.bound
        try:
            ts = [tuple(sorted(int(i) for i in t)) for t in triples]
        except (TypeError, ValueError):
            raise InputError("triples", f"must be a list of index triples, got {triples!r}") from None
        if len(ts) != m or any(len(t) != 3 for t in ts):
            raise InputError("triples", f"need {m} triples of 3 indices, got {ts}")
        flat = sorted(i for t in ts for i in t)
        if flat != list(range(3 * m)):
            raise InputError("triples", f"must use every index 0..{3 * m - 1} exactly once, got {ts}")
        for t in ts:
            s = sum(self.values[i] for i in t)
            if s != b:
                raise InputError("triples", f"triple {t} (values {[self.values[i] for i in t]}) sums to {s}, not B = {b}")
        return tuple(sorted(ts))  # type: ignore[return-value]


def planted_instance(m: int, bound: int, *, seed: int = 0) -> ThreePartition:
    """A YES instance: ``m`` random triples in ``(B/4, B/2)`` each summing to ``B``, shuffled.

    Deterministic in ``seed`` (``numpy.random.default_rng``). The planted partition is one
    solution; there may be others.

    Raises
    ------
    InputError
        If ``m < 1`` or no triple of integers strictly inside ``(B/4, B/2)`` sums to ``B``.
    """
    import numpy as np

    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise InputError("m", f"must be an integer >= 1, got {m!r}")
    lo, hi = bound // 4 + 1, (bound - 1) // 2
    pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1) if lo <= bound - a - b <= hi]
    if not pairs:
        raise InputError("bound", f"no triple of integers in (B/4, B/2) sums to B = {bound}")
    rng = np.random.default_rng(seed)
    vals: list[int] = []
    for _ in range(m):
        a, b = pairs[int(rng.integers(len(pairs)))]
        vals += [a, b, bound - a - b]
    perm = rng.permutation(len(vals))
    return ThreePartition(tuple(vals[int(i)] for i in perm), bound)


def perturbed_instance(tp: ThreePartition, *, seed: int = 0, moves: int = 1) -> ThreePartition:
    """Move one unit from one value to another ``moves`` times, keeping every bound and the sum.

    Used to turn planted YES instances into (often) NO instances; decide the result exactly
    (:func:`solve_exact` / :func:`brute_force`). Deterministic in ``seed``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    vals = list(tp.values)
    b = tp.bound
    for _ in range(moves):
        for _try in range(1000):
            i, j = (int(x) for x in rng.choice(len(vals), size=2, replace=False))
            if 4 * (vals[i] + 1) > b and 2 * (vals[i] + 1) < b and 4 * (vals[j] - 1) > b and 2 * (vals[j] - 1) < b:
                vals[i] += 1
                vals[j] -= 1
                break
    return ThreePartition(tuple(vals), b)


def solve_exact(tp: ThreePartition, *, time_limit: float = 60.0, seed: int = 0) -> Triples | None:
    """Decide a 3-PARTITION instance exactly with OR-Tools CP-SAT.

    Model: boolean :math:`x_{ij}` (item i in bin j); :math:`\\sum_j x_{ij} = 1`,
    :math:`\\sum_i a_i x_{ij} = B`, :math:`\\sum_i x_{ij} = 3`; symmetry broken by putting item
    ``i`` in a bin ``<= i``. One worker and a fixed seed make the answer deterministic.

    Returns
    -------
    tuple of triples or None
        Canonical index triples (see :meth:`ThreePartition.check`) if a partition exists, None if
        CP-SAT *proved* that none exists.

    Raises
    ------
    SolverLimitError
        If CP-SAT neither found a solution nor proved infeasibility within ``time_limit`` seconds.
    KeyboardInterrupt
        An interrupt (Ctrl-C; SIGTERM in the CLI) stopped the search (never reported as a timeout).
    """
    from ortools.sat.python import cp_model

    n, m, b = len(tp.values), tp.m, tp.bound
    model = cp_model.CpModel()
    x = [[model.NewBoolVar(f"x{i}_{j}") for j in range(m)] for i in range(n)]
    for i in range(n):
        model.AddExactlyOne(x[i])
        for j in range(i + 1, m):  # symmetry: item i goes to a bin <= i
            model.Add(x[i][j] == 0)
    for j in range(m):
        model.Add(sum(tp.values[i] * x[i][j] for i in range(n)) == b)
        model.Add(sum(x[i][j] for i in range(n)) == 3)
    from prefixsched.theory.exact._interrupt import Guard

    solver = cp_model.CpSolver()
    solver.parameters.num_search_workers = 1
    solver.parameters.random_seed = int(seed)
    solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.catch_sigint_signal = False  # a Ctrl-C is an interrupt, not a timeout
    guard = Guard()
    status = guard.run(lambda: solver.Solve(model), solver.StopSearch)
    guard.reraise()
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bins: list[list[int]] = [[] for _ in range(m)]
        for i in range(n):
            for j in range(m):
                if solver.Value(x[i][j]):
                    bins[j].append(i)
        return tp.check(bins)
    if status == cp_model.INFEASIBLE:
        return None
    raise SolverLimitError(
        f"CP-SAT could not decide {tp.description} within {time_limit} s (status "
        f"{solver.StatusName(status)}); raise time_limit or use brute_force for small m"
    )


def brute_force(tp: ThreePartition, *, max_m: int = 8) -> Triples | None:
    """Decide a 3-PARTITION instance by exhaustive search (ground truth for small ``m``).

    Takes the lowest unused index, tries every pair of later unused indices completing its sum to
    ``B``, and recurses; equal values are tried once per position. Worst case
    :math:`O(\\prod_k \\binom{3k-1}{2})`.

    Returns canonical index triples or None (proven by exhaustion).

    Raises
    ------
    SolverLimitError
        If ``m > max_m``.
    """
    if tp.m > max_m:
        raise SolverLimitError(f"brute_force is limited to m <= {max_m}, got m = {tp.m}; use solve_exact")
    vals, b = tp.values, tp.bound

    def rec(free: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
        if not free:
            return []
        first, rest = free[0], free[1:]
        seen: set[tuple[int, int]] = set()
        for p in range(len(rest)):
            for q in range(p + 1, len(rest)):
                i, j = rest[p], rest[q]
                if vals[first] + vals[i] + vals[j] != b or (vals[i], vals[j]) in seen:
                    continue
                seen.add((vals[i], vals[j]))
                sub = rec(tuple(k for k in rest if k != i and k != j))
                if sub is not None:
                    return [(first, i, j), *sub]
        return None

    sol = rec(tuple(range(len(vals))))
    return None if sol is None else tp.check(sol)


@dataclass(frozen=True)
class Reduction:
    """The reduced scheduling instance with its bound and certificate maps (module docstring).

    Attributes
    ----------
    source:
        The 3-PARTITION instance.
    instance:
        The :class:`Instance` (``5m+2`` requests, token-unit cost model, ``page_size = 1``).
    T:
        The common TTFT bound (time units = tokens), ``T = W = m(B + rho + 2)``.
    rho:
        Pair-prefix length used (default ``m``).
    pins:
        ``pins[j-1] = r_j`` (relative to the window start ``T``); ``Sb{j}`` runs on
        ``[T + r_j, T + r_j + 1]`` in every feasible schedule when ``rho >= (m-1)*LAMBDA + 1``.
    description:
        One line describing the construction.
    """

    source: ThreePartition
    instance: Instance
    T: int
    rho: int
    pins: tuple[int, ...]
    description: str

    @property
    def m(self) -> int:
        return self.source.m

    @property
    def sound(self) -> bool:
        """Whether ``rho >= (m-1)*LAMBDA + 1`` (the equivalence is proven only then)."""
        return self.rho >= (self.m - 1) * LAMBDA + 1

    def evaluate(self, order: Sequence[str]) -> Any:
        """Replay ``order`` (request ids) with :func:`prefixsched.theory.sequential.evaluate` in the
        prev model and return its ``SeqSchedule``."""
        from prefixsched.theory import sequential

        return sequential.evaluate(sequential.SeqInstance.from_instance(self.instance), list(order), "prev")

    def meets_bound(self, order: Sequence[str]) -> bool:
        """True iff every query of ``order`` has TTFT <= T in the prev model."""
        return self.evaluate(order).max_ttft <= self.T + 1e-9

    def schedule_from_partition(self, triples: Sequence[Sequence[int]]) -> tuple[str, ...]:
        """The order ``Ha, G_1, Sa1, Sb1, ..., G_m, Sam, Sbm, Hb`` of a 3-partition (step 4).

        The triples are validated (:meth:`ThreePartition.check`) and served in the given order,
        items within a triple by increasing index. The order is replayed by the independent checker.

        Raises
        ------
        InputError
            If ``triples`` is not a 3-partition of the source.
        CheckerError
            If the replayed schedule misses ``T`` (cannot happen for ``rho`` >= 0; a bug otherwise).
        """
        self.source.check(triples)  # validates; keep the caller's group order
        order: list[str] = ["Ha"]
        for j, t in enumerate(triples, start=1):
            order.extend(f"item{i}" for i in sorted(int(i) for i in t))
            order.extend((f"Sa{j}", f"Sb{j}"))
        order.append("Hb")
        sched = self.evaluate(order)
        if sched.max_ttft > self.T + 1e-9:
            raise CheckerError(
                f"certificate schedule of {self.description} has max TTFT {sched.max_ttft} > T = {self.T}"
            )
        return tuple(order)

    def partition_from_schedule(self, order: Sequence[str]) -> Triples:
        """Read the 3-partition off a schedule meeting ``T``: the items served between ``Sb{j-1}``
        (or ``Ha``) and ``Sa{j}`` form group ``j`` (step 3).

        Raises
        ------
        InputError
            If ``order`` is not a permutation of the instance's ids or misses ``T``.
        CheckerError
            If the schedule meets ``T`` but its gaps are not a 3-partition. This cannot happen when
            :attr:`sound`; it does happen for some schedules of the negative control (small ``rho``).
        """
        ids = [str(i) for i in order]
        if sorted(ids) != sorted(r.id for r in self.instance.requests):
            raise InputError("order", "must be a permutation of the reduced instance's request ids")
        sched = self.evaluate(ids)
        if sched.max_ttft > self.T + 1e-9:
            raise InputError("order", f"max TTFT {sched.max_ttft} exceeds T = {self.T}")
        groups: list[list[int]] = []
        cur: list[int] = []
        for rid in ids:
            if rid.startswith("item"):
                cur.append(int(rid[4:]))
            elif rid.startswith("Sb"):
                groups.append(cur)
                cur = []
        groups[-1].extend(cur)  # items after the last pin (impossible when sound)
        try:
            return self.source.check(groups)
        except InputError as e:
            raise CheckerError(
                f"schedule meets T = {self.T} but its gaps {groups} are no 3-partition "
                f"({e.problem}); rho = {self.rho}, sound = {self.sound}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (constants and instance)."""
        return {
            "values": list(self.source.values),
            "bound": self.source.bound,
            "m": self.m,
            "T": self.T,
            "rho": self.rho,
            "lambda": LAMBDA,
            "pins": list(self.pins),
            "instance": self.instance.to_dict(),
        }


def reduction_tokens(tp: ThreePartition, *, rho: int | None = None) -> int:
    """Prompt tokens of the reduced instance of ``tp`` (module docstring, "Size"), without
    building it: blockers ``2T``, pair gadgets ``m(2 rho + 1)``, items ``sum(a_i + 1)``."""
    m = tp.m
    r = m if rho is None else int(rho)
    T = m * (LAMBDA + tp.bound) + m * (r + 1)
    return 2 * T + m * (2 * r + 1) + sum(tp.values) + 3 * m


def reduce_to_ttft_feasibility(
    tp: ThreePartition, *, rho: int | None = None, max_tokens: int = MAX_REDUCTION_TOKENS
) -> Reduction:
    """Build the klpm.md §2.2 reduction of ``tp`` (module docstring for the math).

    Parameters
    ----------
    tp:
        The 3-PARTITION instance (``m`` groups, bin size ``B``).
    rho:
        Pair-prefix length (default ``m``, the smallest value meeting ``rho >= (m-1)*LAMBDA + 1``).
        Smaller values give the negative control; the reduction is then not sound.
    max_tokens:
        Refuse (before building) a reduced instance of more prompt tokens than this
        (:func:`reduction_tokens`; default :data:`MAX_REDUCTION_TOKENS`).

    Returns
    -------
    Reduction
        ``instance`` has ``5m + 2`` requests, prompts of at most ``T`` tokens, ``output_len = 1``,
        arrivals in time units (tokens), :meth:`CostModel.token_units` and ``page_size = 1``;
        ``T = m(B + rho + 2)``.

    Raises
    ------
    InputError
        If ``rho`` is not an integer >= 1, or (field ``bound``) the instance would exceed
        ``max_tokens``: the construction is pseudo-polynomial in ``B``.
    """
    m, b = tp.m, tp.bound
    if rho is None:
        rho = m
    if isinstance(rho, bool) or not isinstance(rho, int) or rho < 1:
        raise InputError("rho", f"must be an integer >= 1, got {rho!r}")
    size = reduction_tokens(tp, rho=rho)
    if size > max_tokens:
        raise InputError(
            "bound",
            f"the reduction is pseudo-polynomial in B (it writes Theta(m(B + m)) prompt tokens): m = {m}, "
            f"B = {b} gives {size:,} tokens, more than the limit {max_tokens:,}; use a smaller B",
        )
    c_alpha, c_beta = 0, 1
    T = m * (LAMBDA + b) + m * (rho + c_alpha + c_beta)
    pins = tuple(j * (b + 1) + (j - 1) * (rho + 1) + rho for j in range(1, m + 1))
    assert pins[-1] + 1 == T  # the last pin ends exactly at the window's end
    H, G, P, BETA = 0, 1, 2, 3

    def r_tok(j: int) -> int:
        return 3 + j

    def u_tok(i: int) -> int:
        return 4 + m + i

    reqs: list[tuple[float, int, Request]] = []

    def add(rank: int, rid: str, client: str, arrival: int, prompt: tuple[int, ...]) -> None:
        reqs.append((float(arrival), rank, Request(rid, client, float(arrival), prompt, 1)))

    add(0, "Ha", "blocker", 0, (H,) * T)
    for j in range(1, m + 1):
        add(1, f"Sa{j}", "pair", pins[j - 1], (r_tok(j),) * rho)
    for i, a in enumerate(tp.values):
        add(2, f"item{i}", "item", T, (P,) + (u_tok(i),) * a)
    for j in range(1, m + 1):
        add(3, f"Sb{j}", "pair", T + pins[j - 1], (r_tok(j),) * rho + (BETA,))
    add(4, "Hb", "blocker", 2 * T, (G,) * T)
    reqs.sort(key=lambda e: (e[0], e[1]))
    limits = Limits(kv_capacity_tokens=max(Limits().kv_capacity_tokens, T + 2), page_size=1)
    inst = Instance(
        requests=tuple(r for _, _, r in reqs),
        cost_model=CostModel.token_units(0.0),
        limits=limits,
        weights=ServiceWeights(),
    )
    desc = (
        f"3-PARTITION(m={m}, B={b}) -> prev-model TTFT feasibility: {5 * m + 2} queries, "
        f"T = W = {T}, lambda = {LAMBDA}, rho = {rho}, c_alpha = {c_alpha}, c_beta = {c_beta}"
    )
    return Reduction(source=tp, instance=inst, T=T, rho=rho, pins=pins, description=desc)
