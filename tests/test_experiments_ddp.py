"""torchrun with 2 CPU processes (gloo) shards the examples; rank 0's merged result equals a single process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import make_tiny, random_sae

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun") is None and sys.platform != "linux", reason="needs torch.distributed"
)


def _clean(summary):
    summary = dict(summary)
    summary.pop("timing")
    return summary


def _records(folder):
    out = {}
    for line in (folder / "examples.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("seconds", None)
        out[(r["task"], r["id"])] = r
    return out


def test_torchrun_two_processes_merge_equals_single_process(tmp_path):
    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    random_sae(d_sae=128, layer=1).save(tmp_path / "sae")
    ctxs = ["The river Olm runs past the mill.", "Nora keeps bees near the old barn."]
    rows = [
        {"id": f"c{c}q{q}", "context": x, "question": f"Question {q}?", "answers": ["unused"]}
        for c, x in enumerate(ctxs)
        for q in range(3)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    args = [
        "experiment",
        "--model",
        str(tmp_path / "model"),
        "--sae",
        str(tmp_path / "sae"),
        "--data",
        str(tmp_path / "d.jsonl"),
        "--template",
        "plain",
        "--min-f1",
        "0",
        "--max-new-tokens",
        "4",
        "--ks",
        "1,50%",
        "--limit",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--batch-size",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = subprocess.run(
        [sys.executable, "-m", "gradsae", *args, "--out", str(tmp_path / "single")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "gradsae",
            *args,
            "--out",
            str(tmp_path / "multi"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stderr[-2000:]
    a = json.loads((tmp_path / "single" / "summary.json").read_text())
    b = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert a["data"]["n_kept"] == 6 and b["perturbation"]["n"] == 6 and b["steering"]["n"] == 6
    assert _clean(a) == _clean(b)
    assert _records(tmp_path / "single") == _records(tmp_path / "multi")  # every prediction and latent set
    assert not list((tmp_path / "multi").glob("examples.rank*.jsonl"))  # shards merged and removed
