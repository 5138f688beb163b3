"""The GradSAE experiments on SQuAD (Shu et al. 2025, §3 and appendix D) as commands and library functions.

    gradsae perturb     zero the TopK / BottomK latents of Baseline and GradSAE at every position (Table 1 upper)
    gradsae steer       local steering with a same-context partner question's latents (Table 1 lower)
    gradsae stats       active latents, 50% sizes, cross and inner overlaps (Table 3)
    gradsae experiment  all three, optionally over ``--layers`` / several ``--sae`` (Tables 4, 5)

Pipeline per results folder (every step appends one JSONL record per example, so a rerun resumes):

1. ``answer``: greedy answer through the SAE splice (KV cache, stop at newline/EOS), official EM/F1; examples
   with F1 ≥ ``min_f1`` are *kept* (the correct-sample filter) and get GradSAE scores and the Baseline
   (``gradsae.influence.influence`` with the generated token ids), stored as sorted TopK/BottomK lists.
2. ``perturb``: per kept example, one batch: an unedited control row + one row per distinct latent set
   (method × TopK/BottomK × K), each a ``RowEdit(zero=set, at="all")``, through ``greedy_generate``.
3. ``steer``: per kept example with a partner (seeded, same context, different question, also kept): zero
   its own set at every position and set the partner's set to the partner's values at ``--at`` positions.
4. ``stats`` needs no model run: computed from the stored sets.

Pure functions: ``pick_partner``, ``overlap``, ``wilson_ci``, ``mean_ci``, ``cell``, ``summarize``,
``table_markdown``. Scale-out: under ``torchrun`` answer batches and examples are sharded by rank; each rank
writes ``examples.rank{r}.jsonl``; rank 0 merges into ``examples.jsonl`` and writes the summary.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .config import opt
from .errors import GradsaeError
from .generate import parse_stop as split_stops
from .io import JsonlLog, read_json, write_json, atomic_write_text
from . import squad as sq

METHODS = ("baseline", "gradsae")
SETS = ("top", "bottom")
SCHEMA = "gradsae.experiments.summary/1"
SWEEP_SCHEMA = "gradsae.experiments.sweep/1"
TASKS = ("perturb", "steer", "stats")


# ---------------------------------------------------------------------------------------------
# Configs (one per command; the CLI flags come from these)
# ---------------------------------------------------------------------------------------------

@dataclass
class SquadConfig:
    """Fields shared by the SQuAD experiment commands."""

    model: str = opt("smollm2", "model: 'smollm2', a local folder, a .gguf file or a hub id")
    sae: str = opt("smollm2/topk/L9", "SAE folder/file or bundled name; a comma list runs a sweep; "
                   "'{layer}' in it is filled from --layers")
    layer: str = opt("", "splice layer (index or hook name); empty: the SAE's own hook")
    layers: list[int] = opt([], "sweep over these layers (comma list), one results subfolder each")
    data: str = opt(sq.DEFAULT_DATA, "SQuAD 1.1/2.0 JSON, JSONL, or a Hugging Face dataset name")
    limit: int = opt(150, "use the first N answerable questions (0 = all)")
    shuffle: bool = opt(False, "shuffle contexts (seeded) before --limit; questions of a context stay together")
    seed: int = opt(42, "random seed (context shuffle, steering partners)")
    template: str = opt("fewshot", "prompt: fewshot, plain, chat, official, or a string with {context} {question}")
    fewshot_data: str = opt(sq.DEFAULT_FEWSHOT, "SQuAD JSON the few-shot exemplars come from")
    fewshot_paragraph: int = opt(-1, "index of the exemplar paragraph (-1: first one with 5 questions that is "
                                 "not an evaluation context)")
    extract: str = opt("auto", "answer extraction: auto (bracket for --template official, else first-line), "
                       "first-line, bracket, regex", choices=sq.EXTRACTORS)
    answer_regex: str = opt("", "regex for --extract regex (group 1 is the answer)")
    stop: str = opt("auto", "stop string(s), comma separated, '\\n' for newline; 'auto': newline, 'Question' or "
                    "'Context' for plain-text templates, EOS only otherwise; 'none': EOS only")
    max_new_tokens: int = opt(16, "greedy decoding budget per answer")
    kv_cache: bool = opt(True, "decode with the KV cache; --no-kv-cache re-runs the whole sequence every step (the "
                         "authors' loop: slower, and needed for their steering rule --at newest)")
    min_f1: float = opt(0.9, "correct-sample filter: keep examples answered with F1 >= this (0-1), as the "
                        "authors' code")
    ks: list[str] = opt(["1", "10", "20", "30", "50%"], "K values; a percentage (e.g. 50 percent, written 50%%) is that share of the latents active at "
                        "the last prompt token")
    methods: list[str] = opt(["baseline", "gradsae"], "latent rankings: baseline (mean activation), gradsae")
    sets: list[str] = opt(["top", "bottom"], "which sets: top (TopK), bottom (BottomK)")
    target: str = opt("logprob", "influence target: logprob, prob, logit, first")
    aggregation: str = opt("relu-mean", "per-token -> per-latent: relu-mean (authors' code) or mean (paper)")
    positions: str = opt("all", "positions scored: all (prompt + answer) or prompt")
    error: str = opt("none", "SAE error term: none (paper: model sees the reconstruction) or keep")
    batch_size: int = opt(8, "questions per batch when answering and scoring")
    device: str = opt("cpu", "cpu, cuda, cuda:N or auto")
    dtype: str = opt("float32", "model dtype")
    threads: int = opt(2, "torch CPU threads (per process)")
    out: str = opt("results/squad", "results folder (rerun the same command to resume)")
    retry_failed: bool = opt(False, "recompute examples recorded with an error")
    answers_from: str = opt("", "reuse the answer phase (filter + latent rankings) of another results folder made "
                            "with the same answer-affecting options, e.g. to try another steering rule")
    progress: bool = opt(True, "show progress bars")


@dataclass
class PerturbConfig(SquadConfig):
    """SQuAD perturbation (RQ1, RQ2): zero each example's TopK / BottomK latents (Baseline and GradSAE) at
    every position, generated tokens included, and score the answers against the gold answers."""

    out: str = opt("results/perturb", "results folder (rerun the same command to resume)")


@dataclass
class SteerConfig(SquadConfig):
    """SQuAD local steering (RQ3): zero an example's own TopK/BottomK latents and inject those of a partner
    question on the same context; score the answers against the partner's gold answers."""

    out: str = opt("results/steer", "results folder (rerun the same command to resume)")
    inject: str = opt("activation", "value given to the partner's latents: activation (partner's mean "
                      "activation) or score (partner's ranking score, the authors' code)",
                      choices=("activation", "score"))
    at: str = opt("all", "where the partner's latents are set: all positions (paper text), last (last prompt "
                  "token and every generated token), newest (last position of each forward; with "
                  "--no-kv-cache the authors' rule, with the KV cache the same as last)", choices=("all", "last", "newest"))
    clamp: str = opt("", "clamp injected values to 'lo,hi' (authors' code: 0,50); empty = no clamp")
    steer_ks: list[str] = opt([], "K values for steering (default: --ks)")


@dataclass
class StatsConfig(SquadConfig):
    """Latent statistics (appendix D.1, Table 3): active latents, 50% sizes, cross overlap of Baseline and
    GradSAE sets, inner overlap across questions of the same context."""

    out: str = opt("results/stats", "results folder (rerun the same command to resume)")


@dataclass
class ExperimentConfig(SteerConfig):
    """Perturbation + steering + statistics in one run (one results folder per layer / SAE in a sweep)."""

    out: str = opt("results/experiment", "results folder (rerun the same command to resume)")
    tasks: list[str] = opt(["perturb", "steer", "stats"], "which parts to run")


# fields that change results: a results folder refuses to resume under different values
_FINGERPRINT = ("model", "sae", "layer", "data", "shuffle", "seed", "template", "fewshot_data", "fewshot_paragraph",
                "extract", "answer_regex", "stop", "max_new_tokens", "min_f1", "ks", "methods", "sets", "target",
                "aggregation", "positions", "error", "dtype", "inject", "at", "clamp", "steer_ks", "kv_cache")


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------

def pick_partner(qid: str, context_id: str, kept: Sequence[tuple[str, str, str]], question: str,
                 seed: int) -> str | None:
    """A seeded partner for example ``qid``: another kept example with the same context and a different
    question. ``kept`` is [(id, context_id, question)]. The choice depends only on (seed, qid, candidates),
    not on the order examples are processed in (so sharded and resumed runs agree)."""
    cands = sorted(i for i, c, q in kept if c == context_id and i != qid and q.strip() != question.strip())
    if not cands:
        return None
    return random.Random(f"{seed}:{qid}").choice(cands)


def overlap(a: Sequence[int], b: Sequence[int]) -> float | None:
    """|A ∩ B| / |A| (the share of A also in B); None when A is empty."""
    if not len(a):
        return None
    return len(set(a) & set(b)) / len(set(a))


def wilson_ci(successes: float, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion, in percent."""
    if n < 1:
        return (None, None)
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (100 * max(0.0, c - h), 100 * min(1.0, c + h))


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """95% Student-t interval of the mean (same unit as ``values``)."""
    n = len(values)
    if n < 2:
        return (None, None)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    try:
        from scipy.stats import t
        q = float(t.ppf(0.975, n - 1))
    except ImportError:  # pragma: no cover
        q = 1.96
    return (m - q * sd / math.sqrt(n), m + q * sd / math.sqrt(n))


def cell(rows: Sequence[dict]) -> dict:
    """Aggregate per-example ``{"em", "f1", "k"}`` (0-1) into a summary cell (percent, with 95% CIs)."""
    n = len(rows)
    if not n:
        return {"em": None, "f1": None, "em_ci": [None, None], "f1_ci": [None, None], "n": 0, "k_mean": None}
    em = [r["em"] for r in rows]
    f1 = [100 * r["f1"] for r in rows]
    out = {"em": 100 * sum(em) / n, "f1": sum(f1) / n, "em_ci": list(wilson_ci(sum(em), n)),
           "f1_ci": list(mean_ci(f1)), "n": n}
    ks = [r["k"] for r in rows if r.get("k") is not None]
    out["k_mean"] = sum(ks) / len(ks) if ks else None
    if any("own_f1" in r for r in rows):
        out["own_f1"] = 100 * sum(r.get("own_f1", 0.0) for r in rows) / n
    ov = [r["overlap"] for r in rows if r.get("overlap") is not None]
    if ov:
        out["overlap"] = 100 * sum(ov) / len(ov)
    return out


def parse_clamp(s: str) -> tuple[float, float] | None:
    if not s or not str(s).strip():
        return None
    try:
        lo, hi = (float(x) for x in str(s).split(","))
    except ValueError:
        raise GradsaeError(f"cannot read --clamp {s!r}: give 'lo,hi', e.g. 0,50") from None
    if lo > hi:
        raise GradsaeError(f"--clamp {s!r}: lo must be <= hi")
    return lo, hi


def parse_stop(s: str, builder: sq.PromptBuilder) -> tuple[str, ...]:
    if s == "auto":
        return builder.default_stop
    if s in ("", "none"):
        return ()
    return split_stops(s)


def latent_set(sets: dict, method: str, side: str, k: str, n_active_last: int) -> list[list]:
    """The first K entries [[latent, score, mean_act], ...] of a stored ranking (K resolved per example)."""
    from .influence import resolve_k
    return sets[method][side][:resolve_k(k, n_active_last)]


def _key(method: str, side: str, k: str) -> str:
    return f"{method}/{side}/{k}"


# ---------------------------------------------------------------------------------------------
# Summary, verdicts and tables (from the records only)
# ---------------------------------------------------------------------------------------------

def summarize(records: dict[tuple[str, str], dict], order: Sequence[str], meta: dict) -> dict:
    """summary.json (see docs/experiments.md) from the latest record per (task, id), in ``order``."""
    ks, methods, sets = meta["ks"], meta["methods"], meta["sets"]
    ans = [records[("answer", i)] for i in order if ("answer", i) in records]
    ok = [r for r in ans if "error" not in r]
    kept = [r for r in ok if r.get("kept")]
    errors = [{"task": r["task"], "id": r["id"], "error": r["error"]}
              for r in (records[(t, i)] for i in order for t in ("answer", "perturb", "steer") if (t, i) in records)
              if "error" in r]
    s: dict = {
        "schema": SCHEMA, "tasks": [], **{k: meta[k] for k in ("model", "sae", "layer", "d_sae")},
        "ks": list(ks), "methods": list(methods), "sets": list(sets),
        "data": {"path": meta["data"], "n_examples": len(order), "n_answered": len(ok), "n_kept": len(kept),
                 "min_f1": meta["min_f1"], "unedited": cell([{"em": r["em"], "f1": r["f1"]} for r in ok])},
        "failed": {t: sum(1 for e in errors if e["task"] == t) for t in ("answer", "perturb", "steer")},
        "timing": {"answer": round(sum(r.get("seconds", 0) for r in ans), 2)},
    }
    s["failed"]["errors"] = errors
    pert = [records[("perturb", i)] for i in order if ("perturb", i) in records]
    pert = [r for r in pert if "error" not in r]
    if "perturb" in meta["tasks"]:
        s["tasks"].append("perturb")
        ctrl = [r["control"] for r in pert]
        s["perturbation"] = {
            "n": len(pert),
            "control": {**cell(ctrl), "agree": sum(1 for c in ctrl if c.get("agree"))},
            "cells": {m: {side: {k: cell([r["cells"][_key(m, side, k)] for r in pert if _key(m, side, k) in r["cells"]])
                                 for k in ks} for side in sets} for m in methods},
        }
        s["timing"]["perturb"] = round(sum(r.get("seconds", 0) for r in pert), 2)
    steer = [records[("steer", i)] for i in order if ("steer", i) in records]
    steer = [r for r in steer if "error" not in r]
    if "steer" in meta["tasks"]:
        s["tasks"].append("steer")
        sks = meta.get("steer_ks") or ks
        with_p = [r for r in steer if r.get("partner")]
        s["steering"] = {
            "n": len(with_p), "n_without_partner": sum(1 for r in steer if not r.get("partner")),
            "inject": meta.get("inject"), "at": meta.get("at"), "clamp": meta.get("clamp"), "ks": list(sks),
            "unsteered": cell([r["unsteered"] for r in with_p]),
            "cells": {m: {side: {k: cell([r["cells"][_key(m, side, k)] for r in with_p if _key(m, side, k) in r["cells"]])
                                 for k in sks} for side in sets} for m in methods},
        }
        s["timing"]["steer"] = round(sum(r.get("seconds", 0) for r in steer), 2)
    s["tasks"].append("stats")  # no model run needed: always computed from the stored sets
    s["stats"] = latent_stats(kept)
    s["rq"] = verdicts(s)
    s["timing"]["seconds"] = round(sum(v for v in s["timing"].values()), 2)
    return s


def latent_stats(kept: Sequence[dict]) -> dict:
    """Table 3 from kept examples' answer records (sets at K = 50%)."""
    from .influence import resolve_k

    def ids(r, m, side):
        return [e[0] for e in latent_set(r["sets"], m, side, "50%", r["n_active_last"])]

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return 100 * sum(xs) / len(xs) if xs else None

    rs = [r for r in kept if r.get("sets")]
    out = {"n": len(rs),
           "active_last_mean": sum(r["n_active_last"] for r in rs) / len(rs) if rs else None,
           "active_any_mean": sum(r["n_active_any"] for r in rs) / len(rs) if rs else None,
           "k50_mean": sum(resolve_k("50%", r["n_active_last"]) for r in rs) / len(rs) if rs else None,
           "cross_top_overlap": mean([overlap(ids(r, "baseline", "top"), ids(r, "gradsae", "top")) for r in rs]),
           "cross_bottom_overlap": mean([overlap(ids(r, "baseline", "bottom"), ids(r, "gradsae", "bottom"))
                                         for r in rs])}
    by_ctx: dict[str, list[dict]] = {}
    for r in rs:
        by_ctx.setdefault(r["context_id"], []).append(r)
    pairs = [(a, b) for g in by_ctx.values() for a in g for b in g if a is not b]
    out["inner"] = {m: {side: mean([overlap(ids(a, m, side), ids(b, m, side)) for a, b in pairs])
                        for side in SETS} for m in METHODS}
    out["n_context_pairs"] = len(pairs)
    return out


def _f(c: dict | None, key="f1"):
    return None if not c or c.get(key) is None else c[key]


def verdicts(s: dict) -> dict:
    """RQ1-RQ3 decided from the F1 cells, each with the numbers that decide it (None when not measurable).

    RQ1: for both methods, masking BottomK leaves F1 at least as high as masking TopK at every K, and strictly
    higher at the largest K. RQ2: masking GradSAE's TopK gives F1 no higher than masking the Baseline's at every
    K and strictly lower at one K at least. RQ3: steering with GradSAE's TopK gives F1 (against the partner's
    answers) no lower than the Baseline's at every K, strictly higher at one K at least, and above the unsteered
    score somewhere.
    """
    out = {}
    p = s.get("perturbation")
    if p and p["n"] and all(m in p["cells"] and {"top", "bottom"} <= set(p["cells"][m]) for m in METHODS):
        ks = s["ks"]
        diffs = {m: [(k, _f(p["cells"][m]["bottom"][k]), _f(p["cells"][m]["top"][k])) for k in ks] for m in METHODS}
        ok = all(all(b is not None and t is not None and b >= t for _, b, t in diffs[m])
                 and diffs[m][-1][1] is not None and diffs[m][-1][1] > diffs[m][-1][2] for m in METHODS)
        txt = "; ".join(f"{m}: " + ", ".join(f"K={k} {b:.1f} vs {t:.1f}" for k, b, t in diffs[m] if b is not None)
                        for m in METHODS)
        out["rq1"] = {"holds": ok, "text": f"F1 after masking BottomK vs TopK ({txt}; n={p['n']})"}
        pairs = [(k, _f(p["cells"]["gradsae"]["top"][k]), _f(p["cells"]["baseline"]["top"][k])) for k in ks]
        pairs = [x for x in pairs if x[1] is not None and x[2] is not None]
        wins = sum(1 for _, g, b in pairs if g < b)
        ok2 = bool(pairs) and all(g <= b for _, g, b in pairs) and wins > 0
        out["rq2"] = {"holds": ok2, "wins": wins, "of": len(pairs),
                      "text": f"F1 after masking TopK, GradSAE vs Baseline: lower at {wins}/{len(pairs)} K (" +
                      ", ".join(f"K={k} {g:.1f} vs {b:.1f}" for k, g, b in pairs) + f"; n={p['n']})"}
    else:
        out["rq1"] = {"holds": None, "text": "perturbation not run or no kept examples"}
        out["rq2"] = dict(out["rq1"])
    st = s.get("steering")
    if st and st["n"] and all(m in st["cells"] and "top" in st["cells"][m] for m in METHODS):
        ks = st["ks"]
        pairs = [(k, _f(st["cells"]["gradsae"]["top"][k]), _f(st["cells"]["baseline"]["top"][k])) for k in ks]
        pairs = [x for x in pairs if x[1] is not None and x[2] is not None]
        wins = sum(1 for _, g, b in pairs if g > b)
        base = _f(st["unsteered"]) or 0.0
        ok3 = bool(pairs) and all(g >= b for _, g, b in pairs) and wins > 0 and any(g > base for _, g, _ in pairs)
        out["rq3"] = {"holds": ok3, "wins": wins, "of": len(pairs),
                      "text": f"steering F1 against the partner's answers, GradSAE vs Baseline TopK: higher at "
                              f"{wins}/{len(pairs)} K (" + ", ".join(f"K={k} {g:.1f} vs {b:.1f}" for k, g, b in pairs)
                              + f"; unsteered {base:.1f}; n={st['n']})"}
    else:
        out["rq3"] = {"holds": None, "text": "steering not run or no example with a partner"}
    return out


def _fmt(c: dict | None, key: str, ci: bool = True) -> str:
    if not c or c.get(key) is None:
        return "–"
    lo, hi = c.get(f"{key}_ci", [None, None])
    return f"{c[key]:.1f}" + (f" ({lo:.0f}–{hi:.0f})" if ci and lo is not None else "")


def table_markdown(s: dict) -> str:
    """table.md: Table 1 (upper/lower) and Table 3 in the paper's layout, n and 95% CI per cell."""
    d = s["data"]
    L = [f"# GradSAE on SQuAD — {s['model']}, SAE {s['sae']} ({s['layer']})", "",
         f"{d['n_kept']} of {d['n_answered']} answered questions kept (F1 ≥ {d['min_f1']} through the SAE splice; "
         f"{d['n_examples']} loaded). Unedited accuracy of the spliced model on all answered: EM "
         f"{_fmt(d['unedited'], 'em')}, F1 {_fmt(d['unedited'], 'f1')}.",
         f"Failed (recorded, not dropped): answer {s['failed']['answer']}, perturb {s['failed']['perturb']}, "
         f"steer {s['failed']['steer']}.", "",
         "Cells: mean (95% CI); EM Wilson interval, F1 Student-t interval; n = examples per cell.", ""]
    names = {"baseline": "Baseline", "gradsae": "GradSAE"}

    def block(title, sec, arrow, wo, ks):
        L.append(f"## {title}")
        L.append("")
        head = "| Method | Set | n | w/o EM | w/o F1 | " + " | ".join(f"K={k} EM | K={k} F1" for k in ks) + " |"
        L.append(head)
        L.append("|" + "---|" * (5 + 2 * len(ks)))
        for m in s["methods"]:
            for side in s["sets"]:
                cells = sec["cells"][m][side]
                n = max((cells[k]["n"] for k in ks), default=0)
                L.append(f"| {names.get(m, m)} | {'TopK' if side == 'top' else 'BottomK'} {arrow[side]} | {n} | "
                         f"{_fmt(wo, 'em', False)} | {_fmt(wo, 'f1', False)} | "
                         + " | ".join(f"{_fmt(cells[k], 'em')} | {_fmt(cells[k], 'f1')}" for k in ks) + " |")
        L.append("")

    if "perturbation" in s:
        p = s["perturbation"]
        block("Table 1 (upper): perturbation — zero the set at every position", p, {"top": "↓", "bottom": "↑"},
              p["control"], s["ks"])
        L.append(f"Control row (unedited, same batch): {p['control']['agree']}/{p['n']} predictions identical to "
                 "the filtering run.")
        L.append("")
    if "steering" in s:
        st = s["steering"]
        block(f"Table 1 (lower): local steering — scored against the partner's answers (inject {st['inject']}, "
              f"at {st['at']}, clamp {st['clamp'] or 'none'})", st, {"top": "↑", "bottom": "↓"}, st["unsteered"],
              st["ks"])
        L.append(f"{st['n']} examples had a kept partner on the same context; {st['n_without_partner']} had none.")
        L.append("")
        L.append("Overlap of the example's set with its partner's (%) and F1 against the example's own answers:")
        L.append("")
        L.append("| Method | Set | " + " | ".join(f"K={k} overlap | K={k} own F1" for k in st["ks"]) + " |")
        L.append("|" + "---|" * (2 + 2 * len(st["ks"])))
        for m in s["methods"]:
            for side in s["sets"]:
                c = st["cells"][m][side]
                L.append(f"| {names.get(m, m)} | {'TopK' if side == 'top' else 'BottomK'} | " + " | ".join(
                    f"{c[k].get('overlap', float('nan')):.1f} | {c[k].get('own_f1', float('nan')):.1f}"
                    if c[k]["n"] else "– | –" for k in st["ks"]) + " |")
        L.append("")
    if "stats" in s:
        t = s["stats"]

        def pc(x):
            return "–" if x is None else f"{x:.2f}%"

        def num(x):
            return "–" if x is None else f"{x:.2f}"
        L += [f"## Table 3: latent statistics (K = 50%, n = {t['n']} kept examples, "
              f"{t['n_context_pairs']} same-context pairs)", "",
              "| | Baseline | GradSAE |", "|---|---|---|",
              f"| Activation Avg. (active at last prompt token) | {num(t['active_last_mean'])} | |",
              f"| Active at any position | {num(t['active_any_mean'])} | |",
              f"| 50% Avg. | {num(t['k50_mean'])} | |",
              f"| Cross TopK Overlap | {pc(t['cross_top_overlap'])} | |",
              f"| Cross BottomK Overlap | {pc(t['cross_bottom_overlap'])} | |",
              f"| Inner TopK Overlap | {pc(t['inner']['baseline']['top'])} | {pc(t['inner']['gradsae']['top'])} |",
              f"| Inner BottomK Overlap | {pc(t['inner']['baseline']['bottom'])} | "
              f"{pc(t['inner']['gradsae']['bottom'])} |", ""]
    L.append("## Research questions")
    L.append("")
    for k, v in s["rq"].items():
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[v["holds"]]
        L.append(f"- **{k.upper()}** {verdict}: {v['text']}")
    L.append("")
    return "\n".join(L)


def sweep_markdown(runs: Sequence[dict]) -> str:
    """Combined table over runs (the layout of the paper's Tables 4 and 5): every K, EM/F1, n."""
    L = ["# GradSAE sweep — perturbation (EM / F1)", ""]
    for r in runs:
        s = r["summary"]
        L.append(f"## {r['tag']}: SAE {s['sae']} ({s['layer']}), {s['data']['n_kept']} kept")
        L.append("")
        if "perturbation" not in s:
            L.append("(perturbation not run)")
            L.append("")
            continue
        ks = s["ks"]
        L.append("| Method | Set | " + " | ".join(f"K={k} EM | K={k} F1" for k in ks) + " |")
        L.append("|" + "---|" * (2 + 2 * len(ks)))
        for m in s["methods"]:
            for side in s["sets"]:
                c = s["perturbation"]["cells"][m][side]
                L.append(f"| {m} | {side} | " + " | ".join(f"{_fmt(c[k], 'em')} | {_fmt(c[k], 'f1')}" for k in ks) + " |")
        L.append("")
        if "steering" in s:
            st = s["steering"]
            L.append(f"Steering (n={st['n']}) GradSAE TopK F1: " + ", ".join(
                f"K={k} {_fmt(st['cells']['gradsae']['top'][k], 'f1', False)}" for k in st["ks"]
                if "gradsae" in st["cells"] and "top" in st["cells"]["gradsae"]))
            L.append("")
    return "\n".join(L)


def plot(s: dict, out: Path) -> list[Path]:
    """perturb.png and steer.png: EM and F1 vs K, one line per method × set, 95% CI error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for sec_name, fname, title in (("perturbation", "perturb.png", "Perturbation: zero the set"),
                                   ("steering", "steer.png", "Local steering: vs partner's answers")):
        sec = s.get(sec_name)
        if not sec:
            continue
        ks = sec.get("ks", s["ks"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("em", "f1")):
            for m in s["methods"]:
                for side in s["sets"]:
                    cs = [sec["cells"][m][side][k] for k in ks]
                    ys = [c[metric] if c[metric] is not None else float("nan") for c in cs]
                    lo = [y - c[f"{metric}_ci"][0] if c[f"{metric}_ci"][0] is not None else 0 for y, c in zip(ys, cs)]
                    hi = [c[f"{metric}_ci"][1] - y if c[f"{metric}_ci"][1] is not None else 0 for y, c in zip(ys, cs)]
                    ax.errorbar(range(len(ks)), ys, yerr=[lo, hi], marker="o", capsize=3,
                                linestyle="-" if side == "top" else "--",
                                color="tab:red" if m == "gradsae" else "tab:blue",
                                label=f"{'GradSAE' if m == 'gradsae' else 'Baseline'} {'TopK' if side == 'top' else 'BottomK'}")
            ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
            ax.set_ylabel(metric.upper())
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title} (n={sec['n']}) — {s['sae']}")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        made.append(out / fname)
    return made


# ---------------------------------------------------------------------------------------------
# Records: per-rank JSONL files, merged by rank 0
# ---------------------------------------------------------------------------------------------

class _Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        self._own = False
        if self.enabled:
            import datetime
            import torch.distributed as dist
            if not dist.is_initialized():
                backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
                dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
                self._own = True

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self):
        if self._own:
            import torch.distributed as dist
            dist.destroy_process_group()
            self._own = False


def _better(old: dict | None, new: dict) -> bool:
    """Which record wins for one (task, id): a success beats an error; otherwise the later one."""
    return old is None or "error" in old or "error" not in new


def read_records(out: Path) -> dict[tuple[str, str], dict]:
    """Latest record per (task, id) from examples.jsonl and any examples.rank*.jsonl."""
    recs: dict[tuple[str, str], dict] = {}
    files = [out / "examples.jsonl"] + sorted(out.glob("examples.rank*.jsonl"))
    for f in files:
        if f.exists():
            for r in JsonlLog(f).records():
                k = (r.get("task"), r.get("id"))
                if _better(recs.get(k), r):
                    recs[k] = r
    return recs


def merge_shards(out: Path) -> None:
    """Append shard records that examples.jsonl lacks (or has only as errors), then delete the shards."""
    shards = sorted(out.glob("examples.rank*.jsonl"))
    if not shards:
        return
    main = JsonlLog(out / "examples.jsonl")
    have = {(r.get("task"), r.get("id")): r for r in main.records()}
    for f in shards:
        for r in JsonlLog(f).records():
            k = (r.get("task"), r.get("id"))
            if k not in have or ("error" in have[k] and "error" not in r):
                main.append(r)
                have[k] = r
    for f in shards:
        f.unlink()


# ---------------------------------------------------------------------------------------------
# Model plumbing
# ---------------------------------------------------------------------------------------------

def _load_model(spec: str, device: str, dtype: str):
    from .model import load_model
    return load_model(spec, device=device, dtype=dtype)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]


class _Ctx:
    """What one run needs: model, tokenizer, SAE, layer, prompt builder, decoding settings."""

    def __init__(self, cfg: SquadConfig, model, tok, sae, layer, builder: sq.PromptBuilder):
        self.cfg, self.model, self.tok, self.sae, self.layer, self.builder = cfg, model, tok, sae, layer, builder
        self.stop = parse_stop(cfg.stop, builder)
        self.extract = builder.default_extract if cfg.extract == "auto" else cfg.extract
        self.device = sae.W_dec.device

    def answer(self, raw: str) -> str:
        return sq.extract_answer(raw, self.extract, self.cfg.answer_regex)

    def generate(self, prompts: Sequence[str], edits=None, latent_fn=None, same_prompt: bool = False):
        """Greedy answers through the splice: (raw texts, answer token ids) per row. ``same_prompt``: every
        row is one prompt with its own edits, so blocks 0..L run once (``shared_trunk``)."""
        from .generate import encode_prompts, greedy_generate
        from .influence import answer_ids
        from .splice import Splice

        batch = encode_prompts(self.tok, list(prompts), device=self.device)
        with Splice(self.model, self.sae, layer=self.layer, error=self.cfg.error, edits=edits,
                    latent_fn=latent_fn) as s:
            cache = self.cfg.kv_cache
            gen = greedy_generate(self.model, self.tok, batch, max_new_tokens=self.cfg.max_new_tokens,
                                  stop=self.stop, splice=s, use_cache=cache,
                                  shared_trunk=cache and same_prompt and len(prompts) > 1)
        return gen.texts, [answer_ids(self.tok, t, self.stop) for t in gen.tokens]


def _kmax(cfg: SquadConfig, n_active_last: int) -> int:
    from .influence import resolve_k
    ks = list(cfg.ks) + list(getattr(cfg, "steer_ks", []) or []) + ["50%"]
    return max(resolve_k(k, n_active_last) for k in ks)


def answer_batch(ctx: _Ctx, qas: Sequence[sq.QA]) -> list[dict]:
    """Phase 1 for a batch: answer, score, filter, and for kept examples store the ranked latent sets."""
    from .influence import Example, influence

    t0 = time.perf_counter()
    prompts = [ctx.builder(q.context, q.question) for q in qas]
    texts, ids = ctx.generate(prompts)
    recs = []
    for q, raw, oid in zip(qas, texts, ids):
        pred = ctx.answer(raw)
        em, f1 = sq.em_f1(pred, q.answers)
        recs.append({"task": "answer", "id": q.id, "context_id": q.context_id, "question": q.question,
                     "golds": q.answers, "prediction": pred, "raw": raw, "em": em, "f1": round(f1, 6),
                     "kept": sq.is_correct(f1, ctx.cfg.min_f1) and bool(oid)})
    kept = [i for i, r in enumerate(recs) if r["kept"]]
    if kept:
        c = ctx.cfg
        infs = influence(ctx.model, ctx.tok, ctx.sae, [Example(prompts[i], id=qas[i].id) for i in kept],
                         layer=ctx.layer, target=c.target, aggregation=c.aggregation, positions=c.positions,
                         error=c.error, batch_size=max(1, c.batch_size), keep_per_token=0,
                         output_ids=[ids[i] for i in kept])
        for i, inf in zip(kept, infs):
            kmax = _kmax(c, inf.n_active_last)

            def rows(idx):
                return [[int(j), round(float(inf.scores[j]), 7), round(float(inf.baseline[j]), 6)] for j in idx]

            def rows_b(idx):
                return [[int(j), round(float(inf.baseline[j]), 6), round(float(inf.baseline[j]), 6)] for j in idx]
            recs[i].update(n_active_last=inf.n_active_last, n_active_any=inf.active_any, sets={
                "gradsae": {"top": rows(inf.top(kmax)), "bottom": rows(inf.bottom(kmax))},
                "baseline": {"top": rows_b(inf.top(kmax, baseline=True)),
                             "bottom": rows_b(inf.bottom(kmax, baseline=True))}})
    dt = (time.perf_counter() - t0) / len(qas)
    for r in recs:
        r["seconds"] = round(dt, 3)
    return recs


def perturb_example(ctx: _Ctx, rec: dict, prompt: str) -> dict:
    """Phase 2 for one kept example: one batch (control + every distinct zeroed set) through one generation."""
    from .splice import RowEdit

    t0 = time.perf_counter()
    cfg = ctx.cfg
    variants = {}
    for m in cfg.methods:
        for side in cfg.sets:
            for k in cfg.ks:
                lat = tuple(sorted(e[0] for e in latent_set(rec["sets"], m, side, k, rec["n_active_last"])))
                variants[_key(m, side, k)] = lat
    uniq = list(dict.fromkeys(v for v in variants.values() if v))  # distinct non-empty sets, first-seen order
    rows = [None] + [RowEdit(zero=list(v), at="all") for v in uniq]
    texts, _ = ctx.generate([prompt] * len(rows), edits=rows, same_prompt=True)
    preds = [ctx.answer(t) for t in texts]
    row_of = {v: i + 1 for i, v in enumerate(uniq)}
    cells = {}
    for key, lat in variants.items():
        p = preds[row_of[lat]] if lat else preds[0]
        em, f1 = sq.em_f1(p, rec["golds"])
        cells[key] = {"prediction": p, "em": em, "f1": round(f1, 6), "k": len(lat)}
    em, f1 = sq.em_f1(preds[0], rec["golds"])
    return {"task": "perturb", "id": rec["id"], "rows": len(rows),
            "control": {"prediction": preds[0], "em": em, "f1": round(f1, 6), "agree": preds[0] == rec["prediction"]},
            "cells": cells, "seconds": round(time.perf_counter() - t0, 3)}


def steer_example(ctx: _Ctx, rec: dict, partner: dict | None, prompt: str) -> dict:
    """Phase 3 for one kept example: zero its own set at every position, set the partner's set to the
    partner's values (``--inject``, ``--clamp``) at ``--at`` positions; score against the partner's golds."""
    from .splice import RowEdit

    t0 = time.perf_counter()
    cfg = ctx.cfg
    if partner is None:
        return {"task": "steer", "id": rec["id"], "partner": None, "cells": {}, "seconds": 0.0}
    clamp = parse_clamp(cfg.clamp)
    col = 1 if cfg.inject == "score" else 2
    variants = {}
    for m in cfg.methods:
        for side in cfg.sets:
            for k in (cfg.steer_ks or cfg.ks):
                own = tuple(sorted(e[0] for e in latent_set(rec["sets"], m, side, k, rec["n_active_last"])))
                par = latent_set(partner["sets"], m, side, k, partner["n_active_last"])
                vals = {}
                for e in par:
                    v = float(e[col])
                    vals[int(e[0])] = min(max(v, clamp[0]), clamp[1]) if clamp else v
                variants[_key(m, side, k)] = (own, tuple(sorted(vals.items())),
                                              overlap(own, [e[0] for e in par]))
    uniq = list(dict.fromkeys((o, v) for o, v, _ in variants.values() if o or v))
    C = ctx.sae.d_sae
    keep = torch.ones(len(uniq) + 1, C, device=ctx.device)
    rows: list = [None]
    for i, (own, vals) in enumerate(uniq, 1):
        if own:
            keep[i, list(own)] = 0.0
        rows.append(RowEdit(set=dict(vals), at=cfg.at) if vals else None)

    def zero_own(H):  # [R, T, C]: own set zeroed at every position of every forward call
        return H * keep[:, None, :].to(H.dtype)

    texts, _ = ctx.generate([prompt] * len(rows), edits=rows if any(r is not None for r in rows) else None,
                            latent_fn=zero_own, same_prompt=True)
    preds = [ctx.answer(t) for t in texts]
    row_of = {u: i + 1 for i, u in enumerate(uniq)}
    cells = {}
    for key, (own, vals, ov) in variants.items():
        p = preds[row_of[(own, vals)]] if (own or vals) else preds[0]
        em, f1 = sq.em_f1(p, partner["golds"])
        cells[key] = {"prediction": p, "em": em, "f1": round(f1, 6), "own_f1": round(sq.em_f1(p, rec["golds"])[1], 6),
                      "k": len(own), "overlap": ov}
    em, f1 = sq.em_f1(preds[0], partner["golds"])
    return {"task": "steer", "id": rec["id"], "partner": partner["id"], "rows": len(rows),
            "unsteered": {"prediction": preds[0], "em": em, "f1": round(f1, 6)},
            "cells": cells, "seconds": round(time.perf_counter() - t0, 3)}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def make_prompt_builder(cfg: SquadConfig, tok, qas: Sequence[sq.QA]) -> sq.PromptBuilder:
    """The run's prompt template; few-shot exemplars never come from the evaluation contexts ``qas``."""
    if cfg.template == "fewshot":
        ctx_text, pairs = sq.fewshot_exemplars(cfg.fewshot_data, exclude_contexts=[q.context for q in qas],
                                               paragraph=None if cfg.fewshot_paragraph < 0 else cfg.fewshot_paragraph)
        return sq.PromptBuilder("fewshot", tok, ctx_text, pairs)
    return sq.PromptBuilder(cfg.template, tok)


# fields the answer phase (filter + rankings) depends on: --answers-from needs them equal
_ANSWER_FINGERPRINT = tuple(k for k in _FINGERPRINT if k not in (
    "seed", "ks", "methods", "sets", "inject", "at", "clamp", "steer_ks", "kv_cache")) + ("stop_resolved", "extract_resolved")


def import_answers(src: Path, out: Path, fp: dict, ks: Sequence[str], qids: Sequence[str]) -> int:
    """Copy answer records (filter + stored rankings) from results folder ``src`` into ``out``'s
    examples.jsonl for the questions in ``qids`` that ``out`` lacks; returns how many. Refuses a folder made
    with other answer-affecting options, or whose stored rankings are shorter than ``ks`` needs."""
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise GradsaeError(f"--answers-from {src}: no config.json there; give a gradsae results folder")
    old = read_json(cfg_path)
    ofp = old.get("fingerprint", {})
    keys = _ANSWER_FINGERPRINT + (("seed",) if ofp.get("shuffle") else ())  # the seed picks the questions
    diff = [k for k in keys if k in fp and k in ofp and ofp[k] != fp[k]]
    if diff:
        k = diff[0]
        raise GradsaeError(f"--answers-from {src} was made with {k}={ofp[k]!r}, this run has {fp[k]!r}: "
                           "the answers and rankings would differ; rerun the answer phase instead")
    old_ks = set(ofp.get("ks", [])) | set(ofp.get("steer_ks", []) or []) | {"50%"}
    missing = [k for k in ks if k not in old_ks]
    if missing:
        raise GradsaeError(f"--answers-from {src} stored rankings for K in {sorted(old_ks)}, not K={missing[0]}: "
                           "use those K values or rerun the answer phase")
    have = read_records(out)
    theirs = read_records(src)
    log = JsonlLog(out / "examples.jsonl")
    n = 0
    for qid in qids:
        r = theirs.get(("answer", qid))
        if r is not None and "error" not in r and ("answer", qid) not in have:
            log.append({**r, "answers_from": str(src)})
            n += 1
    return n


def _fingerprint(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: d[k] for k in _FINGERPRINT if k in d}


def _check_config(out: Path, cfg, command: str, extra: dict | None = None) -> dict:
    """Refuse to resume a folder made with different result-affecting options; return the merged config."""
    fp = {**_fingerprint(cfg), **(extra or {})}
    path = out / "config.json"
    merged = {"commands": [command], "config": dataclasses.asdict(cfg), "fingerprint": fp}
    if path.exists():
        old = read_json(path)
        ofp = old.get("fingerprint", {})
        diff = [k for k in fp if k in ofp and ofp[k] != fp[k]]
        if diff:
            k = diff[0]
            raise GradsaeError(f"results folder {out} was made with different options ({k}: {ofp[k]!r} now "
                               f"{fp[k]!r}): use another --out or delete the folder")
        merged["commands"] = list(dict.fromkeys(old.get("commands", []) + [command]))
        merged["config"] = {**old.get("config", {}), **merged["config"]}
        merged["fingerprint"] = {**ofp, **fp}
    return merged


def _progress(it, total, desc, enabled):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
        return tqdm(it, total=total, desc=desc, unit="ex", dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        return it


def _run_one(cfg: SquadConfig, tasks: Sequence[str], command: str, out: Path, sae_spec: str, layer,
             model, tok, dist: _Dist) -> dict | None:
    from .formats import load_sae
    from .model import model_name
    from .splice import check_compatible

    sae = load_sae(sae_spec, device=str(next(model.parameters()).device))
    check_compatible(model, sae, layer)
    qas = sq.load_questions(cfg.data, limit=cfg.limit or None, seed=cfg.seed, shuffle=cfg.shuffle)
    builder = make_prompt_builder(cfg, tok, qas)
    for m in cfg.methods:
        if m not in METHODS:
            raise GradsaeError(f"unknown method {m!r}: use baseline and/or gradsae")
    for s_ in cfg.sets:
        if s_ not in SETS:
            raise GradsaeError(f"unknown set {s_!r}: use top and/or bottom")
    from .influence import resolve_k
    for k in list(cfg.ks) + list(getattr(cfg, "steer_ks", []) or []):
        resolve_k(k, 10)
    if getattr(cfg, "clamp", ""):
        parse_clamp(cfg.clamp)
    ctx = _Ctx(cfg, model, tok, sae, layer, builder)
    parse_stop(cfg.stop, builder)

    out.mkdir(parents=True, exist_ok=True)
    merged_cfg = _check_config(out, cfg, command, {"stop_resolved": list(ctx.stop), "extract_resolved": ctx.extract})
    dist.barrier()
    if dist.rank == 0:
        merged_cfg["sae_resolved"] = sae_spec
        merged_cfg["layer_resolved"] = str(layer) if layer is not None else sae.cfg.hook_name
        write_json(out / "config.json", merged_cfg)
        if cfg.answers_from:
            ks = list(cfg.ks) + list(getattr(cfg, "steer_ks", []) or [])
            n = import_answers(Path(cfg.answers_from), out, merged_cfg["fingerprint"], ks, [q.id for q in qas])
            if cfg.progress:
                print(f"reused {n} answer records from {cfg.answers_from}", flush=True)
    dist.barrier()
    log = JsonlLog(out / ("examples.jsonl" if not dist.enabled else f"examples.rank{dist.rank}.jsonl"))
    recs = read_records(out)

    def done(task, qid):
        r = recs.get((task, qid))
        return r is not None and not (cfg.retry_failed and "error" in r)

    def record(r):
        log.append(r)
        recs[(r["task"], r["id"])] = r

    show = cfg.progress and dist.rank == 0
    by_id = {q.id: q for q in qas}
    prompt_of = lambda qid: builder(by_id[qid].context, by_id[qid].question)  # noqa: E731

    # 1. answer + filter + influence, in fixed global batches (batch j on rank j % world)
    B = max(1, cfg.batch_size)
    batches = [qas[i:i + B] for i in range(0, len(qas), B)]
    mine = [b for j, b in enumerate(batches) if j % dist.world == dist.rank]
    todo = [[q for q in b if not done("answer", q.id)] for b in mine]
    todo = [b for b in todo if b]
    bar = _progress(todo, len(todo), f"answer+influence ({B}/batch)", show)
    for b in bar:
        try:
            for r in answer_batch(ctx, b):
                record(r)
        except Exception:  # retry one by one so a bad example cannot sink its batch
            for q in b:
                try:
                    for r in answer_batch(ctx, [q]):
                        record(r)
                except Exception as e:
                    record({"task": "answer", "id": q.id, "context_id": q.context_id, "error": _err(e),
                            "traceback": traceback.format_exc(limit=3)[-1500:]})
    dist.barrier()
    recs = read_records(out)
    answered = [recs[("answer", q.id)] for q in qas if ("answer", q.id) in recs]
    if answered and all("error" in r for r in answered):
        raise GradsaeError(f"every example failed while answering (first: {answered[0]['error']}): "
                           "check the model, SAE and template")
    kept = [r for r in answered if "error" not in r and r.get("kept")]
    kept_ids = [r["id"] for r in kept]
    mine_ids = [i for j, i in enumerate(kept_ids) if j % dist.world == dist.rank]

    triples = [(r["id"], r["context_id"], r["question"]) for r in kept]

    def steer(qid):
        a = recs[("answer", qid)]
        pid = pick_partner(qid, a["context_id"], triples, a["question"], cfg.seed)
        return steer_example(ctx, a, recs[("answer", pid)] if pid else None, prompt_of(qid))

    work = {"perturb": lambda qid: perturb_example(ctx, recs[("answer", qid)], prompt_of(qid)), "steer": steer}
    # example by example (perturb, then steer), so a run stopped early has both tables on the same examples
    jobs = [(qid, t) for qid in mine_ids for t in ("perturb", "steer") if t in tasks and not done(t, qid)]
    for qid, task in _progress(jobs, len(jobs), "+".join(t for t in ("perturb", "steer") if t in tasks), show):
        try:
            r = work[task](qid)
        except Exception as e:
            r = {"task": task, "id": qid, "error": _err(e), "traceback": traceback.format_exc(limit=3)[-1500:]}
        record(r)
    dist.barrier()
    if dist.rank != 0:
        return None
    merge_shards(out)
    recs = read_records(out)
    full = merged_cfg["config"]  # also the options of earlier commands on this folder (e.g. steer after perturb)
    order = [q.id for q in qas]
    present = [t for t in ("perturb", "steer") if t in tasks or any((t, i) in recs for i in order)]
    clamp = parse_clamp(full.get("clamp", ""))
    meta = {"model": model_name(model), "sae": sae_spec,
            "layer": str(layer) if layer is not None else sae.cfg.hook_name, "d_sae": sae.d_sae,
            "data": cfg.data, "min_f1": cfg.min_f1, "ks": list(cfg.ks), "methods": list(cfg.methods),
            "sets": list(cfg.sets), "tasks": present, "steer_ks": list(full.get("steer_ks") or []),
            "inject": full.get("inject"), "at": full.get("at"), "clamp": list(clamp) if clamp else None}
    summary = summarize(recs, order, meta)
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "table.md", table_markdown(summary))
    try:
        plot(summary, out)
    except Exception as e:  # plots are a convenience; the numbers are in summary.json
        print(f"warning: plotting failed ({_err(e)})")
    _write_report(out, f"GradSAE on SQuAD — {meta['model']}, {sae_spec}")
    return summary


def _write_report(out: Path, title: str) -> None:
    """report.html for a results folder; like the plots a convenience, so a failure only warns."""
    try:
        from .report import report_from_folder
        report_from_folder(out, title=title)
    except Exception as e:
        print(f"warning: the HTML report failed ({_err(e)}); rebuild it with gradsae report {out}")


def _runs(cfg: SquadConfig) -> list[tuple[str, str, object]]:
    """(tag, sae spec, layer) for every run of a sweep; a single run has tag ''."""
    saes = [s.strip() for s in cfg.sae.split(",") if s.strip()]
    if not saes:
        raise GradsaeError("no SAE given: pass --sae NAME_OR_PATH (e.g. smollm2/topk/L9)")
    layers = list(cfg.layers) or [None]
    fixed = cfg.layer.strip() if isinstance(cfg.layer, str) else cfg.layer
    if fixed not in ("", None) and cfg.layers:
        raise GradsaeError("give either --layer or --layers, not both")
    runs = []
    for s in saes:
        for L in layers:
            spec = s.replace("{layer}", str(L)) if L is not None else s
            if "{layer}" in spec:
                raise GradsaeError(f"--sae {s!r} has '{{layer}}' but no --layers were given")
            layer = None if (L is None or "{layer}" in s) else int(L)
            if L is None and fixed not in ("", None):
                layer = int(fixed) if re.fullmatch(r"-?\d+", str(fixed)) else fixed
            tag = "_".join(x for x in (re.sub(r"[^\w.-]+", "_", s.replace("{layer}", "")).strip("_") if len(saes) > 1
                                       else "", f"L{L}" if L is not None else "") if x)
            runs.append((tag, spec, layer))
    return runs


def _run(cfg: SquadConfig, tasks: Sequence[str], command: str, model=None, tokenizer=None):
    for t in tasks:
        if t not in TASKS:
            raise GradsaeError(f"unknown task {t!r}: use perturb, steer and/or stats")
    if cfg.threads and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist = _Dist(cfg.device)
    try:
        runs = _runs(cfg)
        if model is None:
            model, tokenizer = _load_model(cfg.model, cfg.device, cfg.dtype)
        out = Path(cfg.out)
        results = []
        for tag, spec, layer in runs:
            sub = out / tag if tag else out
            summary = _run_one(cfg, tasks, command, sub, spec, layer, model, tokenizer, dist)
            if summary is not None:
                results.append({"tag": tag, "sae": spec, "layer": summary["layer"], "dir": tag or ".",
                                "summary": summary})
                print(f"\n{table_markdown(summary)}\nresults in {sub}/")
        if dist.rank == 0 and len(runs) > 1:
            write_json(out / "sweep.json", {"schema": SWEEP_SCHEMA, "runs": results})
            atomic_write_text(out / "table.md", sweep_markdown(results))
            print(sweep_markdown(results))
            _write_report(out, "GradSAE on SQuAD — sweep")
        if dist.rank != 0:
            return None
        return results[0]["summary"] if len(results) == 1 else {"schema": SWEEP_SCHEMA, "runs": results}
    finally:
        dist.close()


def run_perturb(cfg: PerturbConfig, model=None, tokenizer=None):
    """Perturbation (Table 1 upper); returns summary.json's content (rank 0) — also written to ``cfg.out``."""
    return _run(cfg, ["perturb"], "perturb", model, tokenizer)


def run_steer(cfg: SteerConfig, model=None, tokenizer=None):
    """Local steering (Table 1 lower)."""
    return _run(cfg, ["steer"], "steer", model, tokenizer)


def run_stats(cfg: StatsConfig, model=None, tokenizer=None):
    """Latent statistics (Table 3)."""
    return _run(cfg, ["stats"], "stats", model, tokenizer)


def run_all(cfg: ExperimentConfig, model=None, tokenizer=None):
    """Perturbation, steering and statistics (and a sweep over --layers / several --sae)."""
    return _run(cfg, list(cfg.tasks), "experiment", model, tokenizer)
