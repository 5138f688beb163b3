"""``gradsae influence``: GradSAE scores for one or many (prompt, output) pairs, as JSON and a table."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import opt
from .errors import GradsaeError
from .influence import AGGREGATIONS, METHODS, POSITIONS, TARGETS, Example, Influence, influence, promoted_tokens
from .io import write_json

DEFAULT_SAE = "smollm2/topk/L9"


@dataclass(kw_only=True)
class ScoringOptions:
    """Model, SAE and scoring options shared by ``gradsae influence`` and ``gradsae explain``."""

    model: str = opt("smollm2", "model: 'smollm2', a local folder, a .gguf file or a hub id")
    sae: str = opt(DEFAULT_SAE, "SAE folder/file, bundled name or saelens:<release>/<id>")
    layer: str = opt("", "block index or hook name; default: the SAE's own hook")
    device: str = opt("cpu", "cpu, cuda, cuda:N or auto")
    dtype: str = opt("float32", "model dtype: float32, bfloat16, float16")
    target: str = opt("logprob", "what p(Y|H) means", choices=TARGETS)
    aggregation: str = opt("relu-mean", "how per-token scores become one per latent", choices=AGGREGATIONS)
    positions: str = opt("all", "positions averaged over", choices=POSITIONS)
    method: str = opt("grad", "grad (grad x act), exact (ablation) or ig (integrated gradients)", choices=METHODS)
    error: str = opt("none", "splice error term: none (paper: the model sees the reconstruction) or keep",
                     choices=("none", "keep"))
    ig_steps: int = opt(16, "integrated-gradient steps")
    exact_latents: int = opt(0, "exact: ablate only the top-N by |grad|, top-N by activation and N random "
                                "active latents (0 = every active latent)")
    seed: int = opt(0, "seed (random candidates for --method exact)")
    dashboard: str = opt("", "dashboard.json with latent cards (default: the one next to a bundled SAE, if any; "
                             "'none' = no cards)")


@dataclass(kw_only=True)
class InfluenceConfig(ScoringOptions):
    """Rank every SAE latent by its influence on the model's output (GradSAE, Shu et al. 2025)."""

    prompt: str = opt("", "the prompt (use --input for many)")
    output: str = opt("", "the output to explain; empty = generate it greedily through the splice")
    input: str = opt("", "JSONL file with {\"prompt\": ..., \"output\": ..., \"id\": ...} per line")
    batch_size: int = opt(4, "examples per forward+backward")
    top: int = opt(10, "latents shown per example")
    max_new_tokens: int = opt(32, "when generating the output")
    out: str = opt("", "write the JSON here (default: print the table only)")


def load_examples(cfg: InfluenceConfig) -> list[Example]:
    exs = [Example(cfg.prompt, cfg.output or None, id="0")] if cfg.prompt else []
    if cfg.input:
        path = Path(cfg.input)
        if not path.exists():
            raise GradsaeError(f"no input file at {path}: give a JSONL file with one {{\"prompt\": ...}} per line")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise GradsaeError(f"malformed JSON on line {n} of {path} ({e.msg}): one object per line") from None
            if "prompt" not in rec:
                raise GradsaeError(f"line {n} of {path} has no \"prompt\" field")
            exs.append(Example(rec["prompt"], rec.get("output"), id=str(rec.get("id", len(exs)))))
    if not exs:
        raise GradsaeError("nothing to score: give --prompt \"...\" or --input file.jsonl")
    return exs


def format_table(res: Influence, promoted: dict[int, list[str]], top: int) -> str:
    """A terminal table of the top latents of one example."""
    rank = res.baseline_rank()
    lines = [f"prompt: …{res.prompt[-70:]!r}" if len(res.prompt) > 70 else f"prompt: {res.prompt!r}",
             f"output: {res.output!r}   target={res.meta['target']} ({res.target_value:.4g})   "
             f"active at last prompt token: {res.n_active_last}",
             f"{'rank':>4}  {'latent':>7}  {'score':>10}  {'mean act':>9}  {'base rank':>9}  promotes"]
    for i, c in enumerate(res.top(top), 1):
        c = int(c)
        toks = " ".join(repr(t)[1:-1] for t in promoted.get(c, [])[:6])
        lines.append(f"{i:>4}  {c:>7}  {float(res.scores[c]):>10.4g}  {float(res.baseline[c]):>9.3f}  "
                     f"{int(rank[c]):>9}  {toks}")
    return "\n".join(lines)


def run(cfg: InfluenceConfig) -> list[Influence]:
    from .formats import load_sae
    from .model import load_model, model_name

    from .dashboard import card_data, resolve_dashboard

    exs = load_examples(cfg)
    dash = resolve_dashboard(cfg.dashboard, cfg.sae)
    model, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    sae = load_sae(cfg.sae, device=cfg.device)
    layer = cfg.layer or None
    t0 = time.perf_counter()
    results = influence(model, tok, sae, exs, layer=layer, target=cfg.target, aggregation=cfg.aggregation,
                        positions=cfg.positions, method=cfg.method, error=cfg.error, batch_size=cfg.batch_size,
                        ig_steps=cfg.ig_steps, exact_latents=cfg.exact_latents or None,
                        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
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
        meta = {"config": asdict(cfg), "model": model_name(model), "sae": sae.describe(),
                "seconds": round(elapsed, 3)}
        write_json(cfg.out, {"meta": meta, "examples": records})
        print(f"wrote {cfg.out}")
    return results
