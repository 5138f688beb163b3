"""Does the SAE reconstruct late positions as well as early ones?

The bundled SAEs were trained on 128-token rows (first position left out), while the few-shot SQuAD prompts
are 400–600 tokens. This measures, on those prompts, the SAE's NMSE ‖x − x̂‖² / ‖x‖² and the residual norm
‖x‖ per position bucket, and what splicing the reconstruction (``--error none``) does to the model's next-token
loss on the prompt, per bucket (CE with the SAE spliced minus clean CE).

    python benchmarks/bench_sae_by_position.py [--n 8] [--sae smollm2/topk/L9]
"""

from __future__ import annotations

import argparse

import torch

from _common import DEV, table, write_out

from gradsae.saes import DEFAULT_SAE
from gradsae import ResidualCapture, Splice, encode_prompts, load_model, load_sae
from gradsae.squad import data as sq
from gradsae.squad.config import PerturbConfig
from gradsae.squad.run import make_prompt_builder

BUCKETS = ((1, 32), (32, 128), (128, 256), (256, 384), (384, 512), (512, 10_000))


def token_ce(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position [T-1] of one row."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default=DEFAULT_SAE)
    ap.add_argument("--data", default=str(DEV), help="SQuAD JSON (default: the shared dev subset)")
    ap.add_argument("--n", type=int, default=8, help="few-shot SQuAD prompts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/sae_by_position.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    sae = load_sae(args.sae)
    qas = sq.load_questions(args.data, limit=args.n)
    builder = make_prompt_builder(
        PerturbConfig(data=args.data, fewshot_data=str(DEV.parent / "train-v1.1-notre-dame.json")), tok, qas
    )
    err = {b: [] for b in BUCKETS}
    norm = {b: [] for b in BUCKETS}
    dce = {b: [] for b in BUCKETS}
    ce0 = {b: [] for b in BUCKETS}
    lengths = []
    for q in qas:
        ids = encode_prompts(tok, [builder(q.context, q.question)]).input_ids
        T = ids.shape[1]
        lengths.append(T)
        with ResidualCapture(model, [sae.cfg.hook_name], stop=True) as cap:
            cap.run(input_ids=ids)
        x = next(iter(cap.acts.values()))[0].float()  # [T, D]
        with torch.no_grad():
            x_hat = sae.decode(sae.encode(x))
        nmse = ((x - x_hat) ** 2).sum(-1) / (x**2).sum(-1).clamp_min(1e-12)  # [T]
        clean = token_ce(model, ids)
        with Splice(model, sae, error="none"):
            spliced = token_ce(model, ids)
        for lo, hi in BUCKETS:
            if lo < T:
                sl = slice(lo, min(hi, T))
                err[(lo, hi)] += nmse[sl].tolist()
                norm[(lo, hi)] += x[sl].norm(dim=-1).tolist()
                # CE at position t predicts token t+1: positions lo..hi-1 -> entries lo..hi-1 of [T-1]
                cl = slice(lo, min(hi, T - 1))
                dce[(lo, hi)] += (spliced[cl] - clean[cl]).tolist()
                ce0[(lo, hi)] += clean[cl].tolist()
    rows = []
    for b in BUCKETS:
        if err[b]:
            rows.append(
                {
                    "positions": f"{b[0]}–{min(b[1], max(lengths)) - 1}",
                    "tokens": len(err[b]),
                    "median NMSE": float(torch.tensor(err[b]).median()),
                    "mean NMSE": float(torch.tensor(err[b]).mean()),
                    "mean |x|": float(torch.tensor(norm[b]).mean()),
                    "mean CE clean": float(torch.tensor(ce0[b]).mean()) if ce0[b] else None,
                    "mean ΔCE (error none)": float(torch.tensor(dce[b]).mean()) if dce[b] else None,
                }
            )
    print(f"{len(qas)} few-shot prompts of {min(lengths)}–{max(lengths)} tokens, {args.sae}")
    print(
        table(
            rows,
            ["positions", "tokens", "median NMSE", "mean NMSE", "mean |x|", "mean CE clean", "mean ΔCE (error none)"],
        )
    )
    write_out(args.out, {"args": vars(args), "prompt_lengths": lengths, "rows": rows})


if __name__ == "__main__":
    main()
