"""The experiments' summary.json read once into typed records, and the tables built from them in one place: Table 1
(upper: perturbation, lower: local steering), Table 3 (latent statistics) and the research-question verdicts. This
module renders them as table.md (and the sweep table, the layout of Tables 4 and 5); ``viz/report.py`` renders the
same records as HTML.

    read_summary(dict) -> Summary        (check_summary: a dict this version reads, else one line)
    Summary.table1 -> [Table1Block]      rows Baseline/GradSAE × TopK/BottomK, columns w/o and every K, best marked
    Summary.table3 -> Table3 | None      rows (label, Baseline, GradSAE)
    Summary.verdicts -> [Verdict]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import GradsaeError
from ..schema import ANY, INT, NUM, MapOf, Pair, check

SUMMARY_SCHEMAS = ("gradsae.experiments.summary/1", "gradsae.experiments.sweep/1")
METHOD_NAMES = {"baseline": "Baseline", "gradsae": "GradSAE"}
SET_NAMES = {"top": "TopK", "bottom": "BottomK"}
TASK_NAMES = {"perturbation": "Perturbation", "steering": "Local Steering"}
# For each task and set: is a lower score the "better" (more influential / weaker) result, and its arrow
LOWER_IS_BEST = {
    ("perturbation", "top"): True,
    ("perturbation", "bottom"): False,
    ("steering", "top"): False,
    ("steering", "bottom"): True,
}
ARROWS = {k: "↓" if low else "↑" for k, low in LOWER_IS_BEST.items()}

# summary.json as gradsae writes it (docs/experiments.md); every key optional, other keys free
_CELL = {
    "em": NUM,
    "f1": NUM,
    "em_ci": Pair(NUM),
    "f1_ci": Pair(NUM),
    "n": INT,
    "n_kept": INT,
    "agree": INT,
    "k_mean": NUM,
    "overlap": NUM,
    "own_f1": NUM,
}
_SECTION = {
    "n": INT,
    "n_without_partner": INT,
    "ks": [(str, INT)],
    "control": _CELL,
    "unsteered": _CELL,
    "cells": MapOf(MapOf(MapOf(_CELL))),
    "inject": str,
    "at": (str, INT),
    "clamp": ANY,
}
SUMMARY_SCHEMA = {
    "schema": str,
    "model": str,
    "sae": str,
    "layer": (str, INT),
    "d_sae": INT,
    "ks": [(str, INT)],
    "methods": [str],
    "sets": [str],
    "tasks": list,
    "data": {
        "path": str,
        "n_examples": INT,
        "n_answered": INT,
        "n_kept": INT,
        "min_f1": NUM,
        "unedited": _CELL,
        "unspliced": _CELL,
    },
    "failed": {"answer": INT, "perturb": INT, "steer": INT, "errors": [dict]},
    "perturbation": _SECTION,
    "steering": _SECTION,
    "stats": {
        "n": INT,
        "n_context_pairs": INT,
        "active_last_mean": NUM,
        "active_any_mean": NUM,
        "k50_mean": NUM,
        "cross_top_overlap": NUM,
        "cross_bottom_overlap": NUM,
        "inner": MapOf(MapOf(NUM)),
    },
    "rq": MapOf({"text": str, "verdict": str, "holds": bool}),
    "timing": MapOf((NUM, str)),
    "warnings": [str],
    "runs": [{"tag": (str, INT), "summary": dict}],
}


def check_summary(summary: Any, source: str = "summary") -> dict:
    """A summary.json this version can show, or a one-line error naming its version."""
    if not isinstance(summary, dict):
        raise GradsaeError(f"{source} is not a JSON object: it was not written by gradsae; rerun the experiment")
    schema = summary.get("schema")
    if schema is not None and schema not in SUMMARY_SCHEMAS:
        raise GradsaeError(
            f"{source} has schema {schema!r}; this gradsae reads {' and '.join(SUMMARY_SCHEMAS)}: "
            "rebuild the report with the gradsae version that wrote the folder"
        )
    check(summary, SUMMARY_SCHEMA, source)
    return summary


# ---------------------------------------------------------------------------------------------
# Typed records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One Table 1 cell: EM and F1 (percent) with their 95% intervals, over n examples (None: not measured)."""

    em: float | None = None
    f1: float | None = None
    em_ci: tuple[float, float] | None = None
    f1_ci: tuple[float, float] | None = None
    n: int | None = None
    k_mean: float | None = None
    """Mean number of latents edited."""
    overlap: float | None = None
    """Steering: overlap (%) of the example's set with its partner's."""
    own_f1: float | None = None
    """Steering: F1 against the example's own answers."""

    @classmethod
    def from_json(cls, c: Any) -> "Cell":
        if not isinstance(c, dict):
            return cls()

        def ci(key):
            v = c.get(key)
            return (v[0], v[1]) if isinstance(v, (list, tuple)) and len(v) >= 2 and None not in v[:2] else None

        return cls(
            em=c.get("em"),
            f1=c.get("f1"),
            em_ci=ci("em_ci"),
            f1_ci=ci("f1_ci"),
            n=c.get("n"),
            k_mean=c.get("k_mean"),
            overlap=c.get("overlap"),
            own_f1=c.get("own_f1"),
        )

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)

    def ci(self, metric: str) -> tuple[float, float] | None:
        return getattr(self, f"{metric}_ci")


@dataclass(frozen=True)
class Table1Row:
    method: str
    side: str
    cells: dict[str, Cell]
    """K (as text) -> cell."""

    @property
    def n(self) -> int:
        return max((c.n or 0 for c in self.cells.values()), default=0)

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, self.method)

    @property
    def set_name(self) -> str:
        return SET_NAMES.get(self.side, self.side)


@dataclass(frozen=True)
class Table1Block:
    """Table 1's upper (perturbation) or lower (steering) half."""

    task: str
    ks: list[str]
    without: Cell
    """The unedited control (perturbation) or the unsteered answers (steering)."""
    rows: list[Table1Row]
    raw: dict = field(default_factory=dict)
    """The section's other fields (n, agree, inject, ...), as summary.json has them."""

    @property
    def name(self) -> str:
        return TASK_NAMES.get(self.task, self.task)

    def arrow(self, side: str) -> str:
        return ARROWS.get((self.task, side), "")

    def best(self, side: str, k: str, metric: str) -> float | None:
        """The best value of a column among the methods (lower or higher by task and set); None with < 2 values."""
        vals = [r.cells[k].value(metric) for r in self.rows if r.side == side and k in r.cells]
        vals = [v for v in vals if v is not None]
        if len(vals) < 2:
            return None
        return (min if LOWER_IS_BEST.get((self.task, side), False) else max)(vals)

    def is_best(self, row: Table1Row, k: str, metric: str) -> bool:
        c, b = row.cells.get(k), self.best(row.side, k, metric)
        return c is not None and c.value(metric) is not None and b is not None and abs(c.value(metric) - b) < 1e-9


@dataclass(frozen=True)
class Table3:
    """Latent statistics at K = 50%: rows of (label, Baseline, GradSAE) as shown."""

    n: int | None
    pairs: int | None
    rows: list[tuple[str, str, str]]


@dataclass(frozen=True)
class Verdict:
    name: str
    word: str
    text: str


@dataclass(frozen=True)
class Summary:
    """A summary.json, read once (``read_summary``)."""

    raw: dict
    table1: list[Table1Block]
    table3: Table3 | None
    verdicts: list[Verdict]

    @property
    def methods(self) -> list[str]:
        return self.raw.get("methods") or ["baseline", "gradsae"]

    @property
    def sets(self) -> list[str]:
        return self.raw.get("sets") or ["top", "bottom"]


def verdict_word(v: dict) -> str:
    """ "holds", "does not hold", "not enough evidence (n = N)" or "not measured" (older summaries have no
    ``verdict`` and only ``holds``)."""
    if v.get("verdict"):
        return v["verdict"]
    return {True: "holds", False: "does not hold", None: "not measured"}.get(v.get("holds"), "not measured")


def _pc(x) -> str:
    return "–" if x is None else f"{x:.2f}%"


def _num2(x) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def _table3(t: dict | None) -> Table3 | None:
    if not t:
        return None
    inner = t.get("inner") or {}
    ib, ig = inner.get("baseline") or {}, inner.get("gradsae") or {}
    rows = [
        ("Activation Avg. (active at the last prompt token)", _num2(t.get("active_last_mean")), ""),
        ("Active at any scored position", _num2(t.get("active_any_mean")), ""),
        ("50% Avg. (size of the K = 50% set)", _num2(t.get("k50_mean")), ""),
        ("Cross TopK overlap (Baseline ∩ GradSAE)", _pc(t.get("cross_top_overlap")), ""),
        ("Cross BottomK overlap", _pc(t.get("cross_bottom_overlap")), ""),
        ("Inner TopK overlap (same context, other question)", _pc(ib.get("top")), _pc(ig.get("top"))),
        ("Inner BottomK overlap", _pc(ib.get("bottom")), _pc(ig.get("bottom"))),
    ]
    return Table3(t.get("n"), t.get("n_context_pairs"), rows)


def read_summary(summary: Any, source: str = "summary") -> Summary:
    """summary.json (one run) as typed records; every section optional (a partial run shows what it has)."""
    s = check_summary(summary, source)
    methods = s.get("methods") or ["baseline", "gradsae"]
    sets = s.get("sets") or ["top", "bottom"]
    blocks = []
    for task in ("perturbation", "steering"):
        sec = s.get(task)
        if not sec:
            continue
        ks = [str(k) for k in (sec.get("ks") or s.get("ks") or [])]
        cells = sec.get("cells") or {}
        rows = [
            Table1Row(m, side, {k: Cell.from_json(((cells.get(m) or {}).get(side) or {}).get(k)) for k in ks})
            for m in methods
            for side in sets
        ]
        without = sec.get("control") if task == "perturbation" else sec.get("unsteered")
        raw = {k: v for k, v in sec.items() if k != "cells"}
        blocks.append(Table1Block(task, ks, Cell.from_json(without), rows, raw))
    verdicts = []
    for k, v in (s.get("rq") or {}).items():
        v = v if isinstance(v, dict) else {"text": str(v)}
        verdicts.append(Verdict(str(k).upper(), verdict_word(v), str(v.get("text", ""))))
    return Summary(s, blocks, _table3(s.get("stats")), verdicts)


# ---------------------------------------------------------------------------------------------
# table.md
# ---------------------------------------------------------------------------------------------


def _unspliced_lines(d: dict) -> list[str]:
    u = d.get("unspliced")
    if not u:
        return []
    return [
        f"Without the SAE the model answers {u['n_kept']} of {u['n']} correctly (F1 ≥ {d['min_f1']}); EM "
        f"{_fmt(u, 'em')}, F1 {_fmt(u, 'f1')}."
    ]


def _fmt(c: dict | Cell | None, key: str, ci: bool = True) -> str:
    if isinstance(c, Cell):
        v, lohi = c.value(key), c.ci(key)
    else:
        v, lohi = (c or {}).get(key), (c or {}).get(f"{key}_ci")
    if v is None:
        return "–"
    lo, hi = (lohi or [None, None])[:2]
    return f"{v:.1f}" + (f" ({lo:.0f}–{hi:.0f})" if ci and lo is not None and hi is not None else "")


def table_markdown(s: dict) -> str:
    """table.md: Table 1 (upper/lower) and Table 3 in the paper's layout, n and 95% CI per cell."""
    view = read_summary(s)
    d = s["data"]
    L = [
        f"# GradSAE on SQuAD — {s['model']}, SAE {s['sae']} ({s['layer']})",
        "",
        f"{d['n_kept']} of {d['n_answered']} answered questions kept (F1 ≥ {d['min_f1']} through the SAE splice; "
        f"{d['n_examples']} loaded). Unedited accuracy of the spliced model on all answered: EM "
        f"{_fmt(d['unedited'], 'em')}, F1 {_fmt(d['unedited'], 'f1')}.",
        f"Failed (recorded, not dropped): answer {s['failed']['answer']}, perturb {s['failed']['perturb']}, "
        f"steer {s['failed']['steer']}.",
        *_unspliced_lines(d),
        *[f"**Warning:** {w}." for w in s.get("warnings", [])],
        "",
        "Cells: mean (95% CI); EM Wilson interval, F1 Student-t interval; n = examples per cell.",
        "",
    ]
    titles = {
        "perturbation": lambda b: "Table 1 (upper): perturbation — zero the set at every position",
        "steering": lambda b: (
            f"Table 1 (lower): local steering — scored against the partner's answers (inject {b.raw['inject']}, "
            f"at {b.raw['at']}, clamp {b.raw['clamp'] or 'none'})"
        ),
    }
    for b in view.table1:
        L += [f"## {titles[b.task](b)}", ""]
        L.append("| Method | Set | n | w/o EM | w/o F1 | " + " | ".join(f"K={k} EM | K={k} F1" for k in b.ks) + " |")
        L.append("|" + "---|" * (5 + 2 * len(b.ks)))
        for r in b.rows:
            L.append(
                f"| {r.method_name} | {r.set_name} {b.arrow(r.side)} | {r.n} | "
                f"{_fmt(b.without, 'em', False)} | {_fmt(b.without, 'f1', False)} | "
                + " | ".join(f"{_fmt(r.cells[k], 'em')} | {_fmt(r.cells[k], 'f1')}" for k in b.ks)
                + " |"
            )
        L.append("")
        if b.task == "perturbation":
            L += [
                f"Control row (unedited, same batch): {b.raw['control']['agree']}/{b.raw['n']} predictions identical "
                "to the filtering run.",
                "",
            ]
            continue
        L += [
            f"{b.raw['n']} examples had a kept partner on the same context; {b.raw['n_without_partner']} had none.",
            "",
            "Overlap of the example's set with its partner's (%) and F1 against the example's own answers:",
            "",
            "| Method | Set | " + " | ".join(f"K={k} overlap | K={k} own F1" for k in b.ks) + " |",
            "|" + "---|" * (2 + 2 * len(b.ks)),
        ]
        for r in b.rows:
            L.append(
                f"| {r.method_name} | {r.set_name} | "
                + " | ".join(
                    f"{_num1(r.cells[k].overlap)} | {_num1(r.cells[k].own_f1)}" if r.cells[k].n else "– | –"
                    for k in b.ks
                )
                + " |"
            )
        L.append("")
    if view.table3 is not None:
        t3 = view.table3
        L += [
            f"## Table 3: latent statistics (K = 50%, n = {t3.n} kept examples, {t3.pairs} same-context pairs)",
            "",
            "| | Baseline | GradSAE |",
            "|---|---|---|",
            *[f"| {label} | {b} | {g} |" for label, b, g in t3.rows],
            "",
        ]
    L.append("## Research questions")
    L.append("")
    for v in view.verdicts:
        L.append(f"- **{v.name}** {v.word}: {v.text}")
    L.append("")
    return "\n".join(L)


def _num1(x) -> str:
    return "nan" if x is None else f"{x:.1f}"


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
                L.append(
                    f"| {m} | {side} | " + " | ".join(f"{_fmt(c[k], 'em')} | {_fmt(c[k], 'f1')}" for k in ks) + " |"
                )
        L.append("")
        if "steering" in s:
            st = s["steering"]
            L.append(
                f"Steering (n={st['n']}) GradSAE TopK F1: "
                + ", ".join(
                    f"K={k} {_fmt(st['cells']['gradsae']['top'][k], 'f1', False)}"
                    for k in st["ks"]
                    if "gradsae" in st["cells"] and "top" in st["cells"]["gradsae"]
                )
            )
            L.append("")
    return "\n".join(L)
