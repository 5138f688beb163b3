"""How many questions survive the paper's reconstruction-only splice (``--error none``), per SAE: the issue-11
curve of "questions still answered" against an SAE's training tokens, k and width.

    python benchmarks/bench_splice_survival.py --sae smollm2/topk/L9,/path/to/run/L9/topk_k32 --limit 150

For each SAE this runs ``gradsae perturb --error none`` on the first ``--limit`` answerable questions of the
SQuAD dev subset (the answer phase answers every question twice: through the splice and with the plain model;
one K = 1 TopK masking round per kept question comes with it), then counts from the records:

* ``plain``: questions the model without the SAE answers with F1 ≥ 0.9;
* ``kept``: questions the spliced model answers with F1 ≥ 0.9 (the correct-sample filter);
* ``kept of plain``: questions in both, and that count over ``plain`` — the issue's target is ≥ 0.5.

Results folders go to ``--out-root/<name>`` and resume when rerun; the table is printed and written as JSON.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from _common import DEV, write_out


def survival(folder: Path, min_f1: float = 0.9) -> dict:
    """Counts from a perturb results folder's answer records."""
    from gradsae.squad.records import read_records

    ans = [r for (task, _), r in read_records(folder).items() if task == "answer" and r.ok]
    plain = {r.id for r in ans if r.unspliced is not None and r.unspliced.f1 >= min_f1}
    kept = {r.id for r in ans if r.f1 >= min_f1}
    both = plain & kept
    return {"questions": len(ans), "plain": len(plain), "kept": len(kept), "kept_of_plain": len(both),
            "fraction": round(len(both) / len(plain), 3) if plain else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default="smollm2/topk/L9", help="comma list of SAEs (bundled names or folders)")
    ap.add_argument("--data", default=str(DEV), help="SQuAD JSON/JSONL (default: the shared dev subset)")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--out-root", default="benchmarks/out/splice_survival")
    ap.add_argument("--json", default="benchmarks/out/splice_survival.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from gradsae.cli import main as cli_main

    rows = []
    for spec in [s for s in args.sae.split(",") if s]:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.strip("/"))[-80:]
        out = Path(args.out_root) / name
        t0 = time.perf_counter()
        rc = cli_main(["perturb", "--model", args.model, "--sae", spec, "--data", args.data, "--limit",
                       str(args.limit), "--error", "none", "--ks", "1", "--methods", "gradsae", "--sets", "top",
                       "--threads", str(args.threads), "--device", "cpu", "--no-progress", "--out", str(out)])
        if rc:
            sys.exit(rc)
        rows.append({"sae": spec, **survival(out), "seconds": round(time.perf_counter() - t0, 1)})
    print("| SAE | questions | plain model F1 ≥ 0.9 | spliced F1 ≥ 0.9 | both | both / plain |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sae']} | {r['questions']} | {r['plain']} | {r['kept']} | {r['kept_of_plain']} | {r['fraction']} |")
    write_out(args.json, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
