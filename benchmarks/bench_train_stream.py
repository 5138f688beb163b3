"""Throughput of `gradsae train` straight from a corpus, beside the cache path and EleutherAI sparsify.

Configuration (the issue's): SmolLM2-135M, layer 9, d_sae 4096, k 32, steps of 8 rows x 128 tokens.
Rows, all in one run so that the ratios are taken under the same machine load:

* the parts: the model pass to block 9 (no gradient; with dL/dx), float32 and bfloat16 autocast; one SAE
  step (TopK, g-SAE) on 8 x 127 real activations;
* the streaming trainer (`gradsae.training.train.run`): TopK only; TopK + g-SAE; a grid of N TopK SAEs;
  g-SAE alone; 1 and 3 E2E SAEs (with their ratio to the g-SAE pass); float32 and bfloat16 model pass.
  tokens/s = model tokens (rows x 128) per second of training, from
  the run's own log (the first shuffle fill included, model loading excluded);
* the cache path: `gradsae cache` of the same tokens, then `gradsae train --cache` (TopK);
* sparsify's Python `Trainer` (eai-sparsify, if installed) on the same model, rows and batch (TopK, Adam).

    python benchmarks/bench_train_stream.py --data PATH/wiki-00.jsonl.gz --steps 32
    python benchmarks/bench_train_stream.py --no-sparsify --grid 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import table
from gradsae.io import write_json

LAYER, D_SAE, K, ROWS, T = 9, 4096, 32, 8, 128


def _per_s(fn, reps: int, tokens: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return tokens * reps / (time.perf_counter() - t)


def bench_parts(model, batches: list[torch.Tensor], reps: int) -> tuple[list[dict], dict]:
    from gradsae import SAE, SAEConfig
    from gradsae.training.grid import SAESpec, local_loss
    from gradsae.capture import capture

    rows, it = [], iter(batches * 100)
    for dtype in ("float32", "bfloat16"):
        for grad in (False, True):
            tps = _per_s(lambda: capture(model, next(it), [LAYER], grad, dtype), reps, ROWS * T)
            rows.append({"what": f"model pass to L{LAYER}{' + dL/dx' if grad else ''} ({dtype})", "tokens_per_s": tps})
    acts, grads = capture(model, batches[0], [LAYER], True)
    x = acts[LAYER][:, 1:].reshape(-1, acts[LAYER].shape[-1])
    g = grads[LAYER][:, 1:].reshape(-1, x.shape[-1])
    x = x * (x.shape[-1] ** 0.5 / x.norm(dim=-1).mean())
    steps = {}
    for arch in ("topk", "gsae"):
        sae = SAE.init_random(SAEConfig(d_in=x.shape[-1], d_sae=D_SAE, architecture=arch, k=K), seed=0)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
        spec = SAESpec(arch, LAYER, arch, K, 0.5, D_SAE, 0)
        dead = torch.zeros(D_SAE, dtype=torch.bool)

        def step():
            opt.zero_grad()
            loss, _ = local_loss(sae, spec, x, g if arch == "gsae" else None, dead, 1.0, 1 / 32, 256)
            loss.backward()
            opt.step()
            sae.set_decoder_norm_to_unit_norm()

        steps[arch] = _per_s(step, reps, ROWS * T)
        rows.append({"what": f"SAE step {arch} (8 x 127 tokens)", "tokens_per_s": steps[arch]})
    return rows, steps


def bench_stream(model_spec: str, data: list[str], steps: int, out: Path, **kw) -> float:
    from gradsae.training.train import TrainConfig, run

    cfg = TrainConfig(
        model=model_spec,
        data=data,
        layers=[LAYER],
        d_sae=[D_SAE],
        k=kw.pop("k", [K]),
        batch_size=ROWS,
        context_length=T,
        max_tokens=steps * ROWS * T,
        out=str(out),
        log_every=steps,
        checkpoint_every=10**9,
        progress=False,
        device="cpu",
        **kw,
    )
    run(cfg)
    import json

    return json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["tokens_per_s"]


def bench_cache(model, tok, data: list[str], steps: int, root: Path) -> tuple[float, float]:
    from gradsae.training.cache import CacheConfig, write_cache
    from gradsae.training.train import TrainConfig, run

    t = time.perf_counter()
    cfg = CacheConfig(
        model="smollm2",
        layers=[LAYER],
        data=data,
        out=str(root / "cache"),
        context_length=T,
        grad=False,
        batch_size=ROWS,
        seqs_per_shard=ROWS * 4,
        max_tokens=(steps + 1) * ROWS * (T - 1),
    )
    write_cache(model, tok, cfg)
    cache_tps = (steps + 1) * ROWS * T / (time.perf_counter() - t)
    tcfg = TrainConfig(
        cache=str(root / "cache"),
        out=str(root / "cache-run"),
        architectures=["topk"],
        k=[K],
        d_sae=[D_SAE],
        batch_tokens=ROWS * (T - 1),
        max_tokens=steps * ROWS * (T - 1),
        holdout_shards=0,
        log_every=steps,
        checkpoint_every=10**9,
        progress=False,
        device="cpu",
    )
    run(tcfg)
    import json

    return cache_tps, json.loads((root / "cache-run" / "train_log.jsonl").read_text().splitlines()[-1])["tokens_per_s"]


def bench_sparsify(model, batches: list[torch.Tensor], root: Path) -> float | None:
    try:
        from sparsify import SaeConfig, Trainer, TrainConfig
    except ImportError:
        return None
    import contextlib
    import io

    def fit(bs):
        cfg = TrainConfig(
            SaeConfig(num_latents=D_SAE, k=K),
            batch_size=ROWS,
            layers=[LAYER],
            optimizer="adam",
            lr=5e-4,
            log_to_wandb=False,
            save_every=10**9,
            save_dir=str(root / "sparsify"),
        )
        ds = [{"input_ids": b[i]} for b in bs for i in range(b.shape[0])]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            tr = Trainer(cfg, ds, model)
            t = time.perf_counter()
            tr.fit()
            return time.perf_counter() - t

    fit(batches[:2])  # warm-up
    dt = fit(batches)
    return len(batches) * ROWS * T / dt


def main(argv=None) -> dict:
    from gradsae import load_model
    from gradsae.training.stream import RowReader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="sample", help="corpus (default: the bundled sample text)")
    ap.add_argument("--steps", type=int, default=32, help="training steps per streaming run")
    ap.add_argument("--reps", type=int, default=5, help="repetitions for the part timings")
    ap.add_argument("--grid", type=int, default=4, help="N of the grid row (N TopK SAEs, k = 32, seeds 0..N-1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-sparsify", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "train_stream.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = a.data.split(",")
    model, tok = load_model("smollm2")
    reader = RowReader(data, "text", tok, T, True)
    batches = [torch.from_numpy(reader.rows(ROWS)) for _ in range(a.steps)]
    rows, sae_steps = bench_parts(model, batches[:4], a.reps)
    root = Path(tempfile.mkdtemp(prefix="bench-train-stream-"))
    runs = {}
    for name, kw in (
        ("stream TopK (float32)", dict(architectures=["topk"], dtype="float32")),
        ("stream TopK (bfloat16)", dict(architectures=["topk"], dtype="bfloat16")),
        ("stream TopK + g-SAE (float32)", dict(architectures=["topk", "gsae"], dtype="float32")),
        ("stream TopK + g-SAE (bfloat16)", dict(architectures=["topk", "gsae"], dtype="bfloat16")),
        (
            f"stream grid of {a.grid} TopK (bfloat16)",
            dict(architectures=["topk"], dtype="bfloat16", seeds=list(range(a.grid))),
        ),
        ("stream g-SAE (bfloat16)", dict(architectures=["gsae"], dtype="bfloat16")),
        ("stream 1 E2E (bfloat16)", dict(architectures=["e2e"], dtype="bfloat16")),
        ("stream 3 E2E (bfloat16)", dict(architectures=["e2e"], dtype="bfloat16", seeds=[0, 1, 2])),
    ):
        runs[name] = bench_stream("smollm2", data, a.steps, root / name.replace(" ", "_"), threads=a.threads, **kw)
        rows.append({"what": name, "tokens_per_s": runs[name]})
    cache_tps, cache_train = bench_cache(model, tok, data, a.steps, root)
    rows.append({"what": "gradsae cache (x only, float32)", "tokens_per_s": cache_tps})
    rows.append({"what": "train TopK from the cache", "tokens_per_s": cache_train})
    sp = None if a.no_sparsify else bench_sparsify(model, batches, root)
    if sp is not None:
        rows.append({"what": "sparsify Trainer TopK (float32)", "tokens_per_s": sp})
    ref = {r["what"]: r["tokens_per_s"] for r in rows}
    model_bf16 = ref[f"model pass to L{LAYER} (bfloat16)"]
    grid_pred = 1 / (1 / model_bf16 + a.grid / sae_steps["topk"])
    ratios = {
        "stream TopK bf16 / sparsify": (runs["stream TopK (bfloat16)"] / sp) if sp else None,
        "stream TopK fp32 / sparsify": (runs["stream TopK (float32)"] / sp) if sp else None,
        "SAE step time g-SAE / TopK": sae_steps["topk"] / sae_steps["gsae"],
        "stream TopK bf16 / (model pass bf16 + 1 SAE step) limit": runs["stream TopK (bfloat16)"]
        / (1 / (1 / model_bf16 + 1 / sae_steps["topk"])),
        f"grid of {a.grid}: measured / (1 model pass + {a.grid} SAE steps)": runs[
            f"stream grid of {a.grid} TopK (bfloat16)"
        ]
        / grid_pred,
        # E2E runs the blocks above the layer and a backward through them per SAE: what 1 and 3 cost against
        # the g-SAE pass (one full forward + backward shared by every g-SAE of a grid)
        "1 E2E / g-SAE (tokens/s)": runs["stream 1 E2E (bfloat16)"] / runs["stream g-SAE (bfloat16)"],
        "3 E2E / g-SAE (tokens/s)": runs["stream 3 E2E (bfloat16)"] / runs["stream g-SAE (bfloat16)"],
        "3 E2E / 1 E2E (tokens/s)": runs["stream 3 E2E (bfloat16)"] / runs["stream 1 E2E (bfloat16)"],
    }
    for r in rows:
        r["vs_sparsify"] = r["tokens_per_s"] / sp if sp else None
    print(table(rows, ["what", "tokens_per_s", "vs_sparsify"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}" if v is not None else f"{k}: n/a")
    result = {
        "config": {**vars(a), "layer": LAYER, "d_sae": D_SAE, "k": K, "rows": ROWS, "context": T},
        "rows": rows,
        "ratios": ratios,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(a.out, result)
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
