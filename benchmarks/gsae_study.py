"""The TopK / g-SAE / E2E study (the g-SAE paper's claims, with seeds and intervals), run in chunks.

Each chunk is one command that finishes inside a working session on 2 CPU cores (≤ ~60 minutes alone; an E2E
chunk took 59 minutes with its eval, and where a session has less left it runs in two parts: ``run e1 --max-steps
500``, then ``run e1`` continues) and leaves small result files under ``docs/results/gsae/``; those committed files
are the study's progress, and ``benchmarks/bench_sae_comparison.py --results docs/results/gsae`` builds the report
from them alone.

    python benchmarks/gsae_study.py status                 # what is committed, what is missing, in what order
    python benchmarks/gsae_study.py run lr --runs DIR      # one chunk: train, held-out eval, result files
    python benchmarks/gsae_study.py run g0-topk --runs DIR --dry-run   # print the commands only
    python benchmarks/gsae_study.py reference --runs DIR   # zero-ablation CE / KL (for SAEBench scores)

A chunk resumes: ``gradsae train`` continues from its checkpoint in ``DIR`` and an SAE whose result file is
already written is not evaluated again. Held-out text is wiki-04 of the Wikipedia corpus (never trained on):
a 2-shard ``gradsae cache`` (16k tokens, with gradients) at the study's layer, made once per ``DIR``.

Chunks (the settings every arm shares are in ``COMMON``):
    lr          TopK k 32, seed 0, 500k tokens at each learning rate of LR_SWEEP: picks the study's rate
    g<s>-topk   TopK × k 3, 5, 10, 32, 64, seed s            (one model pass, no backward)
    g<s>-gsae   g-SAE × k 3, 5, 10, 32, 64, seed s           (one model pass + backward)
    e<s>        E2E k 32, seed s
    f<s>        seed s's TopK k 32 fine-tuned on FINE_TUNE_TOKENS more: KL + MSE (balanced, Karvonen 2025) and, as its
                matching control, MSE only (needs g<s>-topk's SAE in DIR); at FINE_TUNE_LR_FRACTION of the study's rate
Arms of one seed see the same tokens in the same order (the seed fixes the data order); the two fine-tunes of
f<s> see the same tokens too (the first FINE_TUNE_TOKENS of seed s's order, which the TopK SAE was trained on).

``reference`` (~2 minutes) writes ``reference/zero-ablation-L14.json``: the model's CE and KL on the held-out sequences
with the layer's residual zeroed (the positions the SAEs are spliced at), which do not depend on the SAE. The report
derives SAEBench's ``ce_loss_score`` and ``kl_div_score`` from it for result files evaluated before ``gradsae eval``
reported them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results" / "gsae"
WIKI = REPO.parent / "shared" / "data" / "wikipedia"

LAYER = 14
D_SAE = 4096
KS = (3, 5, 10, 32, 64)
SEEDS = (0, 1, 2)
TOKENS = 1_000_000
LR_SWEEP = (5e-4, 1e-3, 2e-3, 4e-3)
LR_SWEEP_TOKENS = 500_000
FINE_TUNE_TOKENS = 100_000  # 10% of TOKENS
# A fine-tune continues a run whose learning rate has decayed to 0: it starts from a tenth of the study's rate with a
# short warm-up (fresh Adam moments) and decays to 0 again. At the full rate (the first f0, commit 2c94e57) the
# MSE-only control lost NMSE (0.072 -> 0.103): the jump undid the decay instead of fine-tuning.
FINE_TUNE_LR_FRACTION = 0.1
FINE_TUNE_WARMUP = 10
COMMON = ["--layers", str(LAYER), "--d-sae", str(D_SAE), "--checkpoint-every", "64"]
HELDOUT_SHARDS = 2


@dataclass
class Chunk:
    """One unit of the study: ``gradsae train`` runs (name, extra args) and the result files they give."""

    name: str
    what: str
    runs: list[tuple[str, list[str]]] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)  # (result file name, SAE folder under the run)
    minutes: str = ""


def lr_name(lr: float) -> str:
    """1e-3, 5e-4, ...: how learning rates appear in folder and file names."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def study_lr() -> float | None:
    """The learning rate the lr chunk picked (lowest held-out L_added), or None before it ran."""
    best = None
    for lr in LR_SWEEP:
        p = RESULTS / "lr-sweep" / f"topk-k32-lr{lr_name(lr)}.json"
        if p.exists():
            la = json.loads(p.read_text())["eval"]["eval_result_metrics"]["model_performance_preservation"]["l_added"]
            if best is None or la < best[0]:
                best = (la, lr)
    return None if best is None else best[1]


def data_arg() -> str:
    return ",".join(str(WIKI / f"wiki-0{i}.jsonl.gz") for i in range(4))


def chunks(lr: float | None) -> list[Chunk]:
    """Every chunk of the study, in the order they should run."""
    out = [
        Chunk(
            "lr",
            "TopK k32 learning-rate sweep, 500k tokens each",
            [
                (
                    f"lr-sweep/lr{lr_name(x)}",
                    [
                        "--architectures",
                        "topk",
                        "--k",
                        "32",
                        "--seeds",
                        "0",
                        "--lr",
                        lr_name(x),
                        "--max-tokens",
                        str(LR_SWEEP_TOKENS),
                    ],
                )
                for x in LR_SWEEP
            ],
            [(f"lr-sweep/topk-k32-lr{lr_name(x)}.json", f"lr-sweep/lr{lr_name(x)}/topk_k32") for x in LR_SWEEP],
            "~4 × 5 min train + 4 × 1.5 min eval",
        )
    ]
    lr_args = ["--lr", lr_name(lr)] if lr is not None else []
    ks = ",".join(map(str, KS))
    for s in SEEDS:
        base = ["--seeds", str(s), "--seed", str(s), "--max-tokens", str(TOKENS)] + lr_args
        out.append(
            Chunk(
                f"g{s}-topk",
                f"TopK × k {ks}, seed {s}",
                [(f"g{s}-topk", ["--architectures", "topk", "--k", ks] + base)],
                [(f"topk-k{k}-s{s}.json", f"g{s}-topk/topk_k{k}") for k in KS],
                "~14 min alone, 26 beside test runs, + 7 for 5 evals",
            )
        )
        out.append(
            Chunk(
                f"g{s}-gsae",
                f"g-SAE × k {ks}, seed {s}",
                [(f"g{s}-gsae", ["--architectures", "gsae", "--k", ks] + base)],
                [(f"gsae-k{k}-s{s}.json", f"g{s}-gsae/gsae_k{k}_b0.5") for k in KS],
                "~55 min + 5 evals",
            )
        )
        out.append(
            Chunk(
                f"e{s}",
                f"E2E k 32, seed {s}",
                [(f"e{s}", ["--architectures", "e2e", "--k", "32"] + base)],
                [(f"e2e-k32-s{s}.json", f"e{s}/e2e_k32")],
                # measured (e1): ~300 tokens/s alone on 2 cores (forward + backward through the blocks above L)
                "~57 min alone (or two parts: `run e<s> --max-steps 500`, then `run e<s>`); + 1 eval",
            )
        )
        ft = ["--k", "32", "--init-from", f"{{runs}}/g{s}-topk/topk_k32", "--seeds", str(s), "--seed", str(s)]
        ft += ["--max-tokens", str(FINE_TUNE_TOKENS), "--warmup-steps", str(FINE_TUNE_WARMUP)]
        ft += ["--lr", lr_name(lr * FINE_TUNE_LR_FRACTION)] if lr is not None else []
        out.append(
            Chunk(
                f"f{s}",
                f"TopK k 32 (seed {s}) + {FINE_TUNE_TOKENS // 1000}k tokens: KL + MSE vs MSE only",
                [
                    (f"f{s}-klmse", ["--architectures", "e2e", "--e2e-balance", "--e2e-recon-coef", "1"] + ft),
                    (f"f{s}-mse", ["--architectures", "topk"] + ft),
                ],
                [(f"klmse-k32-s{s}.json", f"f{s}-klmse/e2e_k32"), (f"mseft-k32-s{s}.json", f"f{s}-mse/topk_k32")],
                "~9 min KL + MSE alone, ~1 min MSE, + 2 evals",
            )
        )
    return out


def missing(chunk: Chunk) -> list[str]:
    return [name for name, _ in chunk.results if not (RESULTS / name).exists()]


def status() -> None:
    lr = study_lr()
    print(
        f"results: {RESULTS.relative_to(REPO) if RESULTS.is_relative_to(REPO) else RESULTS}   learning rate: "
        f"{lr_name(lr) + ' (picked by the lr chunk)' if lr else 'not picked yet (run the lr chunk first)'}"
    )
    for c in chunks(lr):
        miss = missing(c)
        state = (
            "done"
            if not miss
            else (
                "not started" if len(miss) == len(c.results) else f"{len(c.results) - len(miss)}/{len(c.results)} files"
            )
        )
        print(f"  {c.name:<9} {state:<14} {c.what}  ({c.minutes})")
    print(f"  reference {'done' if REFERENCE.exists() else 'missing':<14} zero-ablation CE / KL for SAEBench's scores")
    for s in SEEDS:
        after = f"g{s}-topk, g{s}-gsae, e{s}"
        print(f"  table2 {s}  {table2_state(s):<14} Table 2 for seed {s}'s k 32 arms (~3 min; after {after})")
    nxt = next((c.name for c in chunks(lr) if missing(c)), None)
    print(f"next: python benchmarks/gsae_study.py run {nxt} --runs DIR" if nxt else "every chunk is done")


def _git_commit() -> str:
    """The commit of the gradsae that trains (a chunk may run from a snapshot on PYTHONPATH, not this checkout)."""
    import gradsae

    try:
        return subprocess.run(
            ["git", "-C", str(Path(gradsae.__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def result_record(ev: dict, meta: dict, command: list[str], commit: str) -> dict:
    """The committed record of one SAE: what it is, how it was trained, and its held-out eval (without the
    per-latent steering details, which only the eval folder keeps)."""
    ev = dict(ev)
    ev["eval_result_details"] = [d for d in ev.get("eval_result_details", []) if "distributions" in d]
    return {
        "architecture": meta.get("architecture") or ev["sae_cfg"]["architecture"],
        "k": ev["sae_cfg"]["k"],
        "seed": meta.get("seed"),
        "layer": LAYER,
        "d_sae": ev["sae_cfg"]["d_sae"],
        "training_tokens": meta.get("model_tokens"),
        "fine_tune_of": meta.get("train_config", {}).get("init_from") or None,
        "lr": meta.get("train_config", {}).get("lr"),
        "commit": commit,
        "train_command": command,
        "heldout": "wiki-04, first 2 cache shards of 128-token rows",
        "eval": ev,
    }


def eval_is_current(ev_file: Path, sae_dir: Path) -> bool:
    """An earlier held-out eval may be reused only if it was written after the SAE it scores (a chunk rerun with
    other settings retrains the SAE in place; its old eval must not stand for the new weights)."""
    weights = sorted(sae_dir.glob("*.safetensors"))
    return ev_file.exists() and bool(weights) and ev_file.stat().st_mtime > max(w.stat().st_mtime for w in weights)


def run_chunk(name: str, runs: Path, dry_run: bool, threads: int, max_steps: int = 0) -> None:
    lr = study_lr()
    found = {c.name: c for c in chunks(lr)}
    if name not in found:
        sys.exit(f"gsae_study: unknown chunk {name!r}: use one of {', '.join(found)}")
    if name != "lr" and lr is None:
        sys.exit("gsae_study: the learning rate is not picked yet: run the 'lr' chunk first")
    c = found[name]
    gradsae = [sys.executable, "-m", "gradsae"]
    heldout = runs / f"heldout-wiki04-L{LAYER}"
    cmds = [
        gradsae
        + [
            "cache",
            "--data",
            str(WIKI / "wiki-04.jsonl.gz"),
            "--layers",
            str(LAYER),
            "--max-shards",
            str(HELDOUT_SHARDS),
            "--out",
            str(heldout),
        ]
    ]
    train_cmds = {}
    for sub, extra in c.runs:
        extra = [a.replace("{runs}", str(runs)) for a in extra]
        for a in extra:
            if str(runs) in a and not dry_run and not Path(a).is_dir():
                sys.exit(f"gsae_study: chunk {name} starts from {a}, which is not there: run its TopK chunk first")
        cmd = gradsae + [
            "train",
            "--data",
            data_arg(),
            *COMMON,
            *extra,
            "--threads",
            str(threads),
            *(["--max-steps", str(max_steps)] if max_steps else []),
            "--no-progress",
            "--out",
            str(runs / sub),
        ]
        train_cmds[sub] = cmd
        cmds.append(cmd)
    if dry_run:
        for cmd in cmds:
            print(" ".join(cmd))
        return
    commit = _git_commit()
    for cmd in cmds:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    from gradsae.saes import load_sae
    from gradsae.training.evals import EvalConfig, run as run_eval

    for fname, folder in c.results:
        dest = RESULTS / fname
        if dest.exists():
            continue
        sae_dir = runs / folder
        if not sae_dir.is_dir():  # written only when its training reaches the end
            print(f"{folder}: training stopped before the end (--max-steps): run the chunk again to continue")
            continue
        ev_out = runs / "evals" / folder
        ev_file = ev_out / "eval.json"
        ev = (
            json.loads(ev_file.read_text())
            if eval_is_current(ev_file, sae_dir)
            else run_eval(
                EvalConfig(
                    sae=str(sae_dir),
                    cache=str(heldout),
                    holdout_shards=HELDOUT_SHARDS,
                    out=str(ev_out),
                    threads=threads,
                )
            )
        )
        meta = dict(load_sae(sae_dir).cfg.metadata or {})
        sub = folder.split("/")[0] if not folder.startswith("lr-sweep/") else "/".join(folder.split("/")[:2])
        command = [a for a in train_cmds[sub][2:] if a != "--no-progress"]  # from "gradsae train ..."
        if "--max-steps" in command:  # how the run was cut into parts, not what it trained
            i = command.index("--max-steps")
            del command[i : i + 2]
        rec = result_record(ev, meta, command, commit)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1, allow_nan=False) + "\n")
        tmp.replace(dest)
        print(f"wrote {dest}")


REFERENCE = RESULTS / "reference" / f"zero-ablation-L{LAYER}.json"
REFERENCE_SAE = "smollm2/topk-k32/L14"  # any SAE of the layer: the numbers kept do not depend on it


def write_reference(runs: Path, threads: int) -> None:
    """The SAE-independent part of SAEBench's scores on the study's held-out sequences, from ``gradsae eval`` of
    one SAE of the layer with the study's eval settings (the same sequences and positions as every result)."""
    from gradsae.training.evals import EvalConfig, run as run_eval

    heldout = runs / f"heldout-wiki04-L{LAYER}"
    if not heldout.is_dir():
        sys.exit(f"gsae_study: no held-out cache in {heldout}: run any chunk first (it makes the cache)")
    cfg = EvalConfig(
        sae=REFERENCE_SAE, cache=str(heldout), holdout_shards=HELDOUT_SHARDS, out=str(runs / "evals" / "reference"),
        threads=threads, steer_latents=0,
    )  # fmt: skip
    m = run_eval(cfg)["eval_result_metrics"]
    perf, beh = m["model_performance_preservation"], m["model_behavior_preservation"]
    rec = {
        "what": "next-token CE and KL(clean || ablated) on the held-out sequences with the residual stream after block "
        f"{LAYER} zeroed at the positions the study's SAEs are spliced at; independent of the SAE ({REFERENCE_SAE} "
        "was spliced for the eval that measured it)",
        "layer": LAYER,
        "heldout": "wiki-04, first 2 cache shards of 128-token rows",
        "n_seqs": m["misc"]["n_seqs_model_metrics"],
        "ce_loss_without_sae": perf["ce_loss_without_sae"],
        "ce_loss_with_ablation": perf["ce_loss_with_ablation"],
        "kl_div_with_ablation": beh["kl_div_with_ablation"],
        "commit": _git_commit(),
        "command": "python benchmarks/gsae_study.py reference --runs DIR",
    }
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    tmp = REFERENCE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1, allow_nan=False) + "\n")
    tmp.replace(REFERENCE)
    print(f"wrote {REFERENCE}")


TABLE2 = RESULTS / "table2"
TABLE2_ARMS = {"topk": "g{s}-topk/topk_k32", "gsae": "g{s}-gsae/gsae_k32_b0.5", "e2e": "e{s}/e2e_k32"}
TABLE2_SEQUENCES, TABLE2_LATENTS = 300, 30  # the paper's Table 2: 30 latents per part, 300 sequences


def table2_state(seed: int) -> str:
    """``done``, ``missing``, or which arms a seed's Table 2 still lacks (E2E is left out when its chunk was not run:
    rerun ``table2 SEED`` after it)."""
    path = TABLE2 / f"s{seed}.json"
    if not path.exists():
        return "missing"
    have = {t["arm"] for t in json.loads(path.read_text())["tails"]}
    lacks = [a for a in TABLE2_ARMS if a not in have]
    return f"no {', '.join(lacks)} yet" if lacks else "done"


def table2_folder(runs: Path, seed: int, arms: list[str]) -> Path:
    """The sensitivity run's folder for one seed and set of arms: a seed first run without E2E (its chunk came later)
    and rerun with it gets a new folder, since `gradsae sensitivity` refuses a folder written with other SAEs."""
    return runs / "table2" / f"s{seed}-{'-'.join(arms)}"


def write_table2(seed: int, runs: Path, threads: int) -> None:
    """The paper's Table 2 for seed ``seed``'s k 32 arms: mean |∇ₓL·ŵ| along the decoder rows of the left tail,
    middle and right tail of the nearest-neighbour cosine histogram (``gradsae sensitivity``), on held-out wiki-04,
    -> ``table2/s<seed>.json``. Needs the seed's TopK, g-SAE and E2E SAEs in ``runs`` (E2E is left out if absent)."""
    arms = {a: runs / f.format(s=seed) for a, f in TABLE2_ARMS.items()}
    missing_arms = [a for a in ("topk", "gsae") if not arms[a].is_dir()]
    if missing_arms:
        sys.exit(f"gsae_study: table2 {seed} needs {', '.join(missing_arms)} of seed {seed} in {runs}: run its chunks")
    arms = {a: p for a, p in arms.items() if p.is_dir()}
    out = table2_folder(runs, seed, list(arms))
    cmd = [
        sys.executable, "-m", "gradsae", "sensitivity", "--layers", "", "--fig3-layers", "",
        "--sae", ",".join(str(p) for p in arms.values()), "--data", str(WIKI / "wiki-04.jsonl.gz"),
        "--sequences", str(TABLE2_SEQUENCES), "--latents-per-tail", str(TABLE2_LATENTS), "--seed", str(seed),
        "--threads", str(threads), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    by_path = {str(p): a for a, p in arms.items()}
    tails = json.loads((out / "sensitivity.json").read_text())["tails"]
    rec = {
        "what": "mean |∇ₓL·ŵ| (L: summed next-token CE of a sequence) along the decoder rows of each part of the "
        "nearest-neighbour cosine histogram, per k 32 arm of one seed (the g-SAE paper's Table 2)",
        "seed": seed,
        "sequences": TABLE2_SEQUENCES,
        "latents_per_part": TABLE2_LATENTS,
        "data": "wiki-04 (held out)",
        "commit": _git_commit(),
        "command": f"python benchmarks/gsae_study.py table2 {seed} --runs DIR",
        "tails": [{"arm": by_path[t.pop("sae")], **t} for t in tails],
    }
    dest = TABLE2 / f"s{seed}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1, allow_nan=False) + "\n")
    tmp.replace(dest)
    print(f"wrote {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="list the chunks, done and missing")
    r = sub.add_parser("run", help="run one chunk")
    r.add_argument("chunk")
    r.add_argument("--runs", required=True, help="folder for the runs (outside the checkout; kept for resume)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--dry-run", action="store_true", help="print the commands only")
    r.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="stop each training after this many steps of this invocation (checkpointed; the next `run` of the chunk "
        "continues bit-identically): how a chunk longer than a session is run in parts, e.g. E2E in two halves",
    )
    ref = sub.add_parser("reference", help="zero-ablation CE / KL of the held-out text (for SAEBench's scores)")
    ref.add_argument("--runs", required=True, help="the runs folder whose held-out cache the chunks made")
    ref.add_argument("--threads", type=int, default=2)
    t2 = sub.add_parser("table2", help="the paper's Table 2 for one seed's k 32 arms (after its chunks)")
    t2.add_argument("seed", type=int)
    t2.add_argument("--runs", required=True, help="the runs folder that holds the seed's SAEs")
    t2.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "table2":
        write_table2(args.seed, Path(args.runs).resolve(), args.threads)
    elif args.cmd == "status":
        status()
    elif args.cmd == "reference":
        write_reference(Path(args.runs).resolve(), args.threads)
    else:
        run_chunk(args.chunk, Path(args.runs).resolve(), args.dry_run, args.threads, args.max_steps)


if __name__ == "__main__":
    main()
