"""Speed of GradSAE scoring.

1. grad × act scoring of a batch vs a plain forward+backward of the same batch (gradient of the same
   target w.r.t. the residual stream at the SAE's layer, no SAE): goal ≤ 1.15×.
2. grad × act vs exact ablation of every active latent on the same examples.

Times are medians of --repeats runs, reported as ratios measured in the same process.

    python benchmarks/bench_influence_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import qa_examples, short_prompt, table, write_out

from gradsae.saes import DEFAULT_SAE
from gradsae import ResidualCapture, load_model, load_sae
from gradsae.influence import Example, influence
from gradsae.influence.inputs import forward_target, join_ids, pack


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default=DEFAULT_SAE)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--exact-examples", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out/influence_speed.json")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    sae = load_sae(args.sae)
    exs = [Example(short_prompt(e), e["answers"][0], id=e["id"]) for e in qa_examples(n=args.batch, seed=1)]
    packed = pack(tok, [join_ids(tok, e.prompt, e.output) for e in exs], "cpu")
    tokens = int(packed.mask.sum())

    def plain():
        with ResidualCapture(model, [sae.layer], grad=True) as cap:
            with torch.enable_grad():
                forward_target(model, packed, "logprob").sum().backward()
        return cap.grads

    def scored():
        return influence(model, tok, sae, exs, batch_size=args.batch)

    plain()  # warm-up
    scored()
    t_plain, t_grad = timed(plain, args.repeats), timed(scored, args.repeats)
    rows = [
        {"what": "plain forward+backward", "seconds": t_plain, "tokens/s": tokens / t_plain, "ratio": 1.0},
        {"what": "GradSAE grad x act", "seconds": t_grad, "tokens/s": tokens / t_grad, "ratio": t_grad / t_plain},
    ]
    print(f"batch of {args.batch} examples, {tokens} tokens, layer {sae.layer}")
    print(table(rows, ["what", "seconds", "tokens/s", "ratio"]))

    sub = exs[: args.exact_examples]
    t_g = timed(lambda: influence(model, tok, sae, sub, batch_size=1), 1)
    t0 = time.perf_counter()
    ex = influence(model, tok, sae, sub, method="exact", exact_batch=32)
    t_e = time.perf_counter() - t0
    n_lat = sum(r.meta["exact_latents_ablated"] for r in ex)
    rows2 = [
        {"method": "grad x act", "seconds": t_g, "latents scored": sae.d_sae * len(sub)},
        {"method": "exact ablation", "seconds": t_e, "latents scored": n_lat},
    ]
    print(f"\n{len(sub)} examples: exact ablation of every active latent vs one backward")
    print(table(rows2, ["method", "seconds", "latents scored"]))
    print(f"grad x act is {t_e / t_g:.0f}x faster than exact ablation")
    write_out(
        args.out,
        {
            "args": vars(args),
            "tokens": tokens,
            "forward_backward": rows,
            "exact": rows2,
            "grad_vs_plain_ratio": t_grad / t_plain,
            "exact_vs_grad_speedup": t_e / t_g,
        },
    )


if __name__ == "__main__":
    main()
