"""One example of the report and the explain page: the prompt and output tokens coloured by a latent's influence, the
top latents (GradSAE and the Baseline), and the answers with each set of latents edited (perturbation, steering)."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from ..squad.tables import METHOD_NAMES, SET_NAMES
from .html import colour, html_id, macros, safe, script_json, sig, token_label, token_text


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
    return {"uid": uid, "tokens": spans, "buttons": latents, "data": safe(script_json(data))}


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
    return str(macros("report.html.j2").example(view))
