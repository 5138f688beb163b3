"""``gradsae explain "<prompt>" [--output "<answer>"]``: the everyday entry point.

Scores every SAE latent by its GradSAE influence on one answer, prints the top latents as a terminal table
(latent, score, mean activation, baseline rank, the tokens its decoder direction promotes), regenerates
the answer with the top-K latents zeroed (GradSAE's and the Baseline's, K from ``--mask-k``), and with
``--html`` writes the report's per-example view (tokens coloured by a chosen latent's per-token influence).

Library: ``explain(model, tok, sae, prompt, output=None, ...) -> (Influence, view)`` where ``view`` is the
dict ``report.render_example`` draws.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .config import opt
from .errors import GradsaeError
from .influence import Example, Influence, influence, promoted_tokens
from .generate import parse_stop
from .influence import InfluenceOptions
from .influence.command import ScoringOptions


@dataclass(kw_only=True)
class ExplainConfig(ScoringOptions, InfluenceOptions):
    """Which SAE latents drive the model's answer to one prompt (GradSAE influence): a table, or an HTML page."""

    prompt: str = opt(help="the prompt (plain text, as the model sees it)", positional=True)
    output: str = opt("", "the answer to explain; empty = the model's own greedy answer through the SAE splice")
    top: int = opt(10, "latents shown (top and bottom)")
    mask_k: list[str] = opt(
        ["1", "10"], "regenerate with the top K latents zeroed for these K (e.g. 1,10,50%%); empty to skip"
    )
    promoted: int = opt(6, "tokens listed per latent (top of W_U · W_dec[c])")
    keep_per_token: int = opt(10, "latents whose per-token influence the HTML page can colour")
    max_new_tokens: int = opt(32, "tokens generated for the answer (and the masked answers)")
    stop: str = opt("\\n", "stop strings, comma-separated ('\\n' = newline); empty = stop at EOS only")
    html: str = opt("", "write the per-example HTML view to this file")
    json: str = opt("", "write the view as JSON to this file")


def mask_answers(
    model,
    tok,
    sae,
    prompt: str,
    sets: dict[str, Sequence[int]],
    *,
    layer=None,
    error="none",
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
) -> tuple[str, dict[str, str]]:
    """The unedited answer and the answer with each latent set zeroed at every position (one batch:
    row 0 unedited, one row per distinct non-empty set). Returns (unedited, {name: answer})."""
    from .squad.phases import Variant, run_variants

    variants = {name: Variant(zero=tuple(sorted(int(c) for c in v))) for name, v in sets.items()}
    run = run_variants(
        model, tok, sae, prompt, variants, layer=layer, error=error, max_new_tokens=max_new_tokens, stop=stop
    )
    return run.control.strip(), {name: t.strip() for name, t in run.texts.items()}


def explain(
    model,
    tok,
    sae,
    prompt: str,
    output: str | None = None,
    opts: InfluenceOptions | None = None,
    *,
    top: int = 10,
    mask_k: Sequence[str | int] = ("1", "10"),
    promoted: int = 6,
    keep_per_token: int = 10,
    layer=None,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    **option_overrides,
) -> tuple[Influence, dict]:
    """Influence of every latent on one answer, plus the answers with the top-K sets zeroed.

    ``opts`` (and keyword overrides of its fields, e.g. ``error="keep"``) say how influence is computed.
    Returns the ``Influence`` and its view: ``Influence.to_json(top, promoted)`` with ``perturb`` =
    ``{"control": {"prediction"}, "cells": {"<method>/top/<K>": {"prediction", "em", "f1", "k"}}}`` (EM/F1
    of each masked answer against the explained output, 0–1) — the format ``report.render_example`` reads.
    """
    import dataclasses

    from .influence import check_k
    from .squad.data import em_f1

    if not prompt or not prompt.strip():
        raise GradsaeError('empty prompt: give the text to explain, e.g. gradsae explain "The capital of France is"')
    if output is not None and not output.strip():
        raise GradsaeError(
            f"--output {output!r} is blank: give the answer to explain, or leave it out to explain "
            "the model's own answer"
        )
    opts = dataclasses.replace((opts or InfluenceOptions()).influence_options(), **option_overrides)
    for k in mask_k:
        check_k(k)  # before any model work
    t0 = time.perf_counter()
    inf = influence(
        model,
        tok,
        sae,
        [Example(prompt, output or None, id="explain")],
        opts,
        layer=layer,
        keep_per_token=keep_per_token,
        max_new_tokens=max_new_tokens,
        stop=stop,
    )[0]
    shown = sorted(
        {int(c) for c in inf.top(top)}
        | {int(c) for c in inf.bottom(top)}
        | {int(c) for c in inf.top(top, baseline=True)}
    )
    view = inf.to_json(top=top, promoted=promoted_tokens(model, tok, sae, shown, n=promoted))
    if mask_k:
        sets = {}
        for k in mask_k:
            for m, base in (("gradsae", False), ("baseline", True)):
                sets[f"{m}/top/{k}"] = [int(c) for c in inf.top(k, baseline=base)]
        unedited, answers = mask_answers(
            model, tok, sae, prompt, sets, layer=layer, error=opts.error, max_new_tokens=max_new_tokens, stop=stop
        )
        cells = {}
        for name, pred in answers.items():
            em, f1 = em_f1(pred, [inf.output]) if inf.output.strip() else (0.0, 0.0)
            cells[name] = {"prediction": pred, "em": em, "f1": round(f1, 6), "k": len(sets[name])}
        view["perturb"] = {"control": {"prediction": unedited}, "cells": cells}
    view["title"] = "Prompt and answer"
    view["meta"]["seconds_explain"] = round(time.perf_counter() - t0, 3)
    return inf, view


def format_masking(view: dict) -> str:
    """Terminal lines: the answer with each top set zeroed."""
    pert = view.get("perturb")
    if not pert:
        return ""
    lines = [f"answer with the top-K latents zeroed at every position (unedited: {pert['control']['prediction']!r}):"]
    for name, c in pert["cells"].items():
        m, _, k = str(name).split("/")
        label = f"{'GradSAE' if m == 'gradsae' else 'Baseline'} top {k} ({c['k']} latents)"
        lines.append(f"  {label:<32} -> {c['prediction']!r}   F1 vs explained output {c['f1']:.2f}")
    return "\n".join(lines)


def run(cfg: ExplainConfig) -> dict:
    from .saes import load_sae
    from .influence.command import format_table
    from .io import atomic_write_text, write_json
    from .model import load_model, model_name
    from .influence import check_k
    from .viz.report import render_example_page

    for flag, v, lo in (
        ("--top", cfg.top, 1),
        ("--max-new-tokens", cfg.max_new_tokens, 1),
        ("--promoted", cfg.promoted, 0),
        ("--keep-per-token", cfg.keep_per_token, 0),
    ):
        if v < lo:
            raise GradsaeError(f"{flag} {v}: give at least {lo}")
    if not cfg.prompt.strip():
        raise GradsaeError('empty prompt: give the text to explain, e.g. gradsae explain "The capital of France is"')
    if cfg.output and not cfg.output.strip():
        raise GradsaeError(
            f"--output {cfg.output!r} is blank: give the answer to explain, or leave it out to "
            "explain the model's own answer"
        )
    for k in cfg.mask_k:
        check_k(k)
    for flag, path in (("--html", cfg.html), ("--json", cfg.json)):
        if path and (not path.strip() or Path(path).is_dir()):
            raise GradsaeError(f"{flag} {path!r} is not a file name: give e.g. {flag} explain.{flag[2:]}")
    from .dashboard import card_data, check_dashboard, resolve_dashboard
    from .viz.dashboard_page import insert_before_body_end, render_cards

    from .options import start

    dash = resolve_dashboard(cfg.dashboard, cfg.sae)  # before the model work: a bad path fails at once
    rt = start(cfg, "explain")
    model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    sae = load_sae(cfg.sae, device=str(next(model.parameters()).device))
    if dash is not None:
        check_dashboard(dash, sae)
    rt.announce("explain")
    inf, view = explain(
        model,
        tok,
        sae,
        cfg.prompt,
        cfg.output or None,
        top=cfg.top,
        mask_k=cfg.mask_k,
        promoted=cfg.promoted,
        keep_per_token=cfg.keep_per_token,
        layer=cfg.layer or None,
        max_new_tokens=cfg.max_new_tokens,
        stop=parse_stop(cfg.stop),
        opts=cfg.influence_options(),
    )
    view["meta"].update(model=model_name(model), sae=cfg.sae, config=asdict(cfg), runtime=rt.as_config())
    promoted = {r["latent"]: r.get("promotes", []) for r in view["top"]}
    if dash is not None:  # each listed latent's dashboard card (HTML and JSON)
        view["cards"] = {str(c): card_data(dash, c) for c in promoted}
    print(format_table(inf, promoted, cfg.top))
    masking = format_masking(view)
    if masking:
        print(masking)
    if cfg.html:
        page = render_example_page(view, title=f"GradSAE explain — {model_name(model)}")
        if dash is not None:
            page = insert_before_body_end(page, render_cards(dash, list(promoted)))
        atomic_write_text(cfg.html, page)
        print(f"wrote {cfg.html}")
    if cfg.json:
        write_json(cfg.json, view)
        print(f"wrote {cfg.json}")
    return view
