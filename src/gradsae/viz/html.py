"""The one HTML layer every page uses: the Jinja2 environment (autoescape on), the page assets, JSON inside
``<script type="application/json">``, the Content-Security-Policy, and how a token is shown.

The pages: the experiment report and the explain page (``report.py``), the dashboard page and latent cards
(``dashboard_page.py``), the blind rating page (``rate.py``, ``templates/rate.html.j2``), the ``gradsae serve``
explorer (``serve_page.py``, ``templates/serve.*``). None loads anything from
the network (``default-src 'none'``); each page's one script is allowed by its SHA-256 hash.
"""

from __future__ import annotations

import base64
import math
import re
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


def csp(script: str, style: str | None = None, *, connect_self: bool = False) -> str:
    """Nothing from the network, no forms or frames, no script but ``script`` (by hash); the one ``<style>``
    block ``style`` by hash, or — for pages that colour elements through style attributes (the report) —
    inline styles. ``connect_self``: the page may call its own server's API (``gradsae serve``), nothing else."""
    style_src = csp_hash(style) if style is not None else "'unsafe-inline'"
    served = "; connect-src 'self'" if connect_self else ""
    return (
        f"default-src 'none'; script-src {csp_hash(script)}; style-src {style_src}; img-src data:; "
        f"base-uri 'none'; form-action 'none'{served}"
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


def macros(template: str):
    """The macros of a template (``report.html.j2``) as a module: ``macros(name).table1(...)``."""
    return environment().get_template(template).module


def safe(s: str):
    """Text this package built (already escaped) that the templates show as is."""
    from markupsafe import Markup

    return Markup(s)


# ---------------------------------------------------------------------------------------------
# Values as the pages show them
# ---------------------------------------------------------------------------------------------


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


def flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, key + ".")
        elif isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v):
            for i, x in enumerate(v[:12]):
                out += flatten(x, f"{key}[{i}].") if isinstance(x, dict) else [(f"{key}[{i}]", x)]
        elif isinstance(v, (list, tuple)) and len(v) > 12:
            out.append((key, f"[{', '.join(map(str, v[:12]))}, … ({len(v)} items)]"))
        else:
            out.append((key, v if not isinstance(v, float) else f"{v:.4g}"))
    return out
