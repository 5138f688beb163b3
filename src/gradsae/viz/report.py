"""The HTML report: one self-contained file (inline CSS and JS, plots as base64 PNG, no network assets).

    render_report(summary, examples, config=..., sae_eval=..., answers=...) -> str     the whole page
    write_report(path, ...)                                                            atomic write
    render_example(example) -> str                                                     one example's section
    render_page(title, body) -> str                                                    the page shell
    report_from_folder(folder, examples=..., sae_eval=...)                             from a results folder

The markup lives in ``templates/report.html.j2`` (Jinja2, autoescape on), the style and script in
``templates/report.css`` / ``report.js`` (package data). This module only turns the inputs into the plain
values the templates show. Every string that comes from data is escaped by Jinja2; the per-example data
for the script is embedded as JSON with ``<``, ``>`` and ``&`` escaped, the script only ever writes
``textContent``/``title``, and the page's Content-Security-Policy allows exactly its own script (by hash).

Inputs (plain dicts, so the report can be rebuilt from files):

- ``summary``: the experiments' ``summary.json`` (schema ``gradsae.experiments.summary/1`` or the sweep
  schema ``gradsae.experiments.sweep/1``; see docs/experiments.md). Every section is optional.
- ``examples``: per-example views, each ``Influence.to_json(top, promoted)`` plus optional keys
  ``question``, ``golds`` (gold answers), ``perturb`` (a perturb record: ``control`` and
  ``cells["<method>/<set>/<K>"] = {prediction, em, f1, k}``), ``steer`` (a steer record, optionally with
  ``partner_question`` and ``partner_golds``). See docs/report.md.
- ``config``: the run's config.json (shown in the header); ``sae_eval``: any JSON-like dict of SAE metrics;
  ``answers``: the examples.jsonl ``answer`` records as JSON objects (the "all questions" table).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import opt
from ..errors import GradsaeError
from .html import asset, csp, environment, script_json, token_text
from ..io import atomic_write_text, output_lock, read_json

METHOD_NAMES = {"baseline": "Baseline", "gradsae": "GradSAE"}
SET_NAMES = {"top": "TopK", "bottom": "BottomK"}
# For each task and set: is a lower score the "better" (more influential / weaker) result?
_LOWER_IS_BEST = {
    ("perturbation", "top"): True,
    ("perturbation", "bottom"): False,
    ("steering", "top"): False,
    ("steering", "bottom"): True,
}
_ARROWS = {
    ("perturbation", "top"): "↓",
    ("perturbation", "bottom"): "↑",
    ("steering", "top"): "↑",
    ("steering", "bottom"): "↓",
}
SUMMARY_SCHEMAS = ("gradsae.experiments.summary/1", "gradsae.experiments.sweep/1")


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------


def _macros():
    return environment().get_template("report.html.j2").module


def _safe(s: str):
    from markupsafe import Markup

    return Markup(s)


# ---------------------------------------------------------------------------------------------
# Small helpers (values as the page shows them)
# ---------------------------------------------------------------------------------------------


json_for_script = script_json  # the one escaper (html.py), under the name this module's callers use


def html_id(prefix: str, s: Any) -> str:
    """A valid, unique-enough element id from arbitrary text."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "_", str(s))[:80]


def num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def sig(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    try:
        return f"{float(x):.{digits}g}"
    except (TypeError, ValueError):
        return str(x)


def token_label(t: str) -> str:
    """How a token is named in tooltips and tables: its repr (quotes, visible escapes)."""
    return repr(t)


def colour(v: float, vmax: float) -> str:
    """Background for a per-token value: red for positive influence, blue for negative, alpha by |v|/vmax."""
    if not vmax or not v:
        return "transparent"
    a = min(1.0, abs(v) / vmax) * 0.85
    return f"rgba(220,50,32,{a:.3f})" if v > 0 else f"rgba(30,100,220,{a:.3f})"


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v):
            for i, x in enumerate(v[:12]):
                out += _flatten(x, f"{key}[{i}].") if isinstance(x, dict) else [(f"{key}[{i}]", x)]
        elif isinstance(v, (list, tuple)) and len(v) > 12:
            out.append((key, f"[{', '.join(map(str, v[:12]))}, … ({len(v)} items)]"))
        else:
            out.append((key, v if not isinstance(v, float) else f"{v:.4g}"))
    return out


# ---------------------------------------------------------------------------------------------
# Summary sections
# ---------------------------------------------------------------------------------------------


def render_header(summary: dict, config: dict | None) -> str:
    """Model, SAE, layer, data and settings (and the unspliced model's score); the full config folded below."""
    s, d = summary, summary.get("data") or {}
    rows = [
        ("model", s.get("model")),
        ("SAE", s.get("sae")),
        ("layer", s.get("layer")),
        ("SAE width (d_sae)", s.get("d_sae")),
        ("K values", ", ".join(map(str, s.get("ks", [])))),
        ("methods", ", ".join(METHOD_NAMES.get(m, m) for m in s.get("methods", []))),
        ("data", d.get("path")),
    ]
    cfg = config or {}
    for key in ("template", "target", "aggregation", "positions", "error", "inject", "at", "min_f1", "seed"):
        if key in cfg:
            rows.append((key, cfg[key]))
    q = None
    if d:
        un, plain = d.get("unedited") or {}, d.get("unspliced")
        q = {
            "n_examples": num(d.get("n_examples")),
            "n_answered": num(d.get("n_answered")),
            "n_kept": num(d.get("n_kept")),
            "min_f1": num(d.get("min_f1"), 2),
            "em": num(un.get("em")),
            "f1": num(un.get("f1")),
            "plain": {
                "n_kept": num(plain.get("n_kept")),
                "n": num(plain.get("n")),
                "em": num(plain.get("em")),
                "f1": num(plain.get("f1")),
            }
            if plain
            else None,
        }
    rows = [(k, v) for k, v in rows if v not in (None, "")]
    t = s.get("timing") or {}
    after = (
        [("time (s)", ", ".join(f"{k} {v:.0f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in t.items()))]
        if t
        else []
    )
    return str(_macros().header(rows, q, after, list(s.get("warnings") or []), _flatten(cfg) if cfg else []))


def _cell(c: dict | None, metric: str) -> dict:
    """{text, tip, value} of one Table 1 number (text None: not measured)."""
    if not c or c.get(metric) is None:
        return {"text": None, "tip": "", "value": None, "mark": ""}
    lo, hi = (c.get(f"{metric}_ci") or [None, None])[:2]
    tip = f"{metric.upper()} {c[metric]:.2f}"
    if lo is not None and hi is not None:
        tip += f", 95% CI {lo:.1f}–{hi:.1f}"
    tip += f", n = {c.get('n', '?')}"
    if c.get("k_mean") is not None:
        tip += f", mean latents edited {c['k_mean']:.1f}"
    if c.get("overlap") is not None:
        tip += f", overlap with partner {c['overlap']:.1f}%"
    if c.get("own_f1") is not None:
        tip += f", F1 vs own answers {c['own_f1']:.1f}"
    return {"text": f"{c[metric]:.2f}", "tip": tip, "value": float(c[metric]), "mark": ""}


def render_table1(summary: dict) -> str:
    """Table 1 in the paper's layout: Perturbation and Local Steering × Baseline/GradSAE × TopK/BottomK,
    columns w/o Task and every K (EM, F1), with the number of examples per row; best per column marked
    (bold for perturbation, underlined for steering, as in the paper)."""
    present = [(t, summary[t]) for t in ("perturbation", "steering") if summary.get(t)]
    ks: list[str] = []
    for _, sec in present:
        for k in sec.get("ks") or summary.get("ks") or []:
            if str(k) not in ks:
                ks.append(str(k))
    methods = summary.get("methods") or ["baseline", "gradsae"]
    sets = summary.get("sets") or ["top", "bottom"]
    tasks = []
    for task, sec in present:
        wo = sec.get("control") if task == "perturbation" else sec.get("unsteered")
        cells = sec.get("cells") or {}
        best: dict[tuple[str, str, str], float] = {}
        for side in sets:
            for k in ks:
                for metric in ("em", "f1"):
                    vals = [cells.get(m, {}).get(side, {}).get(k, {}).get(metric) for m in methods]
                    vals = [v for v in vals if v is not None]
                    if len(vals) >= 2:
                        best[(side, k, metric)] = (min if _LOWER_IS_BEST[(task, side)] else max)(vals)
        rows = []
        for m in methods:
            for si, side in enumerate(sets):
                row_cells = cells.get(m, {}).get(side, {})
                out = []
                for k in ks:
                    for metric in ("em", "f1"):
                        c = _cell(row_cells.get(k), metric)
                        b = best.get((side, k, metric))
                        if c["value"] is not None and b is not None and abs(c["value"] - b) < 1e-9:
                            c["mark"] = "strong" if task == "perturbation" else "u"
                        out.append(c)
                rows.append(
                    {
                        "method": METHOD_NAMES.get(m, m),
                        "method_rowspan": len(sets) if si == 0 else 0,
                        "set": SET_NAMES.get(side, side),
                        "arrow": _ARROWS.get((task, side), ""),
                        "n": max([c.get("n", 0) for c in row_cells.values() if isinstance(c, dict)] or [0]),
                        "cells": out,
                    }
                )
        tasks.append(
            {
                "label": "Perturbation" if task == "perturbation" else "Local Steering",
                "rows": rows,
                "wo": [_cell(wo, "em"), _cell(wo, "f1")],
            }
        )
    notes = []
    if summary.get("perturbation"):
        p = summary["perturbation"]
        ctrl = p.get("control") or {}
        notes.append(
            f"Perturbation: {num(p.get('n'))} examples; the unedited control row in the same batch "
            f"reproduced {num(ctrl.get('agree'))} of them."
        )
    if summary.get("steering"):
        st = summary["steering"]
        notes.append(
            f"Local steering: {num(st.get('n'))} examples with a kept partner question on the same "
            f"context ({num(st.get('n_without_partner'))} without); inject {st.get('inject')} at "
            f"{st.get('at')}, clamp {st.get('clamp') or 'none'}; scored against the partner's answers."
        )
    failed = summary.get("failed") or {}
    if failed:
        counts = ", ".join(f"{k} {num(v)}" for k, v in failed.items() if k != "errors")
        notes.append(f"Failed examples (recorded, never dropped): {counts}.")
    errors = [e for e in (failed.get("errors") or [])[:50] if isinstance(e, dict)]
    return str(_macros().table1({"tasks": tasks, "ks": ks, "notes": notes, "errors": errors}))


def render_stats(summary: dict) -> str:
    t = summary.get("stats")
    if not t:
        return ""

    def pc(x):
        return "–" if x is None else f"{x:.2f}%"

    inner = t.get("inner") or {}
    ib, ig = inner.get("baseline") or {}, inner.get("gradsae") or {}
    rows = [
        ("Activation Avg. (active at the last prompt token)", num(t.get("active_last_mean"), 2), ""),
        ("Active at any scored position", num(t.get("active_any_mean"), 2), ""),
        ("50% Avg. (size of the K = 50% set)", num(t.get("k50_mean"), 2), ""),
        ("Cross TopK overlap (Baseline ∩ GradSAE)", pc(t.get("cross_top_overlap")), ""),
        ("Cross BottomK overlap", pc(t.get("cross_bottom_overlap")), ""),
        ("Inner TopK overlap (same context, other question)", pc(ib.get("top")), pc(ig.get("top"))),
        ("Inner BottomK overlap", pc(ib.get("bottom")), pc(ig.get("bottom"))),
    ]
    return str(_macros().stats({"n": num(t.get("n")), "pairs": num(t.get("n_context_pairs")), "rows": rows}))


def render_rq(summary: dict) -> str:
    from ..squad.tables import verdict_word

    rq = summary.get("rq")
    if not rq:
        return ""
    items = []
    for k, v in rq.items():
        v = v if isinstance(v, dict) else {"text": str(v)}
        word = verdict_word(v)
        cls = "yes" if word == "holds" else "no" if word == "does not hold" else "na"
        items.append({"name": str(k).upper(), "word": word, "cls": cls, "text": v.get("text", "")})
    return str(_macros().rq(items))


_PLOT_CAPTIONS = {
    "perturb": "Perturbation: EM and F1 after zeroing each set, vs K (95% CI bars)",
    "steer": "Local steering: EM and F1 against the partner's answers, vs K (95% CI bars)",
}


def render_plots(summary: dict, pngs: dict[str, bytes] | None = None) -> str:
    if not (summary.get("perturbation") or summary.get("steering")):
        return ""
    err = ""
    if pngs is None:
        try:
            from .plots import k_curves

            pngs = k_curves(summary)
        except Exception as e:  # a plot is a convenience; the numbers are in Table 1
            pngs, err = {}, f"{type(e).__name__}: {e}"
    figs = [
        {"name": name, "uri": png_data_uri(png), "caption": _PLOT_CAPTIONS.get(name, name)}
        for name, png in pngs.items()
    ]
    return str(_macros().plots(figs, err))


def render_sae_eval(sae_eval: dict | None) -> str:
    if not sae_eval:
        return ""
    main = sae_eval.get("eval_result_metrics")  # the SAEBench layout `gradsae eval` writes
    if isinstance(main, dict):
        rest = {k: v for k, v in sae_eval.items() if k != "eval_result_metrics"}
        return str(_macros().sae_eval(_flatten(main), _flatten(rest) if rest else []))
    return str(_macros().sae_eval(_flatten(sae_eval), []))


def render_answers(answers: Sequence[dict]) -> str:
    """Every question of the run: gold, prediction, F1 and whether the correct-sample filter kept it."""
    rows = []
    for r in answers:
        if r.get("task", "answer") != "answer":
            continue
        f1 = r.get("f1")
        rows.append(
            {
                "id": r.get("id"),
                "question": r.get("question"),
                "golds": " | ".join(r.get("golds") or []),
                "prediction": r.get("error") or r.get("prediction"),
                "f1": "–" if f1 is None else f"{100 * f1:.0f}",
                "kept": bool(r.get("kept")),
            }
        )
    if not rows:
        return ""
    return str(_macros().answers(rows, sum(1 for r in rows if r["kept"])))


# ---------------------------------------------------------------------------------------------
# One example
# ---------------------------------------------------------------------------------------------


def _latent_rows(rows: Sequence[dict]) -> list[dict]:
    return [
        {
            "latent": r.get("latent"),
            "score": sig(r.get("score")),
            "act": sig(r.get("mean_activation")),
            "rank": r.get("baseline_rank"),
            "promotes": [token_label(t) for t in r.get("promotes", [])],
        }
        for r in rows
    ]


def _k_order(keys: Iterable[str]) -> list[str]:
    def key(k: str):
        return (1, float(k[:-1])) if k.endswith("%") else (0, float(k)) if re.fullmatch(r"[\d.]+", k) else (2, 0)

    return sorted(dict.fromkeys(keys), key=key)


def _edit_table(cells: dict, golds_label: str) -> dict | None:
    """Predictions per (method, set) × K from ``cells["method/set/K"] = {prediction, f1, k}``."""
    parsed = {}
    for key, c in cells.items():
        parts = str(key).split("/")
        if len(parts) != 3 or not isinstance(c, dict):
            continue
        parsed[tuple(parts)] = c
    if not parsed:
        return None
    ks = _k_order(k for _, _, k in parsed)
    rows = []
    for m, s in dict.fromkeys((m, s) for m, s, _ in parsed):
        out = []
        for k in ks:
            c = parsed.get((m, s, k))
            if c is None:
                out.append(None)
                continue
            f1 = c.get("f1")
            tip = f"F1 {golds_label} {f1:.2f}" if f1 is not None else ""
            if c.get("k") is not None:
                tip += f"; {c['k']} latents edited"
            if c.get("own_f1") is not None:
                tip += f"; F1 vs own answers {c['own_f1']:.2f}"
            out.append(
                {
                    "cls": "ok" if f1 is not None and f1 >= 0.9 else "bad" if f1 is not None else "",
                    "tip": tip,
                    "text": c.get("error") or c.get("prediction"),
                }
            )
        rows.append({"method": METHOD_NAMES.get(m, m), "set": SET_NAMES.get(s, s), "cells": out})
    return {"ks": ks, "rows": rows}


def _token_view(ex: dict, uid: str) -> dict:
    tokens = [str(t) for t in (ex.get("tokens") or [])]
    n_prompt = int(ex.get("n_prompt") or 0)
    pt = ex.get("per_token") or None
    latents = list(pt["latents"]) if pt else []
    values = [list(v) for v in pt["values"]] if pt else []
    v0 = values[0] if values else [0.0] * len(tokens)
    vmax = max((abs(v) for v in v0), default=0.0)
    spans = []
    for j, t in enumerate(tokens):
        v = v0[j] if j < len(v0) else 0.0
        spans.append(
            {
                "cls": "t ans" if j >= n_prompt else "t",
                "bg": colour(v, vmax),
                "text": token_text(t, keep_breaks=True),
                "tip": token_label(t) + (f"  latent {latents[0]}: g = {v:.3g}" if latents else ""),
            }
        )
    data = {"latents": latents, "values": values, "labels": [token_label(t) for t in tokens]}
    return {"uid": uid, "tokens": spans, "buttons": latents, "data": _safe(json_for_script(data))}


def render_example(ex: dict) -> str:
    """One example's section: prompt and answer tokens coloured by the influence of a chosen top latent
    (buttons switch the latent; values on hover), top/bottom latents tables, and the answers before and
    after masking and after steering when those records are attached. ``ex`` is ``Influence.to_json``
    plus optional ``question``, ``golds``, ``perturb``, ``steer`` (see the module docstring)."""
    uid = html_id("ex-", ex.get("id", ""))
    q = ex.get("question")
    title = str(ex["title"]) if ex.get("title") else f"Example {ex.get('id', '')}" + (f": {q}" if q else "")
    meta = ex.get("meta") or {}
    facts = [("output (explained)", ex.get("output"))]
    if ex.get("golds"):
        facts.append(("gold answers", " | ".join(ex["golds"])))
    facts += [
        ("target", f"{meta.get('target', '?')} = {sig(ex.get('target_value'), 4)}"),
        ("latents active at the last prompt token", ex.get("n_active_last")),
        ("latents active at any scored position", ex.get("n_active_any")),
        (
            "settings",
            ", ".join(
                f"{k}={meta[k]}"
                for k in ("method", "aggregation", "positions", "error", "layer")
                if meta.get(k) is not None
            ),
        ),
    ]
    view = {
        "uid": uid,
        "title": title,
        "facts": facts,
        "tokens": _token_view(ex, uid),
        "top": _latent_rows(ex.get("top") or []),
        "bottom": _latent_rows(ex.get("bottom") or []),
        "base": _latent_rows(ex.get("baseline_top") or []),
        "perturb": None,
        "steer": None,
    }
    pert = ex.get("perturb")
    if pert:
        ctrl = pert.get("control") or {}
        view["perturb"] = {
            "unedited": ctrl.get("prediction", ex.get("output")),
            "error": pert.get("error"),
            "table": _edit_table(pert.get("cells") or {}, "vs gold" if ex.get("golds") else "vs explained output"),
        }
    st = ex.get("steer")
    if st:
        pg, un = st.get("partner_golds"), st.get("unsteered") or {}
        facts = [
            ("partner", st.get("partner")),
            ("partner question", st.get("partner_question")),
            ("partner answers", " | ".join(pg) if pg else None),
            ("unsteered F1 vs partner", sig(un.get("f1")) if un else None),
        ]
        view["steer"] = {
            "facts": facts,
            "error": st.get("error"),
            "table": _edit_table(st.get("cells") or {}, "vs partner's answers"),
        }
    return str(_macros().example(view))


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def render_page(title: str, body: str, subtitle: str = "", nav: Sequence[tuple[str, str]] = ()) -> str:
    """The page shell: inline CSS and JS, a content-security policy that forbids any network request."""
    js = asset("report.js")
    # the policy is our own text (quotes kept as quotes; it holds no " or <)
    return str(
        _macros().page(title, _safe(body), subtitle, list(nav), _safe(csp(js)), _safe(asset("report.css")), _safe(js))
    )


def _one_run(summary: dict, pngs: dict[str, bytes] | None) -> str:
    return render_table1(summary) + render_plots(summary, pngs) + render_stats(summary) + render_rq(summary)


def check_summary(summary: dict, source: str = "summary") -> dict:
    """A summary.json this version can show, or a one-line error naming its version."""
    if not isinstance(summary, dict):
        raise GradsaeError(f"{source} is not a JSON object: it was not written by gradsae; rerun the experiment")
    schema = summary.get("schema")
    if schema is not None and schema not in SUMMARY_SCHEMAS:
        raise GradsaeError(
            f"{source} has schema {schema!r}; this gradsae reads {' and '.join(SUMMARY_SCHEMAS)}: "
            "rebuild the report with the gradsae version that wrote the folder"
        )
    for key, typ in (
        ("data", dict),
        ("perturbation", dict),
        ("steering", dict),
        ("stats", dict),
        ("rq", dict),
        ("failed", dict),
        ("timing", dict),
        ("runs", list),
        ("ks", list),
        ("warnings", list),
    ):
        if summary.get(key) is not None and not isinstance(summary[key], typ):
            raise GradsaeError(
                f'{source}: "{key}" is a {type(summary[key]).__name__}, not a '
                f"{typ.__name__}: the file is damaged; rerun the command to rewrite it"
            )
    return summary


def render_report(
    summary: dict | None,
    examples: Sequence[dict] = (),
    *,
    config: dict | None = None,
    sae_eval: dict | None = None,
    answers: Sequence[dict] = (),
    title: str = "GradSAE report",
    plots: dict[str, bytes] | None = None,
    cards: str = "",
) -> str:
    """The whole report as one HTML string (see the module docstring for the inputs).

    ``plots``: PNG bytes by name to embed instead of drawing them from the summary. ``cards``: an HTML
    fragment of dashboard cards (``viz.dashboard_page.render_cards``) shown as its own section.
    """
    summary = check_summary(summary or {})
    parts = []
    nav = [("config", "Setup")]
    if str(summary.get("schema", "")).startswith("gradsae.experiments.sweep"):
        runs = summary.get("runs") or []
        first = runs[0]["summary"] if runs else {}
        parts.append(render_header(first, config))
        for r in runs:
            s = r.get("summary") or {}
            rid = html_id("run-", r.get("tag") or s.get("layer"))
            parts.append(
                f'<section id="{rid}"><h2>Run {_text(r.get("tag"))}: SAE {_text(s.get("sae"))} '
                f"({_text(s.get('layer'))})</h2>{_one_run(s, None)}</section>"
            )
            nav.append((rid, f"Run {r.get('tag')}"))
    else:
        parts.append(render_header(summary, config))
        parts.append(_one_run(summary, plots))
        nav += [("table1", "Table 1")]
        if summary.get("perturbation") or summary.get("steering"):
            nav.append(("plots", "Plots"))
        if summary.get("stats"):
            nav.append(("stats", "Statistics"))
    if sae_eval:
        parts.append(render_sae_eval(sae_eval))
        nav.append(("sae-eval", "SAE eval"))
    ex_html = "".join(render_example(e) for e in examples)
    parts.append(
        '<section id="examples"><h2>Examples</h2>'
        + (
            f'<p class="note">{len(examples)} examples. Bold underlined tokens are the answer. '
            f"Hover a token for its value.</p>{ex_html}"
            if examples
            else '<p class="note">no per-example influence in this report</p>'
        )
        + "</section>"
    )
    nav.append(("examples", "Examples"))
    if answers:
        parts.append(render_answers(answers))
        nav.append(("questions", "All questions"))
    if cards:
        parts.append(
            '<section id="cards"><p class="note">From the SAE\'s dashboard: where each latent fires '
            "(input side) and where it moves the next-token loss most (output side).</p>" + cards + "</section>"
        )
        nav.append(("cards", "Latent cards"))
    sub = " · ".join(str(x) for x in (summary.get("model"), summary.get("sae"), summary.get("layer")) if x)
    return render_page(title, "".join(parts), sub, nav)


def _text(x: Any) -> str:
    """Escape a value for the few fragments joined here outside the templates."""
    from markupsafe import escape

    return str(escape("" if x is None else str(x)))


def write_report(path: str | Path, summary: dict | None, examples: Sequence[dict] = (), **kw) -> Path:
    """``render_report`` written atomically to ``path`` (readable by others, as a normal new file)."""
    return atomic_write_text(path, render_report(summary, examples, **kw))


def render_example_page(ex: dict, title: str = "GradSAE explain") -> str:
    """One example as a whole page (``gradsae explain --html``)."""
    meta = ex.get("meta") or {}
    sub = " · ".join(str(x) for x in (meta.get("model"), meta.get("sae"), meta.get("layer")) if x)
    return render_page(title, f'<section id="examples">{render_example(ex)}</section>', sub)


# ---------------------------------------------------------------------------------------------
# From a results folder
# ---------------------------------------------------------------------------------------------


def attach_records(ex: dict, records: dict) -> dict:
    """Add question, golds, the perturb record and the steer record (with its partner's question and
    answers) of ``ex["id"]`` from a results folder's records (``squad.records.read_records``)."""
    out = dict(ex)
    qid = str(ex.get("id"))
    ans = records.get(("answer", qid))
    if ans is not None and ans.ok:
        out.setdefault("question", ans.question)
        out.setdefault("golds", ans.golds)
    if ("perturb", qid) in records:
        out.setdefault("perturb", records[("perturb", qid)].to_json())
    if ("steer", qid) in records:
        st = records[("steer", qid)].to_json()
        partner = records.get(("answer", str(st.get("partner"))))
        if partner is not None and partner.ok:
            st.setdefault("partner_question", partner.question)
            st.setdefault("partner_golds", partner.golds)
        out.setdefault("steer", st)
    return out


def report_from_folder(
    folder: str | Path,
    examples: Sequence[dict] = (),
    *,
    sae_eval: dict | None = None,
    out: str | Path | None = None,
    title: str = "GradSAE report",
    plots: dict[str, bytes] | None = None,
) -> Path:
    """Build ``<folder>/report.html`` from summary.json, config.json and examples.jsonl (plus per-example
    influence views, which the folder does not store)."""
    from ..squad.records import read_records

    folder = Path(folder)
    summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else {}
    if not summary and (folder / "sweep.json").exists():
        summary = read_json(folder / "sweep.json")
    check_summary(summary, str(folder / ("summary.json" if (folder / "summary.json").exists() else "sweep.json")))
    config = read_json(folder / "config.json") if (folder / "config.json").exists() else None
    if config is not None and not isinstance(config, dict):
        raise GradsaeError(f"{folder / 'config.json'} is not a JSON object: the file is damaged")
    recs = read_records(folder)
    answers = [r.to_json() for (task, _), r in recs.items() if task == "answer"]
    exs = [attach_records(e, recs) for e in examples]
    try:
        cards = dashboard_cards(config, exs, [r for (task, _), r in recs.items() if task == "answer"])
        return write_report(
            out or folder / "report.html",
            summary,
            exs,
            config=config,
            sae_eval=sae_eval,
            answers=answers,
            title=title,
            plots=plots,
            cards=cards,
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        # a summary.json / config.json of another shape than a gradsae run writes (edited, or from elsewhere)
        raise GradsaeError(
            f"{folder} holds a summary.json or config.json gradsae cannot read ({type(e).__name__}: "
            f"{str(e)[:80]}): rerun the command that made the folder to rewrite them"
        ) from None


def dashboard_cards(config: dict | None, examples: Sequence[dict], answers: Sequence, n_latents: int = 24) -> str:
    """Cards for the latents a report names, when a dashboard of the run's SAE is found next to it: the latents
    of the example tables first, then those most often among the kept questions' GradSAE top 10."""
    from collections import Counter

    from ..dashboard import find_dashboard, load_dashboard
    from .dashboard_page import render_cards

    config = config or {}
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    spec = config.get("sae") or inner.get("sae")  # config.json nests the command's config under "config"
    found = find_dashboard(spec) if isinstance(spec, str) and spec else None
    if not found:
        return ""
    order: list[int] = []
    for e in examples:
        for key in ("top", "bottom"):
            order += [int(r["latent"]) for r in (e.get(key) or [])[:10] if r.get("latent") is not None]
    counts = Counter()
    for a in answers:
        if getattr(a, "kept", False) and getattr(a, "sets", None) is not None:
            top = a.sets.rankings.get("gradsae", {}).get("top", [])[:10]
            counts.update(r.latent for r in top)
    order += [c for c, _ in counts.most_common()]
    latents = list(dict.fromkeys(order))[:n_latents]
    return render_cards(load_dashboard(found), latents) if latents else ""


# ---------------------------------------------------------------------------------------------
# `gradsae report`
# ---------------------------------------------------------------------------------------------


@dataclass
class ReportConfig:
    """Rebuild the self-contained HTML report of a results folder (perturb / steer / stats / experiment,
    or a sweep) from its summary.json, config.json and examples.jsonl; no model is loaded."""

    folder: str = opt(help="results folder", positional=True)
    out: str = opt("", "HTML file to write (default: <folder>/report.html)")
    title: str = opt("GradSAE report", "page title")


def run(cfg: ReportConfig) -> Path:
    folder = Path(cfg.folder)
    if not folder.is_dir():
        raise GradsaeError(f"no results folder at {folder}: give the --out folder of a gradsae experiment run")
    if not any((folder / f).exists() for f in ("summary.json", "sweep.json")):
        raise GradsaeError(f"{folder} has no summary.json or sweep.json: run (or resume) the experiment first")
    if cfg.out and (not cfg.out.strip() or Path(cfg.out).is_dir()):
        raise GradsaeError(f"--out {cfg.out!r} is not a file name: give e.g. --out report.html")
    with output_lock(folder):
        path = report_from_folder(folder, out=cfg.out or None, title=cfg.title)
    print(f"wrote {path}")
    return path
