"""Reproduce the GradSAE paper's Table 1 (perturbation, local steering) and Table 3 (latent statistics)
with the bundled model and SAE on the SQuAD dev subset in ../shared/data/squad (read at run time; ``--data`` for
another file), and say whether RQ1-RQ3 hold, with the numbers.

    nohup python benchmarks/bench_reproduction.py --limit 150 > benchmarks/out/reproduction.log 2>&1 &

This is ``gradsae experiment`` (perturb + steer + stats) with the library defaults (few-shot prompt,
correct-sample filter F1 ≥ 0.9, K ∈ {1, 10, 20, 30, 50%}, GradSAE grad × act with the log-probability
target and ReLU-mean aggregation, steering: inject the partner's mean activation at every position). The
results folder (default benchmarks/out/reproduction/) resumes if the run is interrupted: rerun the same
command. Extra ``gradsae experiment`` flags can be passed after ``--``, e.g. ``-- --at newest --inject score
--clamp 0,50`` for the authors' steering rule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gradsae.saes import DEFAULT_SAE
from _common import DEV, write_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default=DEFAULT_SAE, help="one SAE, or a comma list (a sweep)")
    ap.add_argument("--data", default=str(DEV), help="SQuAD JSON/JSONL (default: the shared dev subset)")
    ap.add_argument("--limit", type=int, default=150, help="questions of the dev file (file order)")
    ap.add_argument("--out", default="benchmarks/out/reproduction")
    ap.add_argument("--json", default="benchmarks/out/reproduction.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="more gradsae experiment flags (after --)")
    args = ap.parse_args()

    from gradsae.cli import main as cli_main
    from gradsae.squad.tables import verdict_word

    argv = [
        "experiment",
        "--model",
        args.model,
        "--sae",
        args.sae,
        "--data",
        args.data,
        "--limit",
        str(args.limit),
        "--out",
        args.out,
        "--fewshot-data",
        str(DEV.parent / "train-v1.1-notre-dame.json"),
        "--threads",
        str(args.threads),
        *args.extra,
    ]
    print("gradsae " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    rc = cli_main(argv)
    if rc:
        sys.exit(rc)
    secs = time.perf_counter() - t0
    out = Path(args.out)
    sweep = out / "sweep.json"
    summaries = (
        [r["summary"] for r in json.loads(sweep.read_text())["runs"]]
        if sweep.exists()
        else [json.loads((out / "summary.json").read_text())]
    )
    print("\n==== verdicts ====")
    for s in summaries:
        d = s["data"]
        plain = d.get("unspliced") or {}
        print(
            f"{s['sae']}: {d['n_kept']} of {d['n_answered']} answered questions kept "
            f"(unedited EM {d['unedited']['em']:.1f} / F1 {d['unedited']['f1']:.1f}; without the SAE "
            f"{plain.get('n_kept', '?')} correct); "
            f"failed {s['failed']['answer']}/{s['failed']['perturb']}/{s['failed']['steer']}"
        )
        for k, v in s["rq"].items():
            print(f"  {k.upper()} {verdict_word(v).upper()}: {v['text']}")
    write_out(
        args.json,
        {
            "command": "python benchmarks/bench_reproduction.py " + " ".join(sys.argv[1:]),
            "seconds": round(secs, 1),
            "summaries": summaries,
        },
    )


if __name__ == "__main__":
    main()
