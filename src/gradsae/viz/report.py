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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import opt
from ..errors import GradsaeError
from ..io import atomic_write_text, output_lock, read_json
from ..squad.config import read_results_config
from ..squad.tables import METHOD_NAMES, Cell, check_summary, read_summary
from .html import asset, csp, environment, flatten, html_id, num, png_data_uri, safe, script_json
from .report_example import render_example

json_for_script = script_json  # the one escaper (html.py), under the name this module's callers use


def _macros():
    return environment().get_template("report.html.j2").module


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
        ("K values", ", ".join(map(str, s.get("ks") or []))),
        ("methods", ", ".join(METHOD_NAMES.get(m, m) for m in s.get("methods") or [])),
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
    return str(_macros().header(rows, q, after, list(s.get("warnings") or []), flatten(cfg) if cfg else []))


def _cell(c: Cell, metric: str, mark: str = "") -> dict:
    """{text, tip, mark} of one Table 1 number (text None: not measured)."""
    v = c.value(metric)
    if v is None:
        return {"text": None, "tip": "", "mark": ""}
    tip = f"{metric.upper()} {v:.2f}"
    if c.ci(metric) is not None:
        lo, hi = c.ci(metric)
        tip += f", 95% CI {lo:.1f}–{hi:.1f}"
    tip += f", n = {c.n if c.n is not None else '?'}"
    if c.k_mean is not None:
        tip += f", mean latents edited {c.k_mean:.1f}"
    if c.overlap is not None:
        tip += f", overlap with partner {c.overlap:.1f}%"
    if c.own_f1 is not None:
        tip += f", F1 vs own answers {c.own_f1:.1f}"
    return {"text": f"{v:.2f}", "tip": tip, "mark": mark}


def render_table1(summary: dict) -> str:
    """Table 1 in the paper's layout (the records of ``squad.tables``): Perturbation and Local Steering ×
    Baseline/GradSAE × TopK/BottomK, columns w/o Task and every K (EM, F1), with the number of examples per row;
    best per column marked (bold for perturbation, underlined for steering, as in the paper)."""
    view = read_summary(summary)
    ks: list[str] = []
    for b in view.table1:
        ks += [k for k in b.ks if k not in ks]
    tasks = []
    for b in view.table1:
        mark = "strong" if b.task == "perturbation" else "u"
        rows = []
        for r in b.rows:
            out = [
                _cell(r.cells.get(k, Cell()), metric, mark if k in r.cells and b.is_best(r, k, metric) else "")
                for k in ks
                for metric in ("em", "f1")
            ]
            rows.append(
                {
                    "method": r.method_name,
                    "method_rowspan": len(view.sets) if r.side == view.sets[0] else 0,
                    "set": r.set_name,
                    "arrow": b.arrow(r.side),
                    "n": r.n,
                    "cells": out,
                }
            )
        tasks.append({"label": b.name, "rows": rows, "wo": [_cell(b.without, "em"), _cell(b.without, "f1")]})
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
    t3 = read_summary(summary).table3
    if t3 is None:
        return ""
    return str(_macros().stats({"n": num(t3.n), "pairs": num(t3.pairs), "rows": t3.rows}))


def render_rq(summary: dict) -> str:
    items = []
    for v in read_summary(summary).verdicts:
        cls = "yes" if v.word == "holds" else "no" if v.word == "does not hold" else "na"
        items.append({"name": v.name, "word": v.word, "cls": cls, "text": v.text})
    return str(_macros().rq(items)) if items else ""


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
        return str(_macros().sae_eval(flatten(main), flatten(rest) if rest else []))
    return str(_macros().sae_eval(flatten(sae_eval), []))


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
# The page
# ---------------------------------------------------------------------------------------------


def render_page(title: str, body: str, subtitle: str = "", nav: Sequence[tuple[str, str]] = ()) -> str:
    """The page shell: inline CSS and JS, a content-security policy that forbids any network request."""
    js = asset("report.js")
    # the policy is our own text (quotes kept as quotes; it holds no " or <)
    return str(
        _macros().page(title, safe(body), subtitle, list(nav), safe(csp(js)), safe(asset("report.css")), safe(js))
    )


def _one_run(summary: dict, pngs: dict[str, bytes] | None) -> str:
    return render_table1(summary) + render_plots(summary, pngs) + render_stats(summary) + render_rq(summary)


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
    config = read_results_config(folder / "config.json", to_show=True) if (folder / "config.json").exists() else None
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
