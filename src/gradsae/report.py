"""The HTML report: one self-contained file (inline CSS and JS, plots as base64 PNG, no network assets).

    render_report(summary, examples, config=..., sae_eval=..., answers=...) -> str     the whole page
    write_report(path, ...)                                                            atomic write
    render_example(example) -> str                                                     one example's section
    render_page(title, body) -> str                                                    the page shell
    report_from_folder(folder, examples=..., sae_eval=...)                             from a results folder

Inputs (plain dicts, so the report can be rebuilt from files):

- ``summary``: the experiments' ``summary.json`` (schema ``gradsae.experiments.summary/1`` or the sweep
  schema ``gradsae.experiments.sweep/1``; see docs/experiments.md). Every section is optional.
- ``examples``: per-example views, each ``Influence.to_json(top, promoted)`` plus optional keys
  ``question``, ``golds`` (gold answers), ``perturb`` (the examples.jsonl perturb record: ``control`` and
  ``cells["<method>/<set>/<K>"] = {prediction, em, f1, k}``), ``steer`` (the steer record, optionally with
  ``partner_question`` and ``partner_golds``). See docs/report.md.
- ``config``: the run's config.json (shown in the header); ``sae_eval``: any JSON-like dict of SAE metrics;
  ``answers``: the examples.jsonl ``answer`` records (the "all questions" table).

Every string that comes from data (questions, answers, tokens, ids, config values, error messages) goes
through ``html.escape``; the per-example data for the JS is embedded as JSON with ``<``, ``>`` and ``&``
escaped, and the JS only ever writes ``textContent``/``title``, never HTML.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import opt
from .errors import GradsaeError
from .io import atomic_write_text, read_json

METHOD_NAMES = {"baseline": "Baseline", "gradsae": "GradSAE"}
SET_NAMES = {"top": "TopK", "bottom": "BottomK"}
# For each task and set: is a lower score the "better" (more influential / weaker) result?
_LOWER_IS_BEST = {("perturbation", "top"): True, ("perturbation", "bottom"): False,
                  ("steering", "top"): False, ("steering", "bottom"): True}
_ARROWS = {("perturbation", "top"): "↓", ("perturbation", "bottom"): "↑",
           ("steering", "top"): "↑", ("steering", "bottom"): "↓"}


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def esc(x: Any) -> str:
    """HTML-escape any value as text (quotes too, so it is safe inside attributes)."""
    return html.escape("" if x is None else str(x), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)
    return (s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


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
    return esc(x)


def sig(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{float(x):.{digits}g}"


def token_text(t: str) -> str:
    """How a token is shown: visible newlines and tabs (the text is escaped by the caller)."""
    return t.replace("\n", "↵\n").replace("\t", "⇥")


def token_label(t: str) -> str:
    """How a token is named in tooltips and tables: a quoted repr without the outer quotes' escaping noise."""
    return repr(t)


def colour(v: float, vmax: float) -> str:
    """Background for a per-token value: red for positive influence, blue for negative, alpha by |v|/vmax."""
    if not vmax or not v:
        return "transparent"
    a = min(1.0, abs(v) / vmax) * 0.85
    return f"rgba(220,50,32,{a:.3f})" if v > 0 else f"rgba(30,100,220,{a:.3f})"


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Summary sections
# ---------------------------------------------------------------------------------------------

def _kv_table(rows: Iterable[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v if isinstance(v, _Raw) else esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


class _Raw(str):
    """Already-escaped HTML (only built by this module from escaped parts)."""


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


def render_header(summary: dict, config: dict | None) -> str:
    """Model, SAE, layer, data and settings; the full config folded below."""
    s, d = summary, summary.get("data") or {}
    rows = [("model", s.get("model")), ("SAE", s.get("sae")), ("layer", s.get("layer")),
            ("SAE width (d_sae)", s.get("d_sae")), ("K values", ", ".join(map(str, s.get("ks", [])))),
            ("methods", ", ".join(METHOD_NAMES.get(m, m) for m in s.get("methods", []))),
            ("data", d.get("path"))]
    cfg = config or {}
    for key in ("template", "target", "aggregation", "positions", "error", "inject", "at", "min_f1", "seed"):
        if key in cfg:
            rows.append((key, cfg[key]))
    if d:
        un = d.get("unedited") or {}
        rows.append(("questions", _Raw(
            f"{num(d.get('n_examples'))} loaded, {num(d.get('n_answered'))} answered, <b>{num(d.get('n_kept'))} kept</b> "
            f"(F1 ≥ {num(d.get('min_f1'), 2)} through the SAE splice); unedited EM {num(un.get('em'))}, "
            f"F1 {num(un.get('f1'))} on all answered")))
    t = s.get("timing") or {}
    if t:
        rows.append(("time (s)", ", ".join(f"{k} {v:.0f}" if isinstance(v, (int, float)) else f"{k} {v}"
                                           for k, v in t.items())))
    rows = [(k, v) for k, v in rows if v not in (None, "")]
    out = [f'<section id="config"><h2>Setup</h2>{_kv_table(rows)}']
    if cfg:
        out.append(f"<details><summary>full configuration (config.json)</summary>{_kv_table(_flatten(cfg))}</details>")
    out.append("</section>")
    return "".join(out)


def _cell(c: dict | None, metric: str) -> tuple[str, float | None]:
    if not c or c.get(metric) is None:
        return "–", None
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
    return f'<span title="{esc(tip)}">{c[metric]:.2f}</span>', float(c[metric])


def render_table1(summary: dict) -> str:
    """Table 1 in the paper's layout: Perturbation and Local Steering × Baseline/GradSAE × TopK/BottomK,
    columns w/o Task and every K (EM, F1), with the number of examples per row; best per column marked
    (bold for perturbation, underlined for steering, as in the paper)."""
    tasks = [(t, summary[t]) for t in ("perturbation", "steering") if summary.get(t)]
    if not tasks:
        return ('<section id="table1"><h2>Table 1</h2><p class="note">No perturbation or steering results in '
                'this run.</p></section>')
    ks: list[str] = []
    for _, sec in tasks:
        for k in sec.get("ks") or summary.get("ks") or []:
            if str(k) not in ks:
                ks.append(str(k))
    methods = summary.get("methods") or ["baseline", "gradsae"]
    sets = summary.get("sets") or ["top", "bottom"]
    head1 = ('<tr><th rowspan="2">Task</th><th rowspan="2">Method</th><th rowspan="2">Set</th>'
             '<th rowspan="2" title="examples per row">n</th><th colspan="2">w/o Task</th>'
             + "".join(f'<th colspan="2">K={esc(k)}</th>' for k in ks) + "</tr>")
    head2 = "<tr>" + "<th>EM</th><th>F1</th>" * (len(ks) + 1) + "</tr>"
    body = []
    for task, sec in tasks:
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
        n_rows = len(methods) * len(sets)
        first = True
        for mi, m in enumerate(methods):
            for si, side in enumerate(sets):
                row_cells = cells.get(m, {}).get(side, {})
                tr = ["<tr>"]
                if first:
                    label = "Perturbation" if task == "perturbation" else "Local Steering"
                    tr.append(f'<th rowspan="{n_rows}" class="task">{label}</th>')
                    first = False
                if si == 0:
                    tr.append(f'<th rowspan="{len(sets)}">{esc(METHOD_NAMES.get(m, m))}</th>')
                tr.append(f'<td class="set">{esc(SET_NAMES.get(side, side))} {_ARROWS.get((task, side), "")}</td>')
                n = max([c.get("n", 0) for c in row_cells.values() if isinstance(c, dict)] or [0])
                tr.append(f"<td>{n}</td>")
                for metric in ("em", "f1"):
                    txt, _ = _cell(wo, metric)
                    tr.append(f'<td class="wo">{txt}</td>')
                for k in ks:
                    for metric in ("em", "f1"):
                        txt, v = _cell(row_cells.get(k), metric)
                        b = best.get((side, k, metric))
                        if v is not None and b is not None and abs(v - b) < 1e-9:
                            txt = f"<strong>{txt}</strong>" if task == "perturbation" else f"<u>{txt}</u>"
                        tr.append(f"<td>{txt}</td>")
                tr.append("</tr>")
                body.append("".join(tr))
    notes = []
    if summary.get("perturbation"):
        p = summary["perturbation"]
        ctrl = p.get("control") or {}
        notes.append(f"Perturbation: {num(p.get('n'))} examples; the unedited control row in the same batch "
                     f"reproduced {num(ctrl.get('agree'))} of them.")
    if summary.get("steering"):
        st = summary["steering"]
        notes.append(f"Local steering: {num(st.get('n'))} examples with a kept partner question on the same "
                     f"context ({num(st.get('n_without_partner'))} without); inject {esc(st.get('inject'))} at "
                     f"{esc(st.get('at'))}, clamp {esc(st.get('clamp') or 'none')}; scored against the partner's answers.")
    failed = summary.get("failed") or {}
    if failed:
        counts = ", ".join(f"{esc(k)} {num(v)}" for k, v in failed.items() if k != "errors")
        notes.append(f"Failed examples (recorded, never dropped): {counts}.")
    errs = "".join(f"<li><code>{esc(e.get('task'))}</code> {esc(e.get('id'))}: {esc(e.get('error'))}</li>"
                   for e in (failed.get("errors") or [])[:50])
    return (f'<section id="table1"><h2>Table 1: perturbation and local steering</h2>'
            f'<p class="note">EM and F1 (×100). Perturbation: zero the set at every position, generated tokens '
            f'included (TopK ↓: lower means the set mattered more; BottomK ↑). Local steering: replace the '
            f'example\'s set by its partner\'s (TopK ↑, BottomK ↓). Hover a number for its 95% CI and n.</p>'
            f'<div class="scroll"><table class="t1"><thead>{head1}{head2}</thead><tbody>{"".join(body)}'
            f'</tbody></table></div>' + "".join(f'<p class="note">{n}</p>' for n in notes)
            + (f"<details><summary>errors</summary><ul>{errs}</ul></details>" if errs else "") + "</section>")


def render_stats(summary: dict) -> str:
    t = summary.get("stats")
    if not t:
        return ""

    def pc(x):
        return "–" if x is None else f"{x:.2f}%"

    inner = t.get("inner") or {}
    ib, ig = inner.get("baseline") or {}, inner.get("gradsae") or {}
    rows = [("Activation Avg. (active at the last prompt token)", num(t.get("active_last_mean"), 2), ""),
            ("Active at any scored position", num(t.get("active_any_mean"), 2), ""),
            ("50% Avg. (size of the K = 50% set)", num(t.get("k50_mean"), 2), ""),
            ("Cross TopK overlap (Baseline ∩ GradSAE)", pc(t.get("cross_top_overlap")), ""),
            ("Cross BottomK overlap", pc(t.get("cross_bottom_overlap")), ""),
            ("Inner TopK overlap (same context, other question)", pc(ib.get("top")), pc(ig.get("top"))),
            ("Inner BottomK overlap", pc(ib.get("bottom")), pc(ig.get("bottom")))]
    body = "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in rows)
    return (f'<section id="stats"><h2>Table 3: latent statistics</h2><p class="note">K = 50%, '
            f'{num(t.get("n"))} kept examples, {num(t.get("n_context_pairs"))} same-context pairs.</p>'
            f'<table class="kv"><thead><tr><th></th><th>Baseline</th><th>GradSAE</th></tr></thead>'
            f"<tbody>{body}</tbody></table></section>")


def render_rq(summary: dict) -> str:
    rq = summary.get("rq")
    if not rq:
        return ""
    items = []
    for k, v in rq.items():
        holds = v.get("holds") if isinstance(v, dict) else None
        word, cls = {True: ("holds", "yes"), False: ("does not hold", "no"), None: ("not measured", "na")}[holds]
        items.append(f'<li><b>{esc(k.upper())}</b> <span class="verdict {cls}">{word}</span>: '
                     f'{esc(v.get("text", "") if isinstance(v, dict) else v)}</li>')
    return f'<section id="rq"><h2>Research questions</h2><ul>{"".join(items)}</ul></section>'


def plot_k_curves(summary: dict) -> dict[str, bytes]:
    """EM/F1-vs-K plots (the experiments' ``plot``), rendered in memory: {section name: PNG bytes}."""
    import tempfile

    from .experiments import plot

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in plot(summary, Path(tmp)):
            out[p.stem] = p.read_bytes()
    return out


_PLOT_CAPTIONS = {"perturb": "Perturbation: EM and F1 after zeroing each set, vs K (95% CI bars)",
                  "steer": "Local steering: EM and F1 against the partner's answers, vs K (95% CI bars)"}


def render_plots(summary: dict, pngs: dict[str, bytes] | None = None) -> str:
    if not (summary.get("perturbation") or summary.get("steering")):
        return ""
    err = ""
    if pngs is None:
        try:
            pngs = plot_k_curves(summary)
        except Exception as e:  # a plot is a convenience; the numbers are in Table 1
            pngs, err = {}, f"{type(e).__name__}: {e}"
    imgs = "".join(f'<figure><img alt="{esc(name)} EM and F1 vs K" src="{png_data_uri(png)}">'
                   f"<figcaption>{esc(_PLOT_CAPTIONS.get(name, name))}</figcaption></figure>"
                   for name, png in pngs.items())
    if err:
        imgs += f'<p class="note">plots unavailable ({esc(err)})</p>'
    return f'<section id="plots"><h2>EM and F1 vs K</h2>{imgs}</section>'


def render_sae_eval(sae_eval: dict | None) -> str:
    if not sae_eval:
        return ""
    main = sae_eval.get("eval_result_metrics")  # the SAEBench layout `gradsae eval` writes
    if isinstance(main, dict):
        rest = {k: v for k, v in sae_eval.items() if k != "eval_result_metrics"}
        return (f'<section id="sae-eval"><h2>SAE evaluation</h2>{_kv_table(_flatten(main))}'
                + (f"<details><summary>details</summary>{_kv_table(_flatten(rest))}</details>" if rest else "")
                + "</section>")
    return f'<section id="sae-eval"><h2>SAE evaluation</h2>{_kv_table(_flatten(sae_eval))}</section>'



def render_answers(answers: Sequence[dict]) -> str:
    """Every question of the run: gold, prediction, F1 and whether the correct-sample filter kept it."""
    if not answers:
        return ""
    rows = []
    for r in answers:
        if r.get("task", "answer") != "answer":
            continue
        err = r.get("error")
        f1 = r.get("f1")
        rows.append(f'<tr class="{"kept" if r.get("kept") else "dropped"}"><td>{esc(r.get("id"))}</td>'
                    f'<td>{esc(r.get("question"))}</td><td>{esc(" | ".join(r.get("golds") or []))}</td>'
                    f'<td>{esc(err) if err else esc(r.get("prediction"))}</td>'
                    f'<td>{"–" if f1 is None else f"{100 * f1:.0f}"}</td><td>{"yes" if r.get("kept") else "no"}</td></tr>')
    kept = sum(1 for r in answers if r.get("kept"))
    return (f'<section id="questions"><h2>All questions</h2><details><summary>{len(rows)} questions, {kept} kept '
            f'(click to show)</summary><div class="scroll"><table class="list"><thead><tr><th>id</th><th>question</th>'
            f'<th>gold</th><th>prediction</th><th>F1</th><th>kept</th></tr></thead><tbody>{"".join(rows)}'
            f"</tbody></table></div></details></section>")


# ---------------------------------------------------------------------------------------------
# One example
# ---------------------------------------------------------------------------------------------

def _latent_rows(rows: Sequence[dict], title: str, cls: str) -> str:
    if not rows:
        return f'<div class="{cls}"><h4>{esc(title)}</h4><p class="note">none</p></div>'
    body = "".join(
        f"<tr><td>{i}</td><td>{esc(r.get('latent'))}</td><td>{sig(r.get('score'))}</td>"
        f"<td>{sig(r.get('mean_activation'))}</td><td>{esc(r.get('baseline_rank'))}</td>"
        f"<td class=\"promo\">{' '.join(f'<code>{esc(token_label(t))}</code>' for t in r.get('promotes', []))}</td></tr>"
        for i, r in enumerate(rows, 1))
    return (f'<div class="{cls}"><h4>{esc(title)}</h4><table class="lat"><thead><tr><th>#</th><th>latent</th>'
            f'<th title="GradSAE influence score">score</th><th title="mean activation (the Baseline score)">mean act</th>'
            f'<th title="rank under the Baseline (mean activation)">base rank</th>'
            f'<th title="tokens the decoder direction promotes most (W_U · W_dec[c])">promotes</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _k_order(keys: Iterable[str]) -> list[str]:
    def key(k: str):
        return (1, float(k[:-1])) if k.endswith("%") else (0, float(k)) if re.fullmatch(r"[\d.]+", k) else (2, 0)
    return sorted(dict.fromkeys(keys), key=key)


def _edit_table(cells: dict, golds_label: str) -> str:
    """Predictions per (method, set) × K from ``cells["method/set/K"] = {prediction, f1, k}``."""
    parsed = {}
    for key, c in cells.items():
        parts = str(key).split("/")
        if len(parts) != 3 or not isinstance(c, dict):
            continue
        parsed[tuple(parts)] = c
    if not parsed:
        return ""
    ks = _k_order(k for _, _, k in parsed)
    rows_keys = list(dict.fromkeys((m, s) for m, s, _ in parsed))
    head = "<tr><th>method</th><th>set</th>" + "".join(f"<th>K={esc(k)}</th>" for k in ks) + "</tr>"
    body = []
    for m, s in rows_keys:
        tds = []
        for k in ks:
            c = parsed.get((m, s, k))
            if c is None:
                tds.append("<td>–</td>")
                continue
            f1 = c.get("f1")
            ok = "ok" if f1 is not None and f1 >= 0.9 else "bad" if f1 is not None else ""
            tip = f"F1 {golds_label} {f1:.2f}" if f1 is not None else ""
            if c.get("k") is not None:
                tip += f"; {c['k']} latents edited"
            if c.get("own_f1") is not None:
                tip += f"; F1 vs own answers {c['own_f1']:.2f}"
            text = c.get("error") or c.get("prediction")
            tds.append(f'<td class="{ok}" title="{esc(tip)}">{esc(text) if text else "<i>(empty)</i>"}</td>')
        body.append(f"<tr><th>{esc(METHOD_NAMES.get(m, m))}</th><td>{esc(SET_NAMES.get(s, s))}</td>{''.join(tds)}</tr>")
    return f'<div class="scroll"><table class="edits"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'


def _token_view(ex: dict, uid: str) -> str:
    tokens = list(ex.get("tokens") or [])
    n_prompt = int(ex.get("n_prompt") or 0)
    pt = ex.get("per_token") or None
    latents = list(pt["latents"]) if pt else []
    values = [list(v) for v in pt["values"]] if pt else []
    if not tokens:
        return ""
    v0 = values[0] if values else [0.0] * len(tokens)
    vmax = max((abs(v) for v in v0), default=0.0)
    spans = []
    for j, t in enumerate(tokens):
        v = v0[j] if j < len(v0) else 0.0
        cls = "t ans" if j >= n_prompt else "t"
        tip = f"{token_label(t)}" + (f"  latent {latents[0]}: g = {v:.3g}" if latents else "")
        spans.append(f'<span class="{cls}" style="background:{colour(v, vmax)}" title="{esc(tip)}">'
                     f"{esc(token_text(t))}</span>")
    buttons = "".join(f'<button type="button" class="lat{" on" if i == 0 else ""}" data-i="{i}">latent '
                      f"{esc(c)}</button>" for i, c in enumerate(latents))
    data = {"latents": latents, "values": values, "labels": [token_label(t) for t in tokens]}
    ctrl = (f'<div class="latbar">colour tokens by the per-token influence g[n, c] of: {buttons}'
            f' <span class="legend"><span class="sw pos"></span>raises the answer <span class="sw neg"></span>'
            f"lowers it</span></div>" if latents else
            '<p class="note">no per-token influence stored (method exact, or keep_per_token = 0)</p>')
    return (f'{ctrl}<div class="tokens" id="{uid}-tokens">{"".join(spans)}</div>'
            f'<script type="application/json" class="ex-data">{json_for_script(data)}</script>')


def render_example(ex: dict) -> str:
    """One example's section: prompt and answer tokens coloured by the influence of a chosen top latent
    (buttons switch the latent; values on hover), top/bottom latents tables, and the answers before and
    after masking and after steering when those records are attached. ``ex`` is ``Influence.to_json``
    plus optional ``question``, ``golds``, ``perturb``, ``steer`` (see the module docstring)."""
    uid = html_id("ex-", ex.get("id", ""))
    q = ex.get("question")
    title = esc(ex["title"]) if ex.get("title") else f"Example {esc(ex.get('id', ''))}" + (f": {esc(q)}" if q else "")
    meta = ex.get("meta") or {}
    facts = [("output (explained)", ex.get("output"))]
    if ex.get("golds"):
        facts.append(("gold answers", " | ".join(ex["golds"])))
    facts += [("target", f"{meta.get('target', '?')} = {sig(ex.get('target_value'), 4)}"),
              ("latents active at the last prompt token", ex.get("n_active_last")),
              ("latents active at any scored position", ex.get("n_active_any")),
              ("settings", ", ".join(f"{k}={meta[k]}" for k in ("method", "aggregation", "positions", "error", "layer")
                                     if meta.get(k) is not None))]
    parts = [f'<section class="example" id="{uid}"><h3>{title}</h3>', _kv_table(facts),
             _token_view(ex, uid),
             '<div class="lattables">', _latent_rows(ex.get("top") or [], "Top latents (GradSAE)", "top"),
             _latent_rows(ex.get("bottom") or [], "Bottom latents (smallest positive score)", "bottom")]
    parts.append("</div>")
    if ex.get("baseline_top"):
        parts.append("<details><summary>Top latents by mean activation (the Baseline ranking)</summary>"
                     + _latent_rows(ex["baseline_top"], "Top latents by mean activation (Baseline)", "base")
                     + "</details>")
    pert = ex.get("perturb")
    if pert:
        ctrl = pert.get("control") or {}
        vs = "vs gold" if ex.get("golds") else "vs explained output"
        parts.append(f'<h4>Answer after masking (zeroing) the set at every position</h4>'
                     f'<p>unedited: <q>{esc(ctrl.get("prediction", ex.get("output")))}</q></p>'
                     + (f'<p class="error">{esc(pert["error"])}</p>' if pert.get("error") else "")
                     + _edit_table(pert.get("cells") or {}, vs))
    st = ex.get("steer")
    if st:
        pq = st.get("partner_question")
        pg = st.get("partner_golds")
        un = st.get("unsteered") or {}
        parts.append("<h4>Answer after local steering with the partner question's latents</h4>"
                     + _kv_table([("partner", st.get("partner")), ("partner question", pq),
                                  ("partner answers", " | ".join(pg) if pg else None),
                                  ("unsteered F1 vs partner", sig(un.get("f1")) if un else None)])
                     + (f'<p class="error">{esc(st["error"])}</p>' if st.get("error") else "")
                     + _edit_table(st.get("cells") or {}, "vs partner's answers"))
    parts.append("</section>")
    return "".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

CSS = """
:root{--fg:#1b1f24;--muted:#5b6470;--line:#d8dde3;--bg:#fff;--soft:#f5f7f9;--acc:#b3261e}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);
 margin:0 auto;max-width:1240px;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.25em;border-bottom:2px solid var(--line);padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.08em;margin:.2em 0 .5em}h4{font-size:.98em;margin:1em 0 .3em}
nav a{margin-right:1em;color:var(--acc);text-decoration:none}
.note{color:var(--muted);font-size:.9em}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid var(--line);padding:3px 7px;vertical-align:top;text-align:left}
thead th{background:var(--soft)}
table.kv th{background:var(--soft);font-weight:600;white-space:nowrap}
table.t1 td{text-align:right;font-variant-numeric:tabular-nums}table.t1 td.wo{color:var(--muted)}table.t1 td.set{text-align:left;white-space:nowrap}
table.t1 th.task{writing-mode:vertical-rl;transform:rotate(180deg);text-align:center}
table.lat td{font-variant-numeric:tabular-nums}table.lat td.promo code{background:var(--soft);padding:0 3px;margin-right:3px;border-radius:3px}
.scroll{overflow-x:auto}
section.example{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:18px 0;background:#fff}
.tokens{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;
 border:1px solid var(--line);border-radius:6px;padding:8px;max-height:18em;overflow-y:auto;background:#fcfcfd}
.t{border-radius:2px}.t.ans{box-shadow:inset 0 -2px 0 #222;font-weight:600}
.latbar{margin:.3em 0;font-size:.9em}
button.lat{font:inherit;font-size:.85em;border:1px solid var(--line);background:var(--soft);border-radius:4px;padding:1px 7px;margin:2px;cursor:pointer}
button.lat.on{background:#222;color:#fff;border-color:#222}
.legend{margin-left:1em;color:var(--muted)}.sw{display:inline-block;width:12px;height:12px;margin:0 3px 0 8px;vertical-align:-1px;border-radius:2px}
.sw.pos{background:rgba(220,50,32,.8)}.sw.neg{background:rgba(30,100,220,.8)}
.lattables{display:flex;flex-wrap:wrap;gap:18px}
table.edits td.ok{background:#e7f5e9}table.edits td.bad{background:#fdecea}
tr.dropped td{color:var(--muted)}
.verdict{font-weight:600;padding:0 5px;border-radius:3px}.verdict.yes{background:#e7f5e9}.verdict.no{background:#fdecea}.verdict.na{background:var(--soft)}
figure{margin:.6em 0}figure img{max-width:100%;border:1px solid var(--line)}figcaption{color:var(--muted);font-size:.85em}
#js-errors{color:var(--acc)}
"""

JS = """
(function(){
  var errs = [];
  window.addEventListener('error', function(e){
    errs.push(String(e.message));
    var box = document.getElementById('js-errors');
    if (box) { box.textContent = 'script error: ' + errs.join('; '); }
    document.body.setAttribute('data-js-error', '1');
  });
  function colour(v, m){
    if (!m || !v) { return 'transparent'; }
    var a = Math.min(1, Math.abs(v) / m) * 0.85;
    return v > 0 ? 'rgba(220,50,32,' + a.toFixed(3) + ')' : 'rgba(30,100,220,' + a.toFixed(3) + ')';
  }
  var sections = document.querySelectorAll('section.example');
  Array.prototype.forEach.call(sections, function(sec){
    var el = sec.querySelector('script.ex-data');
    if (!el) { return; }
    var d = JSON.parse(el.textContent);
    var toks = sec.querySelectorAll('.tokens .t');
    var buttons = sec.querySelectorAll('button.lat');
    function show(i){
      var vals = d.values[i] || [];
      var m = 0;
      for (var j = 0; j < vals.length; j++) { m = Math.max(m, Math.abs(vals[j])); }
      Array.prototype.forEach.call(toks, function(t, j){
        var v = vals[j] || 0;
        t.style.background = colour(v, m);
        t.title = d.labels[j] + '  latent ' + d.latents[i] + ': g = ' + Number(v).toPrecision(3);
      });
      Array.prototype.forEach.call(buttons, function(b, k){
        if (k === i) { b.classList.add('on'); } else { b.classList.remove('on'); }
      });
    }
    Array.prototype.forEach.call(buttons, function(b){
      b.addEventListener('click', function(){ show(parseInt(b.getAttribute('data-i'), 10)); });
    });
    if (d.latents.length) { show(0); }
    var box = sec.querySelector('.tokens');
    if (box) { box.scrollTop = box.scrollHeight; }
  });
  document.body.setAttribute('data-ready', '1');
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")


def render_page(title: str, body: str, subtitle: str = "", nav: Sequence[tuple[str, str]] = ()) -> str:
    """The page shell: inline CSS and JS, a content-security policy that forbids any network request."""
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<header id="top"><h1>{esc(title)}</h1>'
            + (f'<p class="note">{esc(subtitle)}</p>' if subtitle else "")
            + (f"<nav>{links}</nav>" if links else "")
            + '<p id="js-errors" role="alert"></p></header>'
            f"<main>{body}</main><script>{JS}</script></body></html>\n")


def _one_run(summary: dict, pngs: dict[str, bytes] | None) -> str:
    return render_table1(summary) + render_plots(summary, pngs) + render_stats(summary) + render_rq(summary)


def render_report(summary: dict | None, examples: Sequence[dict] = (), *, config: dict | None = None,
                  sae_eval: dict | None = None, answers: Sequence[dict] = (), title: str = "GradSAE report",
                  plots: dict[str, bytes] | None = None) -> str:
    """The whole report as one HTML string (see the module docstring for the inputs).

    ``plots``: PNG bytes by name to embed instead of drawing them from the summary.
    """
    summary = summary or {}
    parts = []
    nav = [("config", "Setup")]
    if str(summary.get("schema", "")).startswith("gradsae.experiments.sweep"):
        runs = summary.get("runs") or []
        first = runs[0]["summary"] if runs else {}
        parts.append(render_header(first, config))
        for r in runs:
            s = r.get("summary") or {}
            rid = html_id("run-", r.get("tag") or s.get("layer"))
            parts.append(f'<section id="{rid}"><h2>Run {esc(r.get("tag"))}: SAE {esc(s.get("sae"))} '
                         f'({esc(s.get("layer"))})</h2>{_one_run(s, None)}</section>')
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
    parts.append(f'<section id="examples"><h2>Examples</h2>'
                 + (f'<p class="note">{len(examples)} examples. Bold underlined tokens are the answer. '
                    f"Hover a token for its value.</p>{ex_html}" if examples else
                    '<p class="note">no per-example influence in this report</p>') + "</section>")
    nav.append(("examples", "Examples"))
    if answers:
        parts.append(render_answers(answers))
        nav.append(("questions", "All questions"))
    sub = " · ".join(str(x) for x in (summary.get("model"), summary.get("sae"), summary.get("layer")) if x)
    return render_page(title, "".join(parts), sub, nav)


def write_report(path: str | Path, summary: dict | None, examples: Sequence[dict] = (), **kw) -> Path:
    """``render_report`` written atomically to ``path`` (readable by others, as a normal new file)."""
    return make_readable(atomic_write_text(path, render_report(summary, examples, **kw)))


def make_readable(path: Path) -> Path:
    """The atomic write's temp file is private (0600); give the report the usual umask permissions."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def render_example_page(ex: dict, title: str = "GradSAE explain") -> str:
    """One example as a whole page (``gradsae explain --html``)."""
    meta = ex.get("meta") or {}
    sub = " · ".join(str(x) for x in (meta.get("model"), meta.get("sae"), meta.get("layer")) if x)
    return render_page(title, f'<section id="examples">{render_example(ex)}</section>', sub)


# ---------------------------------------------------------------------------------------------
# From a results folder
# ---------------------------------------------------------------------------------------------

def attach_records(ex: dict, records: dict[tuple[str, str], dict]) -> dict:
    """Add question, golds, the perturb record and the steer record (with its partner's question and
    answers) of ``ex["id"]`` from examples.jsonl records keyed (task, id)."""
    out = dict(ex)
    qid = str(ex.get("id"))
    ans = records.get(("answer", qid))
    if ans:
        out.setdefault("question", ans.get("question"))
        out.setdefault("golds", ans.get("golds"))
    if ("perturb", qid) in records:
        out.setdefault("perturb", records[("perturb", qid)])
    if ("steer", qid) in records:
        st = dict(records[("steer", qid)])
        partner = records.get(("answer", str(st.get("partner"))))
        if partner:
            st.setdefault("partner_question", partner.get("question"))
            st.setdefault("partner_golds", partner.get("golds"))
        out.setdefault("steer", st)
    return out


def read_example_records(folder: str | Path) -> dict[tuple[str, str], dict]:
    """examples.jsonl of a results folder as {(task, id): latest record}."""
    from .io import JsonlLog

    recs: dict[tuple[str, str], dict] = {}
    path = Path(folder) / "examples.jsonl"
    if path.exists():
        for r in JsonlLog(path).records():
            if "task" in r and "id" in r:
                recs[(r["task"], str(r["id"]))] = r
    return recs


def report_from_folder(folder: str | Path, examples: Sequence[dict] = (), *, sae_eval: dict | None = None,
                       out: str | Path | None = None, title: str = "GradSAE report") -> Path:
    """Build ``<folder>/report.html`` from summary.json, config.json and examples.jsonl (plus per-example
    influence views, which the folder does not store)."""
    folder = Path(folder)
    summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else {}
    if not summary and (folder / "sweep.json").exists():
        summary = read_json(folder / "sweep.json")
    config = read_json(folder / "config.json") if (folder / "config.json").exists() else None
    recs = read_example_records(folder)
    answers = [r for (task, _), r in recs.items() if task == "answer"]
    exs = [attach_records(e, recs) for e in examples]
    return write_report(out or folder / "report.html", summary, exs, config=config, sae_eval=sae_eval,
                        answers=answers, title=title)


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
    path = report_from_folder(folder, out=cfg.out or None, title=cfg.title)
    print(f"wrote {path}")
    return path
