"""dashboard.json's declared schema: the types of every field ``gradsae dashboard`` writes, and each context's own
consistency, checked when a dashboard is read (one line naming the file and the field, never a traceback later)."""

from __future__ import annotations

from ..errors import GradsaeError
from ..schema import INT, NUM, MapOf, Required, check

_CONTEXT = {"ids": [INT], "acts": [NUM], "at": INT, "value": NUM, "row": INT, "pos": INT}
_MOVE = Required({"id": INT, "logp": NUM, "dlogp": NUM})
_LATENT = Required(
    {
        "latent": INT,
        "count": INT,
        "density": NUM,
        "mean_act": NUM,
        "max_act": NUM,
        "hist_lo": INT,
        "hist": [INT],
        "top": [Required(_CONTEXT)],
        "bands": [Required({**_CONTEXT, "percentile": NUM})],
        "influence": [Required({**_CONTEXT, "infl": [NUM], "act": NUM})],
        "promoted": [Required({"id": INT, "value": NUM})],
        "suppressed": [Required({"id": INT, "value": NUM})],
        "neighbours": [Required({"latent": INT, "cos": NUM})],
    }
)
_META = Required(
    {
        "model": str,
        "sae": str,
        "hook": str,
        "d_sae": INT,
        "data": [str],
        "n_tokens": INT,
        "n_influence_tokens": INT,
        "left": INT,
        "right": INT,
        "hist_lo_log10": NUM,
        "hist_per_decade": INT,
        "seconds": NUM,
        "config": dict,
        "definitions": MapOf(str),
    }
)
DASHBOARD_SCHEMA = Required({"schema": str, "meta": _META, "tokens": MapOf(str, nullable=False), "latents": [_LATENT]})
"""dashboard.json as ``gradsae dashboard`` writes it (optional: a context's ``percentile``, ``texts``; an influence
context's ``next``, ``moved``; a latent's ``max_influence``; ``meta.sae_sha256``)."""
_OPTIONAL = {"percentile": NUM, "texts": [(str, type(None))], "next": _MOVE, "moved": [_MOVE]}


def _check_context(d: dict, where: str, i: str) -> None:
    """A context's own consistency: the window's lists have one entry per token and ``at`` is inside it."""
    check(d, _OPTIONAL, where, i)
    n = len(d["ids"])
    for key in ("acts", "infl", "texts"):
        if d.get(key) is not None and len(d[key]) != n:
            raise GradsaeError(f'{where}: "{i}.{key}" has {len(d[key])} entries for {n} tokens: rebuild the dashboard')
    if not 0 <= d["at"] < max(n, 1):
        raise GradsaeError(f'{where}: "{i}.at" is {d["at"]}, outside its {n}-token window: rebuild the dashboard')


def check_dashboard_json(obj: dict, where: str) -> None:
    """One line for the first field of a dashboard.json object that is not what ``gradsae dashboard`` writes."""
    check(obj, DASHBOARD_SCHEMA, where)
    check(obj["meta"], {"sae_sha256": str}, where, "meta")
    if not -30 <= obj["meta"]["hist_lo_log10"] <= 30:
        raise GradsaeError(f'{where}: "meta.hist_lo_log10" is {obj["meta"]["hist_lo_log10"]}: rebuild the dashboard')
    for j, r in enumerate(obj["latents"]):
        check(r, {"max_influence": NUM}, where, f"latents[{j}]")
        for key in ("top", "bands", "influence"):
            for i, d in enumerate(r[key]):
                _check_context(d, where, f"latents[{j}].{key}[{i}]")
