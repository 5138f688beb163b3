"""Speed of the dashboard pass: tokens/s of the activation-only pass and of the pass with influence, against a
plain forward pass of the same tokens (same batches, same threads).

    PYTHONPATH=src python benchmarks/bench_dashboard.py --sae smollm2/topk/L9 --tokens 4096 --threads 2

Each timing includes folding the batch into the dashboard state (``update_state``). The activation-only pass
stops the forward after the SAE's block; the influence pass runs the whole model plus one backward pass from
the next-token log-likelihood. Writes benchmarks/out/bench_dashboard.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from gradsae.saes import DEFAULT_SAE
from _common import REPO, table, write_out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default=DEFAULT_SAE)
    ap.add_argument("--data", default="sample")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from gradsae import load_model
    from gradsae.dashboard import DashboardConfig, DashboardState, batch_evidence, corpus_rows, update_state
    from gradsae.saes import load_sae
    from gradsae.splice import check_compatible

    model, tok = load_model(args.model)
    sae = load_sae(args.sae, dtype="float32")
    layer = check_compatible(model, sae, None)
    cfg = DashboardConfig(sae=args.sae, data=[args.data], max_tokens=args.tokens, context_length=args.context_length)
    rows = list(corpus_rows(cfg, tok, True))
    batches = [
        (
            torch.stack([r for _, r in rows[i : i + args.batch_size]]),
            torch.tensor([j for j, _ in rows[i : i + args.batch_size]]),
        )
        for i in range(0, len(rows), args.batch_size)
    ]
    n_tok = sum(b.numel() for b, _ in batches)

    def plain():
        with torch.no_grad():
            for ids, _ in batches:
                model(input_ids=ids, use_cache=False)

    def dash(influence):
        st = DashboardState.new(sae.d_sae, 8, 1, 5, 15, 5)
        for ids, r in batches:
            ev = batch_evidence(model, sae, layer, ids, r, skip_first=1, influence=influence)
            st = update_state(st, ev, left=10, right=4, seed=0)

    plain()  # warm up
    res = []
    for name, fn in (
        ("plain forward", plain),
        ("dashboard, activations only", lambda: dash(False)),
        ("dashboard with influence", lambda: dash(True)),
    ):
        best = min(_timed(fn) for _ in range(args.repeats))
        res.append({"pass": name, "tokens": n_tok, "seconds": best, "tok/s": n_tok / best})
    for r in res:
        r["x forward time"] = r["seconds"] / res[0]["seconds"]
    print(
        f"{args.model} + {args.sae}, {n_tok} tokens in rows of {args.context_length}, batch {args.batch_size}, "
        f"{args.threads} threads"
    )
    print(table(res, ["pass", "tokens", "seconds", "tok/s", "x forward time"]))
    write_out(REPO / "benchmarks" / "out" / "bench_dashboard.json", {"args": vars(args), "results": res})


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
