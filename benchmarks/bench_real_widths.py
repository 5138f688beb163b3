"""Peak memory and time per command at the real widths of Gemma-2-9B and Llama-3-8B, on this CPU.

Randomly initialised models of the real architectures at their real hidden sizes with a few blocks (bfloat16),
with a random 131,072-latent JumpReLU SAE (Gemma-2-9B, d_model 3584) and a random 65,536-latent TopK SAE
(Llama-3-8B, d_model 4096), both float32 as Gemma Scope publishes them. Each measurement is its own process:
load the model and SAE, reset the peak resident memory (/proc/self/clear_refs), run one command's work through
gradsae's own functions, and read the peak (VmHWM) above the memory held before the work began.

Measured: GradSAE influence (grad), exact ablation on a few latents, explain, one perturbation batch, one
steering batch, a dashboard over 2,048 tokens (activation and influence rows), and a few training steps.
The memory of each pass kind (gradsae/memory.py) is fitted by non-negative least squares on the "fit" points;
the estimator is then checked against every command's measured peak on the "check" points (other batch sizes,
lengths and layers). ``--write-fit`` writes the coefficients to src/gradsae/memory_fit.json, which the
commands read. The table "Gemma-2-9B + 131k SAE on an 80 GB GPU" is computed from the fitted formula.

    python benchmarks/bench_real_widths.py --write-fit            # ~20 min on 2 cores, ~14 GB of RAM
    python benchmarks/bench_real_widths.py --tiny                 # the same at toy widths (seconds; the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np

from _common import REPO, table, write_out

sys.path.insert(0, str(REPO / "tests"))

ARCHS = {
    # the real widths; `blocks` is what the benchmark builds, `real_blocks` the full model
    "gemma2-9b": dict(
        config="Gemma2Config",
        hidden_size=3584,
        intermediate_size=14336,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        vocab_size=256000,
        query_pre_attn_scalar=256,
        real_blocks=42,
        sae=("jumprelu", 131072, None),
    ),
    "llama3-8b": dict(
        config="LlamaConfig",
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        real_blocks=32,
        sae=("topk", 65536, 64),
    ),
    # every block of a small model, in float32 as it runs by default, at prompts up to 1,024 tokens: the per-block
    # terms (activations kept for the backward, attention) cannot be told apart on four blocks
    "smollm2-135m": dict(
        config="LlamaConfig",
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
        real_blocks=30,
        blocks=30,
        dtype="float32",
        sae=("topk", 16384, 64),
    ),
}
TINY = {
    "gemma2-9b": dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      vocab_size=512, query_pre_attn_scalar=16, sae=("jumprelu", 512, None)),
    "llama3-8b": dict(hidden_size=64, intermediate_size=224, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      vocab_size=384, sae=("topk", 256, 16)),
    "smollm2-135m": dict(hidden_size=48, intermediate_size=128, num_attention_heads=3, num_key_value_heads=1,
                         head_dim=16, vocab_size=320, blocks=6, sae=("topk", 192, 8)),
}  # fmt: skip
BLOCKS = 4  # blocks built unless the arch names its own
NEW = 8  # tokens generated per answer
OUTPUTS = 8  # scored output tokens per influence example

# (split, command, arch, rows, tokens, layer): fit points teach the formula, check points test it
POINTS = [
    *(
        (split, cmd, arch, b, t, layer)
        for arch in ("gemma2-9b", "llama3-8b")
        for split, cmd, b, t, layer in [
            ("fit", "influence", 1, 256, 0),
            ("fit", "influence", 4, 128, 0),
            ("fit", "influence", 2, 128, 2),
            ("fit", "influence", 1, 512, 2),
            ("fit", "exact", 8, 128, 0),
            ("fit", "exact", 16, 64, 0),
            ("fit", "exact", 4, 256, 0),
            ("fit", "exact", 4, 64, 0),
            ("fit", "perturb", 8, 128, 0),
            ("fit", "perturb", 16, 64, 0),
            ("fit", "perturb", 4, 256, 0),
            ("fit", "perturb", 4, 64, 0),
            ("fit", "perturb", 2, 128, 0),
            ("fit", "dashboard", 2, 256, 0),  # every position's logits: the grad pass's logits term
            ("check", "influence", 2, 192, 1),
            ("check", "exact", 12, 96, 0),
            ("check", "perturb", 12, 96, 0),
            ("check", "steer", 6, 128, 0),
            ("check", "explain", 3, 200, 1),
            ("check", "dashboard", 4, 128, 1),
        ]
    ),
    ("check", "train", "llama3-8b", 8, 128, 1),
    *(
        (split, cmd, "smollm2-135m", b, t, layer)
        for split, cmd, b, t, layer in [
            ("fit", "influence", 1, 1024, 0),
            ("fit", "influence", 2, 512, 0),
            ("fit", "influence", 4, 256, 0),
            ("fit", "influence", 1, 512, 15),
            ("fit", "exact", 4, 512, 0),
            ("fit", "perturb", 4, 512, 0),
            ("check", "influence", 4, 600, 0),  # the SQuAD few-shot answer phase's scoring pass
            ("check", "influence", 2, 768, 10),
            ("check", "perturb", 8, 600, 0),
        ]
    ),
]


def hwm_bytes() -> int:
    return _status("VmHWM")


def rss_bytes() -> int:
    return _status("VmRSS")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---------------------------------------------------------------------------------------------
# Preparation: the random models and SAEs, saved once
# ---------------------------------------------------------------------------------------------


def prepare(work: Path, tiny: bool) -> None:
    import torch
    import transformers
    from conftest import byte_tokenizer

    from gradsae.saes.sae import SAE, SAEConfig

    for name, spec in ARCHS.items():
        spec = {**spec, **(TINY[name] if tiny else {})}
        folder = work / name
        if (folder / "done").exists():
            continue
        blocks = spec.get("blocks", BLOCKS)
        print(f"building {name} ({blocks} blocks, d_model {spec['hidden_size']})", file=sys.stderr, flush=True)
        skip = ("config", "real_blocks", "blocks", "dtype", "sae")
        kw = {k: v for k, v in spec.items() if k not in skip}
        cfg = getattr(transformers, spec["config"])(
            **kw, num_hidden_layers=blocks, bos_token_id=256, eos_token_id=257, pad_token_id=258
        )
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, spec.get("dtype", "bfloat16")))
        model.save_pretrained(folder / "model")
        byte_tokenizer().save_pretrained(folder / "model")
        del model
        arch, C, k = spec["sae"]
        D = spec["hidden_size"]
        sae = SAE.init_random(SAEConfig(d_in=D, d_sae=C, architecture=arch, k=k, hook_name="blocks.0.hook_resid_post"))
        if arch == "jumprelu":
            with torch.no_grad():
                sae.threshold.fill_(0.5)
        sae.save(folder / "sae")  # spliced at any block: every probe names its layer
        del sae
        (folder / "done").write_text("ok")


# ---------------------------------------------------------------------------------------------
# One measurement (run in its own process)
# ---------------------------------------------------------------------------------------------


def text(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(chr(c) for c in rng.integers(97, 123, size=n))


def probe(work: Path, cmd: str, arch: str, rows: int, tokens: int, layer: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from gradsae import load_model, load_sae, memory
    from gradsae.influence import Example, influence
    from gradsae.squad.phases import Variant, run_variants

    # the commands plan their batches from the fitted formula; while it is being measured, plan for nothing
    memory.read_fit = lambda *a: {k: dict.fromkeys(memory.FEATURES, 0.0) for k in memory.KINDS}
    folder = work / arch
    if cmd == "train":  # the trainer loads the model itself
        return probe_train(folder, rows, tokens, layer)
    model, tok = load_model(str(folder / "model"), device="cpu", dtype=ARCHS[arch].get("dtype", "bfloat16"))
    m = memory.ModelShape.of(model)
    sae = load_sae(folder / "sae")
    # the first call of a process pays once for what it loads lazily (~0.5 GiB of host memory here, whatever
    # the widths): a small call of each kind first, so the measurement is what a batch costs
    influence(model, tok, sae, [Example("ab", "c")], layer=layer)
    run_variants(model, tok, sae, "ab", {0: Variant(zero=(1,))}, layer=layer, max_new_tokens=2, stop=())
    lat = memory.sae_shape(sae)
    prompt = text(tokens - OUTPUTS, seed=rows)  # one token per character (byte tokenizer)
    out = text(OUTPUTS, seed=rows + 1)
    zero_sets = {i: Variant(zero=tuple(range(i * 7, i * 7 + 5))) for i in range(rows - 1)}
    if cmd == "influence":
        passes = [memory.scoring(m, lat, rows, tokens, OUTPUTS, [layer])]
        work_fn = partial(influence, model, tok, sae, [Example(prompt, out)] * rows, layer=layer, batch_size=rows)
    elif cmd == "exact":
        passes = [
            memory.scoring(m, lat, 1, tokens, OUTPUTS, [layer]),
            memory.exact_ablation(lat, rows, tokens, OUTPUTS),
        ]
        work_fn = partial(
            influence,
            model,
            tok,
            sae,
            [Example(prompt, out)],
            layer=layer,
            method="exact",
            exact_latents=rows,
            exact_batch=rows,
        )
    elif cmd in ("perturb", "steer"):
        variants = zero_sets if cmd == "perturb" else {i: Variant(inject=((i, 5.0),)) for i in range(rows - 1)}
        passes = [memory.generation(lat, rows, tokens, NEW)]
        work_fn = partial(
            run_variants, model, tok, sae, prompt + out, variants, layer=layer, max_new_tokens=NEW, stop=()
        )
    elif cmd == "explain":
        from gradsae.explain import explain

        ks = [str(k) for k in range(1, rows)]  # rows - 1 masked sets of one method (+ the control row)
        passes = [
            memory.generation(lat, 1, tokens, NEW),
            memory.scoring(m, lat, 1, tokens + NEW, NEW, [layer]),
            memory.generation(lat, 1 + 2 * len(ks), tokens, NEW),
        ]
        work_fn = partial(explain, model, tok, sae, prompt + out, layer=layer, mask_k=ks, max_new_tokens=NEW, stop=())
    elif cmd == "dashboard":
        from gradsae.dashboard.model_pass import batch_evidence

        ids = torch.randint(0, 256, (rows, tokens))
        n_batches = max(1, 2048 // (rows * tokens))
        passes = memory.dashboard(m, lat, rows, tokens, layer, influence=True)

        def work_fn():
            for _ in range(n_batches):
                for infl in (False, True):
                    batch_evidence(model, sae, layer, ids, torch.arange(rows), skip_first=1, influence=infl)
                    model.zero_grad(set_to_none=True)
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    return measure(work_fn, passes, m)


def measure(work_fn, passes, m) -> dict:
    import gc

    from gradsae import memory

    flat = {k: {**dict.fromkeys(memory.FEATURES, 1.0), "fixed": 0.0} for k in memory.KINDS}  # the largest pass
    gc.collect()
    before = rss_bytes()
    reset_peak()
    t0 = time.perf_counter()
    work_fn()
    seconds = time.perf_counter() - t0
    return {
        "measured": hwm_bytes() - before,
        "seconds": round(seconds, 2),
        "passes": [asdict(p) for p in passes],
        "model": asdict(m),
        "dominant": max(range(len(passes)), key=lambda i: memory.estimate(passes[i], m, flat)),
    }


def probe_train(folder: Path, rows: int, tokens: int, layer: int) -> dict:
    """A few TopK training steps: the trainer's own estimate (training/grid.py) against the measured peak above
    the model's weights (the trainer loads the model in float32)."""
    import torch
    import transformers

    from gradsae import memory
    from gradsae.training.config import TrainConfig

    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(folder / "model"))
    m = memory.ModelShape.of(meta)
    from gradsae.training.grid import build_grid, estimate_bytes
    from gradsae.training.train import run

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(text(2000, seed=i) for i in range(8)))
    steps = 3
    C = 16384 if m.D > 1024 else 256  # 65,536 latents with Adam beside a float32 model do not fit in 24 GiB here
    cfg = TrainConfig(
        model=str(folder / "model"),
        data=[str(corpus)],
        layers=[layer],
        architectures=["topk"],
        k=[64 if m.D > 1024 else 16],
        d_sae=[C],
        batch_size=rows,
        context_length=tokens,
        shuffle_batches=2,
        max_tokens=steps * rows * tokens,
        dtype="bfloat16",
        threads=2,
        progress=False,
        out=str(folder / "train-out"),
        checkpoint_every=1000,
    )
    specs = build_grid([layer], cfg.architectures, cfg.k, cfg.beta, cfg.d_sae, cfg.seeds)
    per_step = rows * (tokens - cfg.drop_first)
    need = estimate_bytes(specs, m.D, per_step, per_step * cfg.shuffle_batches, 0, 1, host=True)
    import shutil

    import gradsae.training.train as train_mod

    shutil.rmtree(cfg.out, ignore_errors=True)
    start = {}
    inner = train_mod._train

    def measured_train(*a, **kw):  # the peak of the training loop, above the model and data already loaded
        import gc

        gc.collect()
        start["rss"] = rss_bytes()
        reset_peak()
        return inner(*a, **kw)

    train_mod._train = measured_train
    t0 = time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - t0
    return {
        "measured": hwm_bytes() - start["rss"],
        "seconds": round(seconds, 2),
        "passes": [],
        "model": asdict(m),
        "train_estimate": need,
    }


# ---------------------------------------------------------------------------------------------
# Fit, check, table
# ---------------------------------------------------------------------------------------------


def fit(records: list[dict]) -> dict:
    """Per pass kind, non-negative coefficients of the features from the fit points' dominant passes."""
    from scipy.optimize import nnls

    from gradsae import memory

    out = {}
    for kind in memory.KINDS:
        X, y = [], []
        for r in records:
            if r["split"] != "fit" or not r["passes"]:
                continue
            p = memory.Pass(**r["passes"][r["dominant"]])
            if p.kind != kind:
                continue
            m = memory.ModelShape(**r["model"])
            f = memory.features(p, m)
            X.append([f[k] for k in memory.FEATURES])
            y.append(r["measured"] - memory.kv_bytes(p, m))
        if not X:
            raise SystemExit(f"no fit points for pass kind {kind!r}")
        A, b = np.array(X), np.array(y, dtype=float)
        scale = np.maximum(A.max(0), 1.0)  # columns of very different sizes
        coef, _ = nnls(A / scale, b)
        out[kind] = {k: float(c / s) for k, c, s in zip(memory.FEATURES, coef, scale)}
    return out


def check(records: list[dict], coefficients: dict) -> list[dict]:
    from gradsae import memory

    rows = []
    for r in records:
        if r["passes"]:
            m = memory.ModelShape(**r["model"])
            est = memory.peak([memory.Pass(**p) for p in r["passes"]], m, coefficients)
        else:
            est = r["train_estimate"]
        rows.append(
            {
                "split": r["split"],
                "command": r["command"],
                "arch": r["arch"],
                "rows": r["rows"],
                "tokens": r["tokens"],
                "layer": r["layer"],
                "measured_MiB": round(r["measured"] / 2**20),
                "estimated_MiB": round(est / 2**20),
                "error": round(est / max(r["measured"], 1) - 1, 3),
                "seconds": r["seconds"],
            }
        )
    return rows


def gpu_table(coefficients: dict, tiny: bool) -> list[dict]:
    """Gemma-2-9B (42 blocks) + a 131k-latent float32 SAE at layer 20 in bfloat16, 80 GB: rows per batch."""
    from gradsae import memory

    spec = {**ARCHS["gemma2-9b"], **(TINY["gemma2-9b"] if tiny else {})}
    m = memory.ModelShape(
        D=spec["hidden_size"],
        F=spec["intermediate_size"],
        V=spec["vocab_size"],
        blocks=ARCHS["gemma2-9b"]["real_blocks"],
        heads=spec["num_attention_heads"],
        kv_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"],
        dtype_bytes=2,
        eager_attention=True,  # as transformers loads Gemma-2 (its attention soft-capping)
    )
    C = spec["sae"][1]
    lat = memory.Latents(C, 4, sparse=False)  # Gemma Scope: JumpReLU, float32
    params = 9_241_705_984 if not tiny else 0  # Gemma-2-9B's parameter count
    weights = params * 2 + (2 * m.D * C + C + m.D + C) * 4
    have = int(80e9 * memory.HEADROOM) - weights
    L = 20
    cases = [
        ("influence (grad), SQuAD few-shot prompt", 720, lambda b: [memory.scoring(m, lat, b, 720, 16, [L])]),
        ("influence (grad), 128-token prompt", 128, lambda b: [memory.scoring(m, lat, b, 128, 16, [L])]),
        ("exact ablation chunk, 128 tokens", 128, lambda b: [memory.exact_ablation(lat, b, 128, 16)]),
        ("experiment answers / perturbation rows, 720 tokens", 720, lambda b: [memory.generation(lat, b, 720, 16)]),
        ("dashboard rows with influence, 128 tokens", 128, lambda b: memory.dashboard(m, lat, b, 128, L, True)),
        ("dashboard rows, activations only, 128 tokens", 128, lambda b: memory.dashboard(m, lat, b, 128, L, False)),
    ]
    out = []
    for what, T, passes_for in cases:
        lo, hi, best = 1, 4096, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if memory.peak(passes_for(mid), m, coefficients) <= have:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        need1 = memory.peak(passes_for(1), m, coefficients)
        out.append({"pass": what, "tokens": T, "GiB_per_row": round(need1 / 2**30, 2), "rows_per_batch": best})
    return out


def known_records(done: Path, out: Path, tiny: bool) -> list[dict]:
    """The measurements made before: this machine's ``records.jsonl``, else those saved in ``--out`` by an earlier
    run at the same widths (a fresh machine then measures only the points added since). Records from before a
    field existed get it from their arch: TopK SAEs are sparse; Gemma-2 runs eager attention, Llama SDPA."""
    if done.exists():
        records = [json.loads(line) for line in done.read_text().splitlines() if line.strip()]
    elif out.exists():
        saved = json.loads(out.read_text())
        records = saved.get("records", []) if saved.get("tiny") == tiny else []
    else:
        records = []
    for r in records:
        for p in r["passes"]:
            p.setdefault("sparse", ARCHS[r["arch"]]["sae"][0] == "topk")
        r["model"].setdefault("eager_attention", r["arch"] == "gemma2-9b")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/gradsae-real-widths", help="where the random models and SAEs are saved")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "real_widths.json"))
    ap.add_argument("--tiny", action="store_true", help="toy widths (seconds): the harness, not the numbers")
    ap.add_argument("--write-fit", action="store_true", help="write src/gradsae/memory_fit.json from this run")
    ap.add_argument("--only", default="", help="comma list of commands to measure (default: all)")
    ap.add_argument("--probe", nargs=5, metavar=("CMD", "ARCH", "ROWS", "TOKENS", "LAYER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work) / ("tiny" if args.tiny else "real")
    if args.probe:
        cmd, arch, rows, tokens, layer = args.probe
        print("PROBE " + json.dumps(probe(work, cmd, arch, int(rows), int(tokens), int(layer))))
        return
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.tiny)
    only = {c for c in args.only.split(",") if c}
    done = work / "records.jsonl"  # each measurement as it ends: a rerun measures only what is missing
    have = {}
    for r in known_records(done, Path(args.out), args.tiny):
        have[(r["split"], r["command"], r["arch"], r["rows"], r["tokens"], r["layer"])] = r
    records = []
    for point in POINTS:
        split, cmd, arch, rows, tokens, layer = point
        if point in have and not (only and cmd in only):  # --only measures those again, reuses the rest
            records.append(have[point])
            continue
        if only and cmd not in only:
            continue
        argv = [sys.executable, __file__, "--work", args.work, "--probe", cmd, arch, str(rows), str(tokens), str(layer)]
        if args.tiny:
            argv.insert(2, "--tiny")
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True)
        line = next((s for s in res.stdout.splitlines() if s.startswith("PROBE ")), None)
        if res.returncode or line is None:
            sys.stderr.write(res.stderr[-3000:])
            print(f"probe {cmd} {arch} {rows}x{tokens} L{layer} failed ({res.returncode}): left out", file=sys.stderr)
            continue
        rec = {"split": split, "command": cmd, "arch": arch, "rows": rows, "tokens": tokens, "layer": layer}
        rec.update(json.loads(line[6:]))
        records.append(rec)
        with done.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"{split:5s} {cmd:9s} {arch:9s} {rows:3d} x {tokens:4d} L{layer}: "
            f"{rec['measured'] / 2**20:8.0f} MiB, {rec['seconds']:6.1f} s ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    coefficients = fit(records)
    rows = check(records, coefficients)
    print(table(rows, list(rows[0])))
    # the formula's commands; `train` checks the trainer's own estimate (training/grid.py), reported beside
    worst = max((abs(r["error"]) for r in rows if r["split"] == "check" and r["command"] != "train"), default=None)
    train_error = next((r["error"] for r in rows if r["command"] == "train"), None)
    gpu = gpu_table(coefficients, args.tiny)
    print()
    print(table(gpu, list(gpu[0])))
    result = {
        "command": "python benchmarks/bench_real_widths.py" + (" --tiny" if args.tiny else ""),
        "tiny": args.tiny,
        "blocks_built": {a: spec.get("blocks", BLOCKS) for a, spec in ARCHS.items()},
        "threads": int(os.environ.get("BENCH_THREADS", "2")),
        "coefficients": coefficients,
        "rows": rows,
        "worst_check_error": worst,
        "train_estimate_error": train_error,
        "gpu_80GB_gemma2_9b_131k": gpu,
        "records": records,
    }
    write_out(args.out, result)
    if args.write_fit:
        fit_file = REPO / "src" / "gradsae" / "memory_fit.json"
        fit_file.write_text(
            json.dumps(
                {
                    "written_by": result["command"] + " --write-fit",
                    "worst_check_error": worst,
                    "coefficients": coefficients,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {fit_file}")


if __name__ == "__main__":
    main()
