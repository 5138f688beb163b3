"""Speed of the training side, as ratios measured within one run.

1. Caching: tokens/s of a plain forward pass vs `gradsae cache`'s batch step with activations only
   (forward stopped after the layer) and with dL/dx (forward + backward through the upper layers).
2. Training: tokens/s of one optimisation step for TopK vs g-SAE (same d_sae, k, batches from the same
   cache), with the sparse decoder (embedding-bag over the K active rows) vs the dense C-wide product.

    python benchmarks/bench_train_speed.py                 # SmolLM2, layer 9, real cache if present
    python benchmarks/bench_train_speed.py --synthetic     # training part on random data only (no model)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gradsae.io import write_json


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_cache(model_spec: str, layer: int, n_seq: int, T: int, reps: int) -> list[dict]:
    from gradsae import load_model
    from gradsae.training.cache import compute_batch

    model, tok = load_model(model_spec)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, tok.vocab_size - 1, (n_seq, T), generator=g)
    attn = torch.ones_like(ids)

    def plain():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=attn)

    rows = []
    base = _time(plain, reps)
    for name, fn in (
        ("plain forward", plain),
        ("cache x only", lambda: compute_batch(model, ids, [layer], False, 1)),
        ("cache x + dL/dx", lambda: compute_batch(model, ids, [layer], True, 1)),
    ):
        t = base if name == "plain forward" else _time(fn, reps)
        rows.append({"what": name, "tokens_per_s": ids.numel() / t, "time_vs_plain_forward": t / base})
    return rows


def bench_train(x: torch.Tensor, g: torch.Tensor, d_sae: int, k: int, batch: int, steps: int) -> list[dict]:
    from gradsae import SAE, SAEConfig
    from gradsae.training.grid import SAESpec, local_loss

    D = x.shape[1]
    rows = []
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, x.shape[0], (batch,), generator=gen) for _ in range(steps + 1)]
    for decoder in ("sparse", "dense"):
        for arch in ("topk", "gsae"):
            spec = SAESpec(arch, 0, arch, k, 1.0, d_sae, 0)
            sae = SAE.init_random(SAEConfig(d_in=D, d_sae=d_sae, architecture=arch, k=k), seed=0)
            dead = torch.zeros(d_sae, dtype=torch.bool)
            it = iter(batches)

            def step():
                i = next(it)
                for p in sae.parameters():
                    p.grad = None
                loss, _ = local_loss(
                    sae, spec, x[i].float(), g[i] if arch == "gsae" else None, dead, 1.0, 1 / 32, 256, decoder
                )
                loss.backward()

            t = _time(step, steps)
            rows.append({"what": f"train {arch} ({decoder} decoder)", "tokens_per_s": batch / t})
    ref = rows[0]["tokens_per_s"]
    for r in rows:
        r["time_vs_topk_sparse"] = ref / r["tokens_per_s"]
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--cache", default="", help="activation cache for the training part (default: gradsae's)")
    ap.add_argument("--synthetic", action="store_true", help="random x and dL/dx for the training part; no model")
    ap.add_argument("--n-seq", type=int, default=8)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "train_speed.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    if not a.synthetic:
        rows += bench_cache(a.model, a.layer, a.n_seq, a.context_length, a.reps)
    if a.synthetic:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(20000, 576, generator=gen).half()
        g = torch.randn(20000, 576, generator=gen) * 1e-3
        source = "synthetic"
    else:
        from gradsae.training.cache import ActivationCache, default_cache

        cache = ActivationCache(a.cache or default_cache())
        x, g = cache.load(a.layer, list(range(min(3, len(cache.shards)))), grads=True)
        source = str(cache.path)
    rows += bench_train(x, g, a.d_sae, a.k, a.batch_size, a.steps)
    print(f"{'what':<34} {'tokens/s':>10} {'relative time':>14}")
    for r in rows:
        rel = r.get("time_vs_plain_forward", r.get("time_vs_topk_sparse"))
        print(f"{r['what']:<34} {r['tokens_per_s']:10.0f} {rel:14.2f}")
    result = {
        "config": vars(a),
        "train_data": source,
        "rows": rows,
        "note": "relative time: cache rows vs the plain forward; train rows vs TopK with the sparse decoder",
    }
    write_json(a.out, result)
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
