"""What a bfloat16 model pass (``gradsae train --dtype bfloat16``) changes, on SmolLM2 layer 9.

1. Inputs to the SAEs: relative error of x and cosine of dL/dx captured under bfloat16 autocast vs float32,
   on the same rows.
2. The trained SAEs: TopK (d_sae 4096, k 32) trained for --steps steps of 8 x 128 tokens with each dtype
   (same seed, same rows), then NMSE and L_added on held-out rows captured in float32.

    python benchmarks/bench_bf16.py --data TRAIN.jsonl.gz --heldout HELDOUT.jsonl.gz --steps 32
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import table
from gradsae.io import write_json

LAYER, T, ROWS = 9, 128, 8


def main(argv=None) -> dict:
    from gradsae import load_model, load_sae
    from gradsae.training.evals import activation_metrics, model_metrics
    from gradsae.capture import capture
    from gradsae.training.stream import RowReader
    from gradsae.training.train import TrainConfig, run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="sample")
    ap.add_argument("--heldout", default="sample")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--eval-rows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "bf16.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok = load_model("smollm2")
    held = torch.from_numpy(RowReader(a.heldout.split(","), "text", tok, T, True).rows(a.eval_rows))

    fid = []
    for i in range(0, a.eval_rows, ROWS):
        ids = held[i : i + ROWS]
        x32, g32 = capture(model, ids, [LAYER], True, "float32")
        x16, g16 = capture(model, ids, [LAYER], True, "bfloat16")
        x32, x16 = x32[LAYER][:, 1:], x16[LAYER][:, 1:]
        g32, g16 = g32[LAYER][:, 1:].flatten(0, 1), g16[LAYER][:, 1:].flatten(0, 1)
        fid.append(((x16 - x32).norm() / x32.norm()).item())
        fid.append(torch.nn.functional.cosine_similarity(g16, g32, dim=-1).mean().item())
    inputs = {"x_rel_error": sum(fid[0::2]) / len(fid[0::2]), "grad_cosine_per_token": sum(fid[1::2]) / len(fid[1::2])}

    x_eval = capture(model, held, [LAYER], False)[0][LAYER][:, 1:].flatten(0, 1)
    root = Path(tempfile.mkdtemp(prefix="bench-bf16-"))
    rows = []
    for dtype in ("float32", "bfloat16"):
        out = run(
            TrainConfig(
                data=a.data.split(","),
                layers=[LAYER],
                architectures=["topk"],
                k=[32],
                d_sae=[4096],
                batch_size=ROWS,
                context_length=T,
                max_tokens=a.steps * ROWS * T,
                dtype=dtype,
                out=str(root / dtype),
                log_every=a.steps,
                progress=False,
                device="cpu",
                threads=a.threads,
                warmup_steps=5,
            )
        )
        sae = load_sae(out / "topk_k32")
        m, _ = activation_metrics(sae, x_eval, None)
        mm = model_metrics(model, sae, held, None, 1, ROWS)
        import json

        tps = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["tokens_per_s"]
        rows.append(
            {
                "model pass": dtype,
                "train tokens/s": tps,
                "NMSE": m["reconstruction_quality"]["nmse"],
                "L_added": mm["model_performance_preservation"]["l_added"],
                "KL": mm["model_behavior_preservation"]["kl_div_with_sae"],
            }
        )
    print(
        f"inputs under bfloat16 vs float32: |x16 - x32| / |x32| = {inputs['x_rel_error']:.4f}, "
        f"mean per-token cosine of dL/dx = {inputs['grad_cosine_per_token']:.4f}"
    )
    print(table(rows, ["model pass", "train tokens/s", "NMSE", "L_added", "KL"]))
    res = {"config": vars(a), "inputs": inputs, "rows": rows}
    write_json(a.out, res)
    print(f"-> {a.out}")
    return res


if __name__ == "__main__":
    main()
