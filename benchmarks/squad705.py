"""GradSAE's SQuAD experiment on all 705 answerable questions of ``dev-v2.0-first5.json``, in session-sized shards.

The paper's RQ1–RQ3 (Shu et al.) at the default SAE with the error term removed (``--error none``, as the paper
splices), K = 1, 2, 3, 5, 10, 20 and 50%, split with ``gradsae experiment --shard i/N`` into ``SHARDS`` runs that
each finish inside a working session on 2 CPU cores. Each shard leaves its small files under
``docs/results/squad705/shard-<i>-of-<N>/`` (config.json, summary.json, examples.jsonl.gz: the per-question
records); those committed files are the progress, and ``report`` rebuilds the whole run from them alone with
``gradsae merge`` (no model: the records are pooled and every table and verdict recomputed as one unsharded run
would write them, tested equal in tests/test_experiments.py).

    python benchmarks/squad705.py status                   # which shards are committed, the next to run
    python benchmarks/squad705.py run 0 --runs DIR         # shard 0: gradsae experiment ... --shard 0/N (resumes)
    python benchmarks/squad705.py report                   # all shards -> docs/results/squad705/merged/
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results" / "squad705"
DATA = REPO.parent / "shared" / "data" / "squad" / "dev-v2.0-first5.json"
SHARDS = 12
KS = "1,2,3,5,10,20,50%"
# a fixed batch (not auto) so every shard batches alike on any machine; 8 was refused here (~24 GiB estimated for
# the longest few-shot prompts against 20 GiB free)
ARGS = ["--error", "none", "--limit", "0", "--ks", KS, "--batch-size", "4"]
KEPT = ("config.json", "summary.json")


def shard_dir(i: int) -> Path:
    return RESULTS / f"shard-{i}-of-{SHARDS}"


def done(i: int) -> bool:
    return all((shard_dir(i) / f).exists() for f in (*KEPT, "examples.jsonl.gz"))


def command(i: int, runs: Path, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "gradsae", "experiment", "--data", str(DATA), *ARGS, "--shard", f"{i}/{SHARDS}",
        "--threads", str(threads), "--out", str(runs / "squad705" / f"s{i}"),
    ]  # fmt: skip


def status() -> None:
    have = [i for i in range(SHARDS) if done(i)]
    print(f"SQuAD 705 ({KS}, --error none): {len(have)} of {SHARDS} shards committed in {RESULTS.relative_to(REPO)}")
    for i in range(SHARDS):
        d = shard_dir(i)
        mins = ""
        if done(i):
            t = json.loads((d / "summary.json").read_text()).get("timing", {})
            mins = f"  ({t.get('seconds', 0) / 60:.0f} min)" if t.get("seconds") else ""
        print(f"  s{i:<3} {'done' if done(i) else 'missing'}{mins}")
    nxt = next((i for i in range(SHARDS) if not done(i)), None)
    print(f"next: python benchmarks/squad705.py run {nxt} --runs DIR" if nxt is not None else "every shard is done")


def run_shard(i: int, runs: Path, threads: int, dry_run: bool) -> None:
    if not 0 <= i < SHARDS:
        sys.exit(f"squad705: shard {i} does not exist: give 0..{SHARDS - 1}")
    if not DATA.exists():
        sys.exit(f"squad705: no SQuAD file at {DATA}: the study reads ../shared/data beside the checkout")
    cmd = command(i, runs, threads)
    print("+", " ".join(cmd), flush=True)
    if dry_run:
        return
    subprocess.run(cmd, check=True)
    pack(runs / "squad705" / f"s{i}", shard_dir(i))
    print(f"wrote {shard_dir(i)}")


def pack(out: Path, dest: Path) -> None:
    """A finished shard's results folder -> its committed files (records gzipped), written whole or not at all."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in KEPT:
        shutil.copy2(out / f, tmp / f)
    with open(out / "examples.jsonl", "rb") as src, gzip.GzipFile(tmp / "examples.jsonl.gz", "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


def unpack(folder: Path, into: Path) -> list[Path]:
    """The committed shards as ordinary results folders under ``into`` (records unzipped; the data file named as it
    lies beside this checkout: ``gradsae merge`` checks its hash against the one the shards ran on)."""
    out = []
    for i in range(SHARDS):
        src, dst = folder / f"shard-{i}-of-{SHARDS}", into / f"s{i}"
        dst.mkdir(parents=True)
        shutil.copy2(src / "summary.json", dst / "summary.json")
        conf = json.loads((src / "config.json").read_text())
        conf["config"]["data"] = str(DATA)
        (dst / "config.json").write_text(json.dumps(conf))
        with gzip.open(src / "examples.jsonl.gz", "rb") as a, open(dst / "examples.jsonl", "wb") as b:
            shutil.copyfileobj(a, b)
        out.append(dst)
    return out


def report(out: Path) -> dict:
    missing = [i for i in range(SHARDS) if not done(i)]
    if missing:
        sys.exit(f"squad705: shards {', '.join(map(str, missing))} are not committed yet: run them first (status)")
    from gradsae.squad.merge import MergeConfig, run as merge

    with tempfile.TemporaryDirectory() as tmp:
        shards = unpack(RESULTS, Path(tmp))
        merged = Path(tmp) / "merged"
        summary = merge(MergeConfig(shards=[str(s) for s in shards], out=str(merged)))
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in ("summary.json", "table.md"):
            shutil.copy2(merged / f, out / f)
    for name, v in summary.get("rq", {}).items():
        print(f"{name.upper()}: {v.get('verdict')} — {v.get('text')}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    r = sub.add_parser("run")
    r.add_argument("shard", type=int)
    r.add_argument("--runs", required=True, type=Path, help="working folder (outside the checkout)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--dry-run", action="store_true")
    m = sub.add_parser("report")
    m.add_argument("--out", type=Path, default=RESULTS / "merged")
    args = ap.parse_args()
    if args.cmd == "status":
        status()
    elif args.cmd == "run":
        run_shard(args.shard, args.runs, args.threads, args.dry_run)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
