"""``gradsae influence``: GradSAE scores for one or many (prompt, output) pairs, as JSON and a table."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import opt
from ..errors import GradsaeError
from .inputs import promoted_tokens
from .methods import influence
from .options import InfluenceOptions
from .records import Example, Influence
from ..io import json_lines, read_text_file, write_json
from ..options import SAE_HELP, ModelOptions, start

from ..saes import DEFAULT_SAE


@dataclass(kw_only=True)
class ScoringOptions(ModelOptions):
    """The model and SAE a scoring command loads (``gradsae influence`` and ``gradsae explain``)."""

    sae: str = opt(DEFAULT_SAE, SAE_HELP)
    layer: str = opt("", "block index or hook name; default: the SAE's own hook")
    dashboard: str = opt(
        "", "dashboard.json with latent cards (default: the one next to a bundled SAE, if any; 'none' = no cards)"
    )


@dataclass(kw_only=True)
class InfluenceConfig(ScoringOptions, InfluenceOptions):
    """Rank every SAE latent by its influence on the model's output (GradSAE, Shu et al. 2025)."""

    prompt: str = opt("", "the prompt (use --input for many)")
    output: str = opt("", "the output to explain; empty = generate it greedily through the splice")
    input: str = opt("", 'JSONL file with {"prompt": ..., "output": ..., "id": ...} per line')
    batch_size: int = opt(4, "examples per forward+backward")
    top: int = opt(10, "latents shown per example")
    max_new_tokens: int = opt(32, "when generating the output")
    out: str = opt("", "write the JSON here (default: print the table only)")


def load_examples(cfg: InfluenceConfig) -> list[Example]:
    exs = [Example(cfg.prompt, cfg.output or None, id="0")] if cfg.prompt else []
    if cfg.input:
        path = Path(cfg.input)
        if not path.exists():
            raise GradsaeError(f'no input file at {path}: give a JSONL file with one {{"prompt": ...}} per line')
        for n, rec in json_lines(read_text_file(path).splitlines(), path, "one object per line"):
            if not isinstance(rec, dict) or "prompt" not in rec:
                raise GradsaeError(f'line {n} of {path} has no "prompt" field')
            for key in ("prompt", "output"):
                if rec.get(key) is not None and not isinstance(rec[key], str):
                    raise GradsaeError(f'line {n} of {path}: "{key}" is a {type(rec[key]).__name__}, not text')
            exs.append(Example(rec["prompt"], rec.get("output"), id=str(rec.get("id", len(exs)))))
    if not exs:
        raise GradsaeError('nothing to score: give --prompt "..." or --input file.jsonl')
    return exs


def format_table(res: Influence, promoted: dict[int, list[str]], top: int) -> str:
    """A terminal table of the top latents of one example."""
    rank = res.baseline_rank()
    lines = [
        f"prompt: …{res.prompt[-70:]!r}" if len(res.prompt) > 70 else f"prompt: {res.prompt!r}",
        f"output: {res.output!r}   target={res.meta['target']} ({res.target_value:.4g})   "
        f"active at last prompt token: {res.n_active_last}",
        f"{'rank':>4}  {'latent':>7}  {'score':>10}  {'mean act':>9}  {'base rank':>9}  promotes",
    ]
    for i, c in enumerate(res.top(top), 1):
        c = int(c)
        toks = " ".join(repr(t)[1:-1] for t in promoted.get(c, [])[:6])
        lines.append(
            f"{i:>4}  {c:>7}  {float(res.scores[c]):>10.4g}  {float(res.baseline[c]):>9.3f}  {int(rank[c]):>9}  {toks}"
        )
    return "\n".join(lines)


def run(cfg: InfluenceConfig) -> list[Influence]:
    from ..saes import load_sae
    from ..model import load_model, model_name

    from ..dashboard import card_data, check_dashboard, resolve_dashboard

    if cfg.batch_size < 1:
        raise GradsaeError(f"--batch-size {cfg.batch_size}: give at least 1")
    if cfg.top < 1:
        raise GradsaeError(f"--top {cfg.top}: give at least 1")
    if cfg.max_new_tokens < 1:
        raise GradsaeError(f"--max-new-tokens {cfg.max_new_tokens}: give at least 1")
    if cfg.out and (not cfg.out.strip() or Path(cfg.out).is_dir() or cfg.out.endswith(("/", "\\"))):
        raise GradsaeError(f"--out {cfg.out!r} names a folder: give a JSON file name, e.g. --out influence.json")
    exs = load_examples(cfg)
    dash = resolve_dashboard(cfg.dashboard, cfg.sae)
    rt = start(cfg, "influence")
    model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    sae = load_sae(cfg.sae, device=str(next(model.parameters()).device))
    if dash is not None:
        check_dashboard(dash, sae)
    rt.announce("influence")
    layer = cfg.layer or None
    t0 = time.perf_counter()
    results = influence(
        model,
        tok,
        sae,
        exs,
        cfg.influence_options(),
        layer=layer,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
    )
    elapsed = time.perf_counter() - t0
    records = []
    for r in results:
        latents = sorted({int(c) for c in r.top(cfg.top)} | {int(c) for c in r.bottom(cfg.top)})
        promoted = promoted_tokens(model, tok, sae, latents)
        print(format_table(r, promoted, cfg.top))
        print()
        records.append(r.to_json(top=cfg.top, promoted=promoted))
        if dash is not None:  # each listed latent's compact dashboard card
            records[-1]["cards"] = {str(c): card_data(dash, c) for c in latents}
    if cfg.out:
        meta = {
            "config": asdict(cfg),
            "runtime": rt.as_config(),
            "model": model_name(model),
            "sae": sae.describe(),
            "seconds": round(elapsed, 3),
        }
        write_json(cfg.out, {"meta": meta, "examples": records})
        print(f"wrote {cfg.out}")
    return results
