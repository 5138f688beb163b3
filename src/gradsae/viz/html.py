"""The one HTML layer every page uses: the Jinja2 environment (autoescape on), the page assets, JSON inside
``<script type="application/json">``, the Content-Security-Policy, and how a token is shown.

The pages: the experiment report and the explain page (``report.py``), the dashboard page and latent cards
(``dashboard_page.py``), the blind rating page (``rate.py``, ``templates/rate.html.j2``). None loads anything from
the network (``default-src 'none'``); each page's one script is allowed by its SHA-256 hash.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of every page: templates/ of the package, autoescape, strict undefined."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.finalize = _visible  # every {{ expression }}: no bidirectional control reaches a page raw
    env.filters["tokstr"] = token_text
    env.filters["level"] = level
    env.filters["fmt"] = fmt
    return env


def asset(name: str) -> str:
    """A CSS or JavaScript file of templates/, inlined into a page."""
    return (TEMPLATES / name).read_text(encoding="utf-8")


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, ``<!--`` or line separators;
    NaN refused; other non-JSON values as their text."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
    return (
        s.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def csp(script: str, style: str | None = None) -> str:
    """Nothing from the network, no forms or frames, no script but ``script`` (by hash); the one ``<style>``
    block ``style`` by hash, or — for pages that colour elements through style attributes (the report) —
    inline styles."""
    style_src = csp_hash(style) if style is not None else "'unsafe-inline'"
    return (
        f"default-src 'none'; script-src {csp_hash(script)}; style-src {style_src}; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )


def level(x: float, top: float, n: int = 9) -> int:
    """0..n: x relative to top (colour intensity class); 0 for x <= 0 or top <= 0."""
    if top <= 0 or x <= 0:
        return 0
    return max(1, min(n, round(n * x / top)))


def fmt(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; empty for None."""
    return "" if x is None else f"{x:.{digits}g}"


def token_text(t: str, keep_breaks: bool = False) -> str:
    """A token as shown: a newline as ↵ (followed by a real line break in flowing text, ``keep_breaks``), a tab
    as ⇥, carriage returns dropped; bidirectional controls shown as their code point so they cannot reorder
    what the reader sees. The text itself is escaped by the template."""
    t = t.replace("\r", "").replace("\n", "↵\n" if keep_breaks else "↵").replace("\t", "⇥")
    return "".join(f"<U+{ord(c):04X}>" if c in _BIDI else c for c in t)


def _visible(value: Any) -> Any:
    """Text with its bidirectional controls shown as code points (they would reorder what the reader sees)."""
    if isinstance(value, str) and any(c in _BIDI for c in value):
        return "".join(f"<U+{ord(c):04X}>" if c in _BIDI else c for c in value)
    return value


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
