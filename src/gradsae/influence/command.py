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

    sae: str = opt(
        DEFAULT_SAE,
        SAE_HELP + "; several, comma-separated (different layers or sites): all spliced with their error terms, "
        "scored from one backward and ranked together",
    )
    prompt: str = opt("", "the prompt (use --input for many)")
    output: str = opt("", "the output to explain; empty = generate it greedily through the splice")
    input: str = opt("", 'JSONL file with {"prompt": ..., "output": ..., "id": ...} per line')
    batch_size: int = opt(
        4,
        "examples per forward+backward; auto (or 0): the most that fit the device memory (estimated)",
        low=0,
        auto=True,
    )
    top: int = opt(10, "latents shown per example")
    max_new_tokens: int = opt(32, "when generating the output")
    out: str = opt("", "write the JSON here (default: print the table only)")
    reliability: bool = opt(
        False,
        "second-order check per example: flag the latents whose first-order change the second-order term moves "
        "by more than --reliability-tolerance (Hessian-vector products, one example at a time)",
    )
    reliability_latents: int = opt(
        16,
        "check the top N latents by |grad x act| exactly (the example as N rows: memory N x T x d_sae); "
        "0: every active latent, estimated from --reliability-samples random-sign products",
        low=0,
    )
    reliability_samples: int = opt(
        16, "random-sign Hessian-vector products per example (--reliability-latents 0)", low=1
    )
    reliability_tolerance: float = opt(0.2, "flag when |second-order term| > this x |first-order change|", low=0)
    verify: str = opt(
        "", "'flagged': ablate the flagged latents exactly and report all three numbers", choices=("", "flagged")
    )


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

    if cfg.top < 1:
        raise GradsaeError(f"--top {cfg.top}: give at least 1")
    if cfg.max_new_tokens < 1:
        raise GradsaeError(f"--max-new-tokens {cfg.max_new_tokens}: give at least 1")
    if cfg.out and (not cfg.out.strip() or Path(cfg.out).is_dir() or cfg.out.endswith(("/", "\\"))):
        raise GradsaeError(f"--out {cfg.out!r} names a folder: give a JSON file name, e.g. --out influence.json")
    exs = load_examples(cfg)
    dash = resolve_dashboard(cfg.dashboard, cfg.sae)
    rt = start(cfg, "influence")
    specs = [s.strip() for s in cfg.sae.split(",") if s.strip()]
    if len(specs) > 1 and (cfg.layer or cfg.dashboard not in ("", "none")):
        raise GradsaeError(
            "with several SAEs, each splices at its own hook and has its own cards: drop --layer / --dashboard"
        )
    model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    if len(specs) > 1:
        return _run_several(
            cfg, [load_sae(s, device=str(next(model.parameters()).device)) for s in specs], exs, rt, model, tok
        )
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
        records.append(r.to_json(top=cfg.top, promoted=promoted))
        if cfg.reliability or cfg.verify:
            records[-1]["reliability"] = check_reliability(cfg, model, tok, sae, r)
        print()
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


def ranked_together(results: list[Influence], top: int) -> list[dict]:
    """The ``top`` latents of one example across several SAEs (``results[j]``: SAE j's), by score."""
    rows = [
        {
            "sae": j,
            "hook": r.meta["layer"],
            "latent": int(c),
            "score": float(r.scores[c]),
            "mean_act": float(r.baseline[c]),
        }
        for j, r in enumerate(results)
        for c in r.top(top)
    ]
    return sorted(rows, key=lambda row: -row["score"])[:top]


def _run_several(cfg: InfluenceConfig, saes: list, exs: list[Example], rt, model, tok) -> list[list[Influence]]:
    """``--sae A,B,...``: every SAE spliced at its own hook, scored from one backward, ranked together."""
    from ..model import model_name

    rt.announce("influence")
    t0 = time.perf_counter()
    per = influence(model, tok, saes, exs, cfg.influence_options(), batch_size=cfg.batch_size)
    elapsed = time.perf_counter() - t0
    records = []
    for i in range(len(exs)):
        rows = ranked_together([per[j][i] for j in range(len(saes))], cfg.top)
        r0 = per[0][i]
        print(
            f"prompt: {r0.prompt[-70:]!r}\noutput: {r0.output!r}   target={r0.meta['target']} ({r0.target_value:.4g})"
        )
        print(f"{'rank':>4}  {'hook':<28}  {'latent':>7}  {'score':>10}  {'mean act':>9}")
        for n, row in enumerate(rows, 1):
            print(f"{n:>4}  {row['hook']:<28}  {row['latent']:>7}  {row['score']:>10.4g}  {row['mean_act']:>9.3f}")
        print()
        records.append(
            {"id": r0.id, "ranking": rows, "per_sae": [per[j][i].to_json(top=cfg.top) for j in range(len(saes))]}
        )
    if cfg.out:
        meta = {
            "config": asdict(cfg),
            "runtime": rt.as_config(),
            "model": model_name(model),
            "saes": [s.describe() for s in saes],
            "seconds": round(elapsed, 3),
        }
        write_json(cfg.out, {"meta": meta, "examples": records})
        print(f"wrote {cfg.out}")
    return per


def check_reliability(cfg: InfluenceConfig, model, tok, sae, r: Influence) -> dict:
    """The second-order check of one example's scores (and, with ``--verify flagged``, exact ablation of the
    flagged latents), printed in one line per flagged latent and returned for the JSON."""
    from .inputs import pack
    from .reliability import exact_changes, reliability

    opts = cfg.influence_options()
    packed = pack(tok, [(r.token_ids[: r.n_prompt], r.token_ids[r.n_prompt :])], sae.W_dec.device)
    kw = dict(target=opts.target, positions=opts.positions, error=opts.error)
    top = r.scores.abs().argsort(descending=True)[: cfg.reliability_latents]
    listed = [int(c) for c in top if r.scores[c] != 0] if cfg.reliability_latents else None
    rel = reliability(
        model,
        sae,
        packed,
        **kw,
        samples=cfg.reliability_samples,
        tolerance=cfg.reliability_tolerance,
        seed=opts.seed,
        latents=listed,
    )
    flagged = rel.flagged.nonzero().flatten().tolist()
    active = len(listed) if listed is not None else int((rel.first != 0).sum())
    exact = exact_changes(model, sae, packed, **kw, latents=flagged).tolist() if cfg.verify == "flagged" else None
    tol = cfg.reliability_tolerance
    what = "checked" if listed is not None else "active"
    print(f"reliability: {len(flagged)} of {active} {what} latents flagged (|second-order| > {tol:g} x |first-order|)")
    rows = []
    for j, c in enumerate(flagged):
        row = {"latent": c, "first_order": float(rel.first[c]), "second_order": float(rel.corrected[c])}
        if exact is not None:
            row["exact"] = exact[j]
        rows.append(row)
        print(
            f"  latent {c}: change first order {row['first_order']:.4g}, second order {row['second_order']:.4g}"
            + (f", exact {row['exact']:.4g}" if exact is not None else "")
        )
    return {
        "checked": "the top latents by |grad x act|, exactly"
        if listed is not None
        else "every active latent, estimated",
        "samples": cfg.reliability_samples if listed is None else None,
        "tolerance": cfg.reliability_tolerance,
        "active": active,
        "flagged": rows,
        "scale": "the target's change when the latent is zeroed at the scored positions",
    }
