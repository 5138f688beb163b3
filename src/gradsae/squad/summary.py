"""summary.json from the records: confidence intervals, grid cells, latent statistics (Table 3) and the
RQ1–RQ3 verdicts. Pure functions of typed records; no model, no files.

A verdict follows from the statistics: each research question compares two edits on the *same* examples,
so it is decided on the per-example F1 differences (a paired Student-t interval). It "holds" when the 95%
interval of the mean difference lies above 0, "does not hold" when it lies below 0, and otherwise — or
with fewer than ``MIN_N`` examples — it is "not enough evidence (n = N)".
"""

from __future__ import annotations

from typing import Sequence

from ..influence import resolve_k
from ..stats import n_to_separate, t_interval, wilson_interval
from .config import METHODS, SETS
from .records import AnswerRecord, Cell, CellKey, EditRecord, Record

SCHEMA = "gradsae.experiments.summary/1"
SWEEP_SCHEMA = "gradsae.experiments.sweep/1"
MIN_N = 10  # fewer paired examples than this never decide a research question
SPLICE_WARN_RATIO = 0.5  # warn when the splice keeps fewer than this share of what the plain model answers


def wilson_ci(successes: float, n: int) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion, in percent (``gradsae.stats``)."""
    ci = wilson_interval(successes, n)
    return (None, None) if ci is None else (100 * ci[0], 100 * ci[1])


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """95% Student-t interval of the mean, in the unit of ``values`` (``gradsae.stats``)."""
    ci = t_interval(values)
    return (None, None) if ci is None else ci


def overlap(a: Sequence[int], b: Sequence[int]) -> float | None:
    """|A ∩ B| / |A| (the share of A also in B); None when A is empty."""
    if not len(a):
        return None
    return len(set(a) & set(b)) / len(set(a))


def cell(rows: Sequence[Cell]) -> dict:
    """Aggregate per-example cells (EM/F1 in 0-1) into a summary cell (percent, with 95% CIs)."""
    n = len(rows)
    if not n:
        return {"em": None, "f1": None, "em_ci": [None, None], "f1_ci": [None, None], "n": 0, "k_mean": None}
    em = [r.em for r in rows]
    f1 = [100 * r.f1 for r in rows]
    out = {
        "em": 100 * sum(em) / n,
        "f1": sum(f1) / n,
        "em_ci": list(wilson_ci(sum(em), n)),
        "f1_ci": list(mean_ci(f1)),
        "n": n,
    }
    ks = [r.k for r in rows if r.k is not None]
    out["k_mean"] = sum(ks) / len(ks) if ks else None
    if any(r.own_f1 is not None for r in rows):
        out["own_f1"] = 100 * sum(r.own_f1 or 0.0 for r in rows) / n
    ov = [r.overlap for r in rows if r.overlap is not None]
    if ov:
        out["overlap"] = 100 * sum(ov) / len(ov)
    return out


def _grid(recs: Sequence[EditRecord], methods, sets, ks) -> dict:
    return {
        m: {
            side: {k: cell([r.cells[CellKey(m, side, k)] for r in recs if CellKey(m, side, k) in r.cells]) for k in ks}
            for side in sets
        }
        for m in methods
    }


def summarize(records: dict[tuple[str, str], Record], order: Sequence[str], meta: dict) -> dict:
    """summary.json (see docs/experiments.md) from the latest record per (task, id), in ``order``."""
    ks, methods, sets = meta["ks"], meta["methods"], meta["sets"]
    ans: list[AnswerRecord] = [records[("answer", i)] for i in order if ("answer", i) in records]
    ok = [r for r in ans if r.ok]
    kept = [r for r in ok if r.kept]
    errors = [
        {"task": r.task, "id": r.id, "error": r.error}
        for r in (records[(t, i)] for i in order for t in ("answer", "perturb", "steer") if (t, i) in records)
        if not r.ok
    ]
    plain = [r.unspliced for r in ok if r.unspliced is not None]
    data = {
        "path": meta["data"],
        "n_examples": len(order),
        "n_answered": len(ok),
        "n_kept": len(kept),
        "min_f1": meta["min_f1"],
        "unedited": cell([Cell(em=r.em, f1=r.f1) for r in ok]),
    }
    if plain:  # the model without the SAE, on the same questions (folders from before 0.2 lack it)
        data["unspliced"] = {**cell(plain), "n_kept": sum(1 for c in plain if c.f1 >= meta["min_f1"] - 1e-12)}
    s: dict = {
        "schema": SCHEMA,
        "tasks": [],
        **{k: meta[k] for k in ("model", "sae", "layer", "d_sae")},
        "ks": list(ks),
        "methods": list(methods),
        "sets": list(sets),
        "data": data,
        "failed": {t: sum(1 for e in errors if e["task"] == t) for t in ("answer", "perturb", "steer")},
        "timing": {"answer": round(sum(r.seconds or 0 for r in ans), 2)},
        "warnings": splice_warnings(data),
    }
    s["failed"]["errors"] = errors
    pert = [r for r in (records.get(("perturb", i)) for i in order) if r is not None and r.ok]
    if "perturb" in meta["tasks"]:
        s["tasks"].append("perturb")
        ctrl = [r.control for r in pert if r.control is not None]
        s["perturbation"] = {
            "n": len(pert),
            "control": {**cell(ctrl), "agree": sum(1 for c in ctrl if c.agree)},
            "cells": _grid(pert, methods, sets, ks),
        }
        s["timing"]["perturb"] = round(sum(r.seconds or 0 for r in pert), 2)
    steer = [r for r in (records.get(("steer", i)) for i in order) if r is not None and r.ok]
    if "steer" in meta["tasks"]:
        s["tasks"].append("steer")
        sks = meta.get("steer_ks") or ks
        with_p = [r for r in steer if r.partner]
        s["steering"] = {
            "n": len(with_p),
            "n_without_partner": sum(1 for r in steer if not r.partner),
            "inject": meta.get("inject"),
            "at": meta.get("at"),
            "clamp": meta.get("clamp"),
            "ks": list(sks),
            "unsteered": cell([r.control for r in with_p if r.control is not None]),
            "cells": _grid(with_p, methods, sets, sks),
        }
        s["timing"]["steer"] = round(sum(r.seconds or 0 for r in steer), 2)
    s["tasks"].append("stats")  # no model run needed: always computed from the stored sets
    s["stats"] = latent_stats(kept)
    s["rq"] = verdicts(
        s,
        pert if "perturb" in meta["tasks"] else [],
        [r for r in steer if r.partner] if "steer" in meta["tasks"] else [],
    )
    s["timing"]["seconds"] = round(sum(v for v in s["timing"].values()), 2)
    return s


def splice_warnings(data: dict) -> list[str]:
    """A warning when the splice keeps far fewer questions than the plain model answers correctly."""
    plain = data.get("unspliced")
    if not plain:
        return []
    n_plain, n_kept = plain.get("n_kept", 0), data["n_kept"]
    if n_plain and n_kept < SPLICE_WARN_RATIO * n_plain:
        return [
            f"the SAE splice keeps {n_kept} of {data['n_answered']} questions, the model without it answers "
            f"{n_plain} correctly (F1 >= {data['min_f1']}): the SAE's reconstruction breaks the task, so the "
            "tables rest on few examples; try --error keep or a better SAE"
        ]
    return []


def latent_stats(kept: Sequence[AnswerRecord]) -> dict:
    """Table 3 from kept examples' answer records (sets at K = 50%)."""

    def ids(r: AnswerRecord, m, side):
        return r.sets.ids(m, side, "50%", r.n_active_last)

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return 100 * sum(xs) / len(xs) if xs else None

    rs = [r for r in kept if r.sets is not None]
    out = {
        "n": len(rs),
        "active_last_mean": sum(r.n_active_last for r in rs) / len(rs) if rs else None,
        "active_any_mean": sum(r.n_active_any for r in rs) / len(rs) if rs else None,
        "k50_mean": sum(resolve_k("50%", r.n_active_last) for r in rs) / len(rs) if rs else None,
        "cross_top_overlap": mean([overlap(ids(r, "baseline", "top"), ids(r, "gradsae", "top")) for r in rs]),
        "cross_bottom_overlap": mean([overlap(ids(r, "baseline", "bottom"), ids(r, "gradsae", "bottom")) for r in rs]),
    }
    by_ctx: dict[str, list[AnswerRecord]] = {}
    for r in rs:
        by_ctx.setdefault(r.context_id, []).append(r)
    pairs = [(a, b) for g in by_ctx.values() for a in g for b in g if a is not b]
    out["inner"] = {
        m: {side: mean([overlap(ids(a, m, side), ids(b, m, side)) for a, b in pairs]) for side in SETS} for m in METHODS
    }
    out["n_context_pairs"] = len(pairs)
    return out


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


def paired(recs: Sequence[EditRecord], a: CellKey, b: CellKey) -> dict:
    """F1(a) − F1(b) over the examples that have both cells, in F1 points: n, mean and its 95% t interval, and
    ``n_to_separate``: the n at which the interval would exclude 0 if the mean and spread held (the power figure)."""
    d = [100 * (r.cells[a].f1 - r.cells[b].f1) for r in recs if a in r.cells and b in r.cells]
    lo, hi = mean_ci(d)
    return {"n": len(d), "mean": sum(d) / len(d) if d else None, "ci": [lo, hi], "n_to_separate": n_to_separate(d)}


def decide(comparisons: Sequence[dict], need_all: bool) -> tuple[bool | None, str]:
    """Combine paired comparisons (each expected > 0 when the claim holds) into (holds, verdict word).

    ``need_all``: every comparison must be significantly > 0 (else: at least one, and none significantly < 0).
    Any comparison with n < MIN_N, or intervals that include 0 where a decision needs them not to, gives
    "not enough evidence (n = N)"."""
    if not comparisons:
        return None, "not measured"
    n = min(c["n"] for c in comparisons)
    if n < MIN_N or any(c["ci"][0] is None for c in comparisons):
        return None, f"not enough evidence (n = {n})"
    above = [c["ci"][0] > 0 for c in comparisons]
    below = [c["ci"][1] < 0 for c in comparisons]
    if any(below) and not any(above):
        return False, "does not hold"
    if all(above) if need_all else any(above) and not any(below):
        return True, "holds"
    return None, f"not enough evidence (n = {n})"


def _fmt_cmp(label: str, c: dict) -> str:
    if c["mean"] is None:
        return f"{label}: no examples"
    lo, hi = c["ci"]
    ci = f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None else ""
    need = c.get("n_to_separate")
    power = f" (separates at n ≈ {need} if it holds)" if lo is not None and lo <= 0 <= hi and need else ""
    return f"{label} {c['mean']:+.1f}{ci}{power}"


def verdicts(s: dict, pert: Sequence[EditRecord], steer: Sequence[EditRecord]) -> dict:
    """RQ1–RQ3 from paired per-example F1 differences (points, 95% t interval), each with its numbers.

    RQ1: masking BottomK leaves F1 higher than masking TopK (both methods, at the largest K). RQ2: masking
    GradSAE's TopK lowers F1 more than masking the Baseline's (at some K, and at no K the reverse). RQ3:
    steering with GradSAE's TopK gives higher F1 against the partner's answers than the Baseline's (same rule).
    """
    out = {}
    p = s.get("perturbation")
    if p and pert and all(m in p["cells"] and {"top", "bottom"} <= set(p["cells"][m]) for m in METHODS):
        k = s["ks"][-1]
        c1 = {m: paired(pert, CellKey(m, "bottom", k), CellKey(m, "top", k)) for m in METHODS}
        holds, word = decide(list(c1.values()), need_all=True)
        out["rq1"] = {
            "holds": holds,
            "verdict": word,
            "n": min(c["n"] for c in c1.values()),
            "text": f"F1 after masking BottomK minus after masking TopK at K={k}, mean [95% CI] in F1 "
            "points: " + "; ".join(_fmt_cmp(m, c) for m, c in c1.items()),
        }
    else:
        out["rq1"] = {"holds": None, "verdict": "not measured", "text": "perturbation not run or no kept examples"}
    if p and pert and all(m in p["cells"] and "top" in p["cells"][m] for m in METHODS):
        c2 = {k: paired(pert, CellKey("baseline", "top", k), CellKey("gradsae", "top", k)) for k in s["ks"]}
        holds, word = decide(list(c2.values()), need_all=False)
        out["rq2"] = {
            "holds": holds,
            "verdict": word,
            "n": min(c["n"] for c in c2.values()),
            "text": "F1 after masking the Baseline's TopK minus after masking GradSAE's, mean [95% CI] "
            "in F1 points: " + "; ".join(_fmt_cmp(f"K={k}", c) for k, c in c2.items()),
        }
    else:
        out["rq2"] = {"holds": None, "verdict": "not measured", "text": "perturbation not run or no kept examples"}
    st = s.get("steering")
    if st and steer and all(m in st["cells"] and "top" in st["cells"][m] for m in METHODS):
        c3 = {k: paired(steer, CellKey("gradsae", "top", k), CellKey("baseline", "top", k)) for k in st["ks"]}
        holds, word = decide(list(c3.values()), need_all=False)
        un = st["unsteered"].get("f1")
        out["rq3"] = {
            "holds": holds,
            "verdict": word,
            "n": min(c["n"] for c in c3.values()),
            "text": "steering F1 against the partner's answers, GradSAE's TopK minus the Baseline's, "
            "mean [95% CI] in F1 points: "
            + "; ".join(_fmt_cmp(f"K={k}", c) for k, c in c3.items())
            + (f"; unsteered F1 {un:.1f}" if un is not None else ""),
        }
    else:
        out["rq3"] = {"holds": None, "verdict": "not measured", "text": "steering not run or no example with a partner"}
    return out
