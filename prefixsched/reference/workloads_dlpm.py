"""The DLPM paper's workload families (Cao et al., arXiv:2501.14312v1, §6, Tables 2-3; dlpm.md §5),
registered in :data:`prefixsched.reference.workloads.WORKLOADS` as ``dlpm-*``.

The paper's sources are real data sets served on SGLang (LooGLE, GSM8K, SGLang's synthetic judge
articles, Chatbot Arena); none ships here, so each family is a seeded generator with the
paper's *shape*: Table 2's average prefix / output lengths and Table 3's misbehaving patterns.
Rates, client counts and CVs are not given by the paper (dlpm.md §8.14); the defaults below are
ours, chosen so that one default worker (``Limits()``, ``CostModel()``: an H100-class 8B model)
is overloaded by about 1.3-2x, the regime in which the paper's figures differ. Scale the offered
load with the sweep's ``load`` (arrival times divided by it) or the ``*_rate`` parameters; the
paper grows the rate with the number of GPUs (Fig. 7).

Common to all (as :mod:`prefixsched.reference.workloads`): Gamma arrivals of programs per client
(``cv``, default 1), one spawned random stream per client, ``duration_s`` / ``n_requests``
windows, 32-token blocks, the misbehaving client is ``c0``; ``variant`` selects the pattern:
``"s1"`` (heavier programs at the same program rate), ``"s2"`` (longer prefixes, same structure
and rate) or ``"none"`` (every client well-behaved, Fig. 10b). Request ids are
``c<k>.p<program>.<node>``, so :func:`~prefixsched.reference.workloads.program_of` gives the
program (DLPM measures ToT and judge latency per program, LCQA by TTFT).

Families
--------
``dlpm-lcqa-s1`` / ``-s2``: long-context QA (LooGLE: prefix 21,449, output 15). A program is one
    document (lognormal, median ``doc_median`` = 20,000 tokens, sigma 0.3, clipped to
    8,000-32,000) and ``questions`` (6) questions about it, each prompt = document + a
    16-64-token question, answer 4-26 tokens (mean 15); the questions arrive an Exponential
    (``question_gap_s`` = 2 s) gap apart. S1: c0 sends documents at ``heavy_rate_factor`` (4x)
    the rate; S2: c0's documents are ``heavy_doc_factor`` (2x) longer.
``dlpm-tot-s1`` / ``-s2``: Tree-of-Thoughts (GSM8K: prefix 546, output 256), height ``depth`` = 4:
    a program with branching b has b + b^2 + b^3 + b^4 requests (30 for b = 2, 340 for b = 4).
    Level-1 prompts are the shared ToT template (``template_len`` = 384 tokens, one application
    for every client) + a ``question_len`` = 160-token question (546 together, Table 2); a
    child's prompt is its parent's prompt + the parent's thought (its output, 128-384 tokens,
    mean 256), arriving ``level_gap_s`` x U(0.5, 1.5) after the parent. S1: c0 uses 4 branches
    against 2 (340 vs 30 requests per tree, Table 3); S2: c0's questions are 10x longer.
``dlpm-judge-s1`` / ``-s2``: LLM-as-a-judge, branch-solve-merge (SGLang's synthetic articles:
    prefix 2,701, output 256). A program is one article (lognormal, median 2,300 tokens, sigma
    0.25, clipped to 1,000-4,096) under the shared judge template (``template_len`` = 400); the
    branch step sends ``dims`` (2) requests at once, each = template + article + a 48-token
    evaluation dimension, output 256 (128-384); the merge request, ``merge_gap_s`` (4 s) later, is
    template + article + every branch's judgement + a 32-token merge instruction, output 256.
    S1: c0 evaluates ``heavy_dims`` = 16 dimensions against 2 (Table 3); S2: c0 puts
    ``heavy_extra_tokens`` = 600 extra tokens before each article (unique to the article: a
    longer prefix, *decision*: the paper does not say whether they repeat).
``dlpm-chat``: multi-turn chat (Chatbot Arena: prefix 56, output 142). Conversations as a Gamma
    process of ``conv_rate`` per client (``heavy_factor`` x for c0, default 1); turn 0 is a
    lognormal 40-token (sigma 0.8) message, turn t = turn t-1's prompt + its answer + a
    lognormal 30-token message, an Exponential(``think_s`` = 8 s) gap later; answers lognormal
    median 120 (sigma 0.7, 4-1024: mean ~150); turns Geometric(mean 2.5), at most 8.
``dlpm-mixed``: Fig. 12's mixed applications on one GPU: client roles cycle over (judge, chat,
    chat, tot), i.e. 4 clients = 1 judge, 2 multi-turn, 1 ToT client, every one well-behaved
    with its family's parameters; ``judge_rate``, ``chat_rate``, ``tot_rate`` set each role's
    program rate.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from prefixsched.errors import InputError
from prefixsched.reference.workload_gen import (
    _EMPTY,
    _Alloc,
    _Ctx,
    _gap,
    _int,
    _lognormal_len,
    _num,
    _Raw,
    _streams,
    _window,
)
from prefixsched.theory.model import Request

__all__ = ["DLPM_WORKLOADS"]

_VARIANTS = ("s1", "s2", "none")


def _variant(v: str) -> str:
    if v not in _VARIANTS:
        raise InputError("variant", f"must be one of {', '.join(_VARIANTS)}, got {v!r}")
    return v


def _whole(n: int, bs: int) -> int:
    return -(-n // bs) * bs


class _Out:
    """Collects the requests of one client: ids ``c<k>.p<prog>.n<node>``, in generation order."""

    __slots__ = ("k", "seq", "out")

    def __init__(self, k: int, out: list[_Raw]) -> None:
        self.k, self.seq, self.out = k, 0, out

    def add(self, at: float, prog: int, node: int, ctx: _Ctx, out_len: int) -> None:
        self.out.append(_Raw(round(at, 6), self.k, self.seq, f"c{self.k}.p{prog}.n{node}", ctx, out_len))
        self.seq += 1


# ---------------------------------------------------------------------------------------------
# per-client generators: (k, rng, horizon, alloc, shared, p) -> appends to sink


def _gen_lcqa(sink: _Out, rng: np.random.Generator, horizon: float, alloc: _Alloc, bs: int, p: dict[str, Any]) -> None:
    rate, doc_f = p["doc_rate"], 1.0
    if sink.k == 0 and p["variant"] == "s1":
        rate *= p["heavy_rate_factor"]
    if sink.k == 0 and p["variant"] == "s2":
        doc_f = p["heavy_doc_factor"]
    t, prog = 0.0, 0
    while True:
        t += _gap(rng, rate, p["cv"])
        if t > horizon:
            return
        doc_len = _lognormal_len(rng, p["doc_median"] * doc_f, 0.3, int(8000 * doc_f), int(32000 * doc_f))
        doc = _EMPTY.extend(_whole(doc_len, bs), alloc, bs, fork=False)
        at = t
        for q in range(p["questions"]):
            ctx = doc.extend(int(rng.integers(16, 65)), alloc, bs, fork=True)
            sink.add(at, prog, q, ctx, int(rng.integers(4, 27)))
            at += float(rng.exponential(p["question_gap_s"]))
        prog += 1


def _gen_tot(sink: _Out, rng: np.random.Generator, horizon: float, alloc: _Alloc, bs: int, p: dict[str, Any]) -> None:
    b = p["heavy_branches"] if sink.k == 0 and p["variant"] == "s1" else p["branches"]
    qlen = p["question_len"] * (p["heavy_question_factor"] if sink.k == 0 and p["variant"] == "s2" else 1)
    template = p["_template"]
    t, prog = 0.0, 0
    while True:
        t += _gap(rng, p["tot_rate"], p["cv"])
        if t > horizon:
            return
        level = [(template.extend(int(qlen), alloc, bs, fork=True), t)]
        node = 0
        for _ in range(p["depth"]):
            nxt = []
            for ctx, at in level:
                for _ in range(b):
                    thought = int(rng.integers(128, 385))
                    sink.add(at, prog, node, ctx, thought)
                    node += 1
                    nxt.append((ctx.extend(thought, alloc, bs, fork=True), at + p["level_gap_s"] * float(rng.uniform(0.5, 1.5))))
            level = nxt
        prog += 1


def _gen_judge(sink: _Out, rng: np.random.Generator, horizon: float, alloc: _Alloc, bs: int, p: dict[str, Any]) -> None:
    dims = p["heavy_dims"] if sink.k == 0 and p["variant"] == "s1" else p["dims"]
    extra = p["heavy_extra_tokens"] if sink.k == 0 and p["variant"] == "s2" else 0
    template = p["_judge_template"]
    t, prog = 0.0, 0
    while True:
        t += _gap(rng, p["judge_rate"], p["cv"])
        if t > horizon:
            return
        ctx = template
        if extra:
            ctx = ctx.extend(_whole(extra, bs), alloc, bs, fork=True)
        ctx = ctx.extend(_lognormal_len(rng, 2300, 0.25, 1000, 4096), alloc, bs, fork=True)
        answers = 0
        for d in range(dims):
            out_len = int(rng.integers(128, 385))
            sink.add(t, prog, d, ctx.extend(48, alloc, bs, fork=True), out_len)
            answers += out_len
        merge = ctx.extend(answers + 32, alloc, bs, fork=True)
        sink.add(t + p["merge_gap_s"], prog, dims, merge, int(rng.integers(128, 385)))
        prog += 1


def _gen_chat(sink: _Out, rng: np.random.Generator, horizon: float, alloc: _Alloc, bs: int, p: dict[str, Any]) -> None:
    rate = p["chat_rate"] * (p["heavy_factor"] if sink.k == 0 else 1.0)
    t, prog = 0.0, 0
    while True:
        t += _gap(rng, rate, p["cv"])
        if t > horizon:
            return
        turns = min(8, int(rng.geometric(1.0 / 2.5)))
        ctx = _EMPTY.extend(_lognormal_len(rng, 40, 0.8, 4, 1024), alloc, bs, fork=False)
        at = t
        for turn in range(turns):
            out_len = _lognormal_len(rng, 120, 0.7, 4, 1024)
            sink.add(at, prog, turn, ctx, out_len)
            if turn + 1 < turns:
                at += float(rng.exponential(p["think_s"]))
                ctx = ctx.extend(out_len + _lognormal_len(rng, 30, 0.8, 4, 1024), alloc, bs, fork=False)
        prog += 1


_GEN = {"lcqa": _gen_lcqa, "tot": _gen_tot, "judge": _gen_judge, "chat": _gen_chat}


def _build(roles: list[str], *, clients: int, seed: int, n_requests: int | None, block_size: int,
           duration_s: float, p: dict[str, Any]) -> list[Request]:
    bs = block_size
    _num("duration_s", duration_s)

    def gen(horizon: float) -> list[_Raw]:
        alloc = _Alloc()
        # one template per application, shared by every client of it (allocated first, so the
        # block ids do not depend on the clients)
        p["_template"] = _EMPTY.extend(_whole(p.get("template_len", 384), bs), alloc, bs, fork=False)
        p["_judge_template"] = _EMPTY.extend(_whole(p.get("judge_template_len", 400), bs), alloc, bs, fork=False)
        out: list[_Raw] = []
        for k, rng in enumerate(_streams(seed, clients)):
            _GEN[roles[k % len(roles)]](_Out(k, out), rng, horizon, alloc, bs, p)
        return out

    return _window(gen, duration_s, n_requests, bs)


# ---------------------------------------------------------------------------------------------
# registered builders (keyword-only parameters = the workload's tunables)


def _lcqa(*, clients: int, seed: int, n_requests: int | None, block_size: int, variant: str = "s1",
          duration_s: float = 120.0, doc_rate: float = 0.2, cv: float = 1.0, doc_median: float = 20000.0,
          questions: int = 6, question_gap_s: float = 2.0, heavy_rate_factor: float = 4.0,
          heavy_doc_factor: float = 2.0) -> list[Request]:
    """DLPM long-context QA (module docstring). Defaults: 8 clients at 0.2 documents/s each
    (c0 4x in S1), 6 questions per document."""
    p = {"variant": _variant(variant), "doc_rate": _num("doc_rate", doc_rate), "cv": _num("cv", cv, strict=False),
         "doc_median": _num("doc_median", doc_median), "questions": _int("questions", questions),
         "question_gap_s": _num("question_gap_s", question_gap_s, strict=False),
         "heavy_rate_factor": _num("heavy_rate_factor", heavy_rate_factor),
         "heavy_doc_factor": _num("heavy_doc_factor", heavy_doc_factor)}
    if p["doc_median"] * max(1.0, p["heavy_doc_factor"]) > 200_000:
        raise InputError("doc_median", f"documents of {doc_median} tokens do not fit a worker's KV pool")
    return _build(["lcqa"], clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, duration_s=duration_s, p=p)


def _tot4(*, clients: int, seed: int, n_requests: int | None, block_size: int, variant: str = "s1",
          duration_s: float = 60.0, tot_rate: float | None = None, cv: float = 1.0, branches: int = 2,
          heavy_branches: int = 4, depth: int = 4, template_len: int = 384, question_len: int = 160,
          heavy_question_factor: float = 10.0, level_gap_s: float = 2.0) -> list[Request]:
    """DLPM Tree-of-Thoughts of height 4 (module docstring). ``tot_rate`` (programs/s per
    client) defaults to 0.16 (s1: c0's trees are 340 requests) or 0.2 (s2, none)."""
    v = _variant(variant)
    if tot_rate is None:
        tot_rate = 0.16 if v == "s1" else 0.2
    p = {"variant": v, "tot_rate": _num("tot_rate", tot_rate), "cv": _num("cv", cv, strict=False),
         "branches": _int("branches", branches), "heavy_branches": _int("heavy_branches", heavy_branches),
         "depth": _int("depth", depth), "template_len": _int("template_len", template_len),
         "question_len": _int("question_len", question_len),
         "heavy_question_factor": _num("heavy_question_factor", heavy_question_factor),
         "level_gap_s": _num("level_gap_s", level_gap_s, strict=False)}
    return _build(["tot"], clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, duration_s=duration_s, p=p)


def _judge(*, clients: int, seed: int, n_requests: int | None, block_size: int, variant: str = "s1",
           duration_s: float = 60.0, judge_rate: float | None = None, cv: float = 1.0, dims: int = 2,
           heavy_dims: int = 16, heavy_extra_tokens: int = 600, judge_template_len: int = 400,
           merge_gap_s: float = 4.0) -> list[Request]:
    """DLPM LLM-as-a-judge, branch-solve-merge (module docstring). ``judge_rate`` (articles/s
    per client) defaults to 1.0 (s1: c0 sends 17 requests per article, s2 and none)."""
    v = _variant(variant)
    if judge_rate is None:
        judge_rate = 1.0
    p = {"variant": v, "judge_rate": _num("judge_rate", judge_rate), "cv": _num("cv", cv, strict=False),
         "dims": _int("dims", dims), "heavy_dims": _int("heavy_dims", heavy_dims),
         "heavy_extra_tokens": _int("heavy_extra_tokens", heavy_extra_tokens),
         "judge_template_len": _int("judge_template_len", judge_template_len),
         "merge_gap_s": _num("merge_gap_s", merge_gap_s, strict=False)}
    return _build(["judge"], clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, duration_s=duration_s, p=p)


def _chat(*, clients: int, seed: int, n_requests: int | None, block_size: int, duration_s: float = 60.0,
          chat_rate: float = 4.0, heavy_factor: float = 1.0, cv: float = 1.0, think_s: float = 8.0) -> list[Request]:
    """DLPM multi-turn chat, Chatbot-Arena-shaped (module docstring); ``heavy_factor`` > 1 makes
    c0 flood (Fig. 8)."""
    p = {"chat_rate": _num("chat_rate", chat_rate), "heavy_factor": _num("heavy_factor", heavy_factor),
         "cv": _num("cv", cv, strict=False), "think_s": _num("think_s", think_s, strict=False)}
    return _build(["chat"], clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, duration_s=duration_s, p=p)


def _mixed(*, clients: int, seed: int, n_requests: int | None, block_size: int, duration_s: float = 60.0,
           judge_rate: float = 2.5, chat_rate: float = 10.0, tot_rate: float = 0.75, cv: float = 1.0) -> list[Request]:
    """Fig. 12's mixed applications (module docstring): roles judge, chat, chat, tot (cycled),
    every client well-behaved."""
    p = {"variant": "none", "judge_rate": _num("judge_rate", judge_rate), "chat_rate": _num("chat_rate", chat_rate),
         "tot_rate": _num("tot_rate", tot_rate), "cv": _num("cv", cv, strict=False), "heavy_factor": 1.0,
         "think_s": 8.0, "dims": 2, "heavy_dims": 2, "heavy_extra_tokens": 0, "merge_gap_s": 4.0,
         "branches": 2, "heavy_branches": 2, "depth": 4, "question_len": 160, "heavy_question_factor": 1.0,
         "level_gap_s": 2.0}
    return _build(["judge", "chat", "chat", "tot"], clients=clients, seed=seed, n_requests=n_requests,
                  block_size=block_size, duration_s=duration_s, p=p)


DLPM_WORKLOADS = {
    "dlpm-lcqa-s1": (partial(_lcqa, variant="s1"), "DLPM long-context QA (20k-token documents, 6 questions each), S1: c0 sends 4x the documents"),
    "dlpm-lcqa-s2": (partial(_lcqa, variant="s2"), "DLPM long-context QA, S2: c0's documents 2x longer"),
    "dlpm-tot-s1": (partial(_tot4, variant="s1"), "DLPM Tree-of-Thoughts of height 4, S1: c0 uses 4 branches (340 requests/tree) vs 2 (30)"),
    "dlpm-tot-s2": (partial(_tot4, variant="s2"), "DLPM Tree-of-Thoughts of height 4, S2: c0's questions 10x longer"),
    "dlpm-judge-s1": (partial(_judge, variant="s1"), "DLPM LLM-as-a-judge (branch-solve-merge), S1: c0 judges 16 dimensions vs 2"),
    "dlpm-judge-s2": (partial(_judge, variant="s2"), "DLPM LLM-as-a-judge, S2: c0 adds 600 tokens before each article"),
    "dlpm-chat": (_chat, "DLPM multi-turn chat (Chatbot-Arena-shaped: ~50-token turns, ~150-token answers)"),
    "dlpm-mixed": (_mixed, "DLPM Fig. 12 mixed applications: judge, 2x multi-turn and ToT clients (roles cycle)"),
}

