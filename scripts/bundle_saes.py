"""Ship trained SAEs inside the package: convert (float16, SAELens layout sae-lens loads), evaluate on held-out
text, and write each folder's card from the numbers just measured and the SAE's own training metadata.

    python scripts/bundle_saes.py --heldout HELDOUT_CACHE \
        --sae smollm2/topk/L14=/path/to/run/L14/topk_k128 --sae smollm2/gsae/L14=/path/to/run/gsae_k32_b0.5

``HELDOUT_CACHE`` is a ``gradsae cache`` folder of text the SAEs never saw, evaluated whole, e.g.

    gradsae cache --data ../shared/data/wikipedia/wiki-04.jsonl.gz --layers 6,14,22 --max-shards 2 --out HELDOUT

Each destination ``src/gradsae/bundled/saes/<name>`` is rebuilt beside the old one and swapped in at the end
(a kill leaves the old folder in place). The eval's full results folder (plots included) goes to ``--eval-root``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "gradsae" / "bundled" / "saes"


def train_command(train_config: dict) -> str:
    """The `gradsae train` command line that reproduces a run: the flags whose values differ from the defaults
    (data paths shown relative to the repository's parent, where ../shared lives)."""
    from gradsae.training.train import TrainConfig

    defaults = TrainConfig()
    parts = ["gradsae train"]
    for f in dataclasses.fields(TrainConfig):
        if (
            f.name
            in (
                "out",
                "cache",
                "threads",
                "device",
                "progress",
                "max_steps",
                "checkpoint_every",
                "log_every",
                "memory_limit_gb",
                "snapshot_tokens",
            )
            or f.name not in train_config
        ):
            continue
        v = train_config[f.name]
        if v == getattr(defaults, f.name):
            continue
        if f.name == "data":
            v = [_rel(p) for p in v]
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif isinstance(v, list):
            parts.append(f"{flag} {','.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def _rel(p: str) -> str:
    path = Path(p)
    try:
        return "../" + path.resolve().relative_to(REPO.parent.resolve()).as_posix()
    except ValueError:
        return p


def card(name: str, meta: dict, cfg, ev: dict, heldout: str, bundle_cmd: str) -> str:
    """The folder's README.md: what the SAE is, how it was made, and its held-out eval."""
    m = ev["eval_result_metrics"]
    tc = meta.get("train_config", {})
    layer = meta.get("layer")
    rows = [
        ("L0", m["sparsity"]["l0"]),
        ("NMSE", m["reconstruction_quality"]["nmse"]),
        ("explained variance", m["reconstruction_quality"]["explained_variance"]),
        ("CE clean", m["model_performance_preservation"]["ce_loss_without_sae"]),
        ("CE with SAE spliced", m["model_performance_preservation"]["ce_loss_with_sae"]),
        ("L_added", m["model_performance_preservation"]["l_added"]),
        ("KL(clean ‖ SAE)", m["model_behavior_preservation"]["kl_div_with_sae"]),
        ("dead fraction (no activation on the held-out tokens)", m["misc"]["dead_frac"]),
        (
            f"dead fraction at the end of training (no activation in the last {meta.get('dead_tokens')} "
            "training tokens)",
            meta.get("dead_frac_train"),
        ),
        ("dead fraction at the end of training (none in 5 consecutive batches)", meta.get("dead_frac_train_5batches")),
        ("decoder max-cosine, mean", m["decoder"]["max_cos_mean"]),
    ]
    by_sel = ev.get("eval_result_metrics_by_selection", {})
    extra = ""
    if "gradient" in by_sel:
        g = by_sel["gradient"]
        extra = (
            f"\nWith the g-SAE's own gradient-aware selection (the model's ∇ₓL at each token): NMSE "
            f"{g['reconstruction_quality']['nmse']:.4f}, L_added "
            f"{g['model_performance_preservation']['l_added']:.4f}, KL "
            f"{g['model_behavior_preservation']['kl_div_with_sae']:.4f}.\n"
        )
    data = ", ".join(_rel(p) for p in tc.get("data", []))
    table = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows)
    return f"""# `{name}`: {cfg.architecture} SAE on SmolLM2-135M-Instruct, layer {layer}

- hook: `{cfg.hook_name}` (residual stream after block {layer} of 30), d_in = {cfg.d_in}, d_sae = {cfg.d_sae},
  k = {cfg.k}, float16, SAELens format (sae-lens `SAE.load_from_disk` runs it; the input scaling
  `norm_scaling_factor` = {cfg.norm_scaling_factor:.5f} is folded into the weights on disk)
- architecture: `{cfg.architecture}`{f" (β = {cfg.beta}, β mode {cfg.beta_mode})" if cfg.architecture == "gsae" else ""}
- trained by the streaming trainer on {meta.get("model_tokens")} model tokens ({meta.get("tokens_seen")} SAE
  training tokens: position 0 of each row left out), {meta.get("train_steps")} steps, seed {meta.get("seed")}
- corpus: {data} (English Wikipedia shards 00–03), rows of {tc.get("context_length")} tokens starting with BOS;
  held out: {heldout}

## How it was made

```
{train_command(tc)} --out RUN
gradsae cache --data ../shared/data/wikipedia/wiki-04.jsonl.gz --layers {layer} --max-shards 2 --out HELDOUT
{bundle_cmd}
#   = gradsae convert RUN/<sae> <this folder> --dtype float16, then
#     gradsae eval --sae <this folder> --cache HELDOUT --holdout-shards 2 (eval.json here), then this card
```

## Eval (`gradsae eval`, {m["misc"]["n_tokens"]} held-out tokens, CE/KL on {m["misc"]["n_seqs_model_metrics"]} sequences; TopK selection unless stated)

| metric | value |
|---|---|
{table}
{extra}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", action="append", required=True, help="NAME=SOURCE (bundled name = trained SAE folder)")
    ap.add_argument("--heldout", required=True, help="`gradsae cache` folder of held-out text")
    ap.add_argument("--holdout-shards", type=int, default=2)
    ap.add_argument("--heldout-label", default="../shared/data/wikipedia/wiki-04.jsonl.gz (first 2 cache shards)")
    ap.add_argument("--eval-root", default=str(Path.home() / ".cache" / "gradsae" / "evals" / "bundled"))
    ap.add_argument("--steer-latents", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from gradsae.demo import ConvertConfig, convert
    from gradsae.saes import load_sae
    from gradsae.io import atomic_write_text
    from gradsae.training.evals import EvalConfig, run as run_eval

    for item in args.sae:
        name, _, src = item.partition("=")
        if not src:
            sys.exit(f"--sae {item!r}: give NAME=SOURCE, e.g. smollm2/topk/L14=/path/to/run/L14/topk_k128")
        dst = BUNDLED / name
        tmp = dst.with_name(dst.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        convert(ConvertConfig(src=src, dst=str(tmp), dtype="float16"))
        # provenance paths relative to the repository's parent (../shared/...), not this machine's
        cfg_json = tmp / "cfg.json"
        atomic_write_text(cfg_json, cfg_json.read_text().replace(str(REPO.parent.resolve()) + "/", "../"))
        ev_out = Path(args.eval_root) / name.replace("/", "-")
        ev = run_eval(
            EvalConfig(
                sae=str(tmp),
                cache=args.heldout,
                holdout_shards=args.holdout_shards,
                out=str(ev_out),
                steer_latents=args.steer_latents,
                threads=args.threads,
            )
        )
        ev["sae_name"] = ev["eval_config"]["sae"] = name
        atomic_write_text(tmp / "eval.json", json.dumps(ev, indent=1))
        sae = load_sae(tmp)
        cmd = f"python scripts/bundle_saes.py --heldout HELDOUT --sae {name}=RUN/<sae>"
        atomic_write_text(tmp / "README.md", card(name, sae.cfg.metadata or {}, sae.cfg, ev, args.heldout_label, cmd))
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
        print(
            f"{name}: NMSE {ev['eval_result_metrics']['reconstruction_quality']['nmse']:.4f}, L_added "
            f"{ev['eval_result_metrics']['model_performance_preservation']['l_added']:.4f} -> {dst}",
            flush=True,
        )


if __name__ == "__main__":
    main()
