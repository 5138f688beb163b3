"""HTML for dashboards: the self-contained dashboard page and latent cards as a reusable fragment, through the
one HTML layer (``html.py``: Jinja2 with autoescape, a strict hash-based Content-Security-Policy, page data as
JSON inside ``<script type="application/json">``).

Every corpus string reaches the page through Jinja2 autoescaping (cards) or through ``script_json`` (the
search index), never as raw HTML. The pages load nothing from the network: ``default-src 'none'`` and the
one inline script and style block are allowed by their SHA-256 hashes.

For other pages (explain, the experiment report): ``render_cards(dash, latents)`` returns a fragment (its own
``<style>`` block plus one compact card per latent) that can be pasted into any page whose CSP allows inline
styles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..dashboard.cards import Dashboard, LatentRecord
from .html import asset, csp, environment, fmt, level, script_json, token_text  # noqa: F401  (re-exported)

LOWER_PERCENTILE = 90  # band samples shown as "lower activations" lie below this percentile of the latent


env = environment  # the one page environment (html.py)


def card_view(dash: Dashboard, r: LatentRecord, n_top: int = 8, n_bands: int = 6, n_influence: int = 5) -> dict:
    """The values the card macro draws for one latent (token ids resolved to text)."""

    def ctx(c, values, kind):
        toks = []
        # activations: one scale per latent (weaker contexts look weaker); influence: per context (g varies widely)
        scale = max((abs(v) for v in values), default=0.0)
        if kind == "act":
            scale = max(scale, r.max_act)
        for j, (i, v) in enumerate(zip(c.ids, values)):
            if i < 0:
                continue
            lv = level(abs(v), scale)
            cls = "" if lv == 0 else f"a{lv}" if kind == "act" else f"p{lv}" if v > 0 else f"n{lv}"
            cls = f"{cls} gd-at".strip() if j == c.at else cls
            toks.append({"text": c.text(dash, j), "value": v, "cls": cls})
        return toks

    edges_lo, per = dash.meta.hist_lo_log10, dash.meta.hist_per_decade
    hmax = max(r.hist, default=0)
    hist = [
        {
            "h": (0 if hmax == 0 else max(1, round(40 * n / hmax))) if n else 0,
            "n": n,
            "lo": 10 ** (edges_lo + (r.hist_lo + i) / per),
        }
        for i, n in enumerate(r.hist)
    ]
    return {
        "r": r,
        "top": [{"tokens": ctx(c, c.acts, "act"), "value": c.value} for c in r.top[:n_top]],
        "bands": [
            {"tokens": ctx(c, c.acts, "act"), "value": c.value, "percentile": c.percentile}
            for c in [b for b in r.bands if (b.percentile or 0) < LOWER_PERCENTILE][:n_bands]
        ],
        "influence": [
            {
                "tokens": ctx(c, c.infl, "infl"),
                "value": c.value,
                "act": c.act,
                "next": {"text": dash.token(c.next.id), "logp": c.next.logp, "dlogp": c.next.dlogp} if c.next else None,
                "moved": [{"text": dash.token(m.id), "logp": m.logp, "dlogp": m.dlogp} for m in c.moved],
            }
            for c in r.influence[:n_influence]
        ],
        "promoted": [dash.token(t.id) for t in r.promoted],
        "suppressed": [dash.token(t.id) for t in r.suppressed],
        "neighbours": r.neighbours,
        "hist": hist,
    }


def shown_latents(dash: Dashboard, max_latents: int = 0) -> list[LatentRecord]:
    """Latents that fired, most frequent first (at most ``max_latents``; 0 = all)."""
    alive = sorted((r for r in dash.latents if r.count), key=lambda r: (-r.count, r.latent))
    return alive[:max_latents] if max_latents else alive


def render_dashboard_page(dash: Dashboard, max_latents: int = 0, title: str = "") -> str:
    lats = shown_latents(dash, max_latents)
    js, css = asset("dashboard.js"), asset("dashboard.css")
    index = [
        {
            "l": r.latent,
            "t": " ".join(dash.token(t.id) for t in r.promoted[:4])
            + " | "
            + " ".join(dash.token(c.ids[c.at]) for c in r.top[:4] if c.ids[c.at] >= 0),
        }
        for r in lats
    ]
    n_dead = sum(1 for r in dash.latents if not r.count)
    return (
        env()
        .get_template("dashboard.html.j2")
        .render(
            title=title or f"Dashboard — {dash.meta.sae}",
            meta=dash.meta,
            cards=[card_view(dash, r) for r in lats],
            n_dead=n_dead,
            csp=csp(js, css),
            js=js,
            css=css,
            index_json=script_json(index),
        )
    )


def write_dashboard_page(path: str | Path, dash: Dashboard, max_latents: int = 0) -> Path:
    from ..io import atomic_write_text

    return atomic_write_text(path, render_dashboard_page(dash, max_latents))


def render_cards(dash: Dashboard, latents: Sequence[int], compact: bool = True) -> str:
    """An HTML fragment: a ``<style>`` block and one card per latent in ``latents`` (unknown ones skipped).

    Paste it into any page whose CSP allows inline styles (the report's and explain's pages do); corpus
    text is escaped. ``compact`` shows 3 contexts of each kind instead of all.
    """
    n = 3 if compact else 8
    views = [
        card_view(dash, r, n_top=n, n_bands=2 if compact else 6, n_influence=n)
        for r in (dash.latent(c) for c in latents)
        if r is not None
    ]
    return env().get_template("cards.html.j2").render(css=asset("dashboard.css"), cards=views, meta=dash.meta)


def insert_before_body_end(page: str, fragment: str) -> str:
    """Put a fragment at the end of a page's body (for pages built elsewhere, e.g. explain --html)."""
    i = page.rfind("</body>")
    return page + fragment if i < 0 else page[:i] + fragment + page[i:]
