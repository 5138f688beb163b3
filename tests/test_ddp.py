"""Scale-out: `gradsae train` under torch.distributed.run with 2 CPU processes (gloo, DDP) reaches the
same SAEs as one process."""

import os
import subprocess
import sys

import torch

from gradsae import load_sae
from gradsae.training.cache import cache_from_arrays


def _why(stderr: str) -> str:
    """What a failed torchrun said: the workers' error lines first (torchrun's summary hides them), then its tail."""
    keys = ("terminate", "Error", "error", "Traceback", "abort", "Signal")
    own = [line for line in stderr.splitlines() if any(k in line for k in keys)][:20]
    return "\n".join(own) + "\n---\n" + stderr[-2000:]


def _train(cache, out, nproc):
    args = [
        "-m",
        "gradsae",
        "train",
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--architectures",
        "topk,gsae",
        "--k",
        "3",
        "--beta",
        "1",
        "--d-sae",
        "64",
        "--batch-tokens",
        "256",
        "--epochs",
        "0.5",
        "--lr",
        "3e-3",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--log-every",
        "5",
    ]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, _why(r.stderr)


def test_two_processes_equal_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 16, generator=g)
    idx = torch.stack([torch.randperm(32, generator=g)[:3] for _ in range(6000)])
    x = torch.einsum("nk,nkd->nd", torch.rand(6000, 3, generator=g) + 0.5, W[idx])
    cache = cache_from_arrays(tmp_path / "cache", x, torch.randn(6000, 16, generator=g) * 1e-3, shard_tokens=3000)
    _train(cache, tmp_path / "one", 1)
    _train(cache, tmp_path / "two", 2)
    for name in ("topk_k3", "gsae_k3_b1"):
        a, b = load_sae(tmp_path / "one" / name), load_sae(tmp_path / "two" / name)
        for key, t in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], t, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
        assert b.cfg.norm_scaling_factor == a.cfg.norm_scaling_factor


def test_streaming_under_two_processes(tmp_path):
    """Corpus source under torchrun: each process runs the model on its half of every global batch; the run
    finishes, rank 0 writes each SAE once, and the token count is the global one."""
    from conftest import make_tiny

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"doc {i}: pack my box with five dozen liquor jugs {i * 7}" for i in range(100)))
    args = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "gradsae",
        "train",
        "--model",
        str(tmp_path / "m"),
        "--data",
        str(corpus),
        "--layers",
        "1",
        "--architectures",
        "topk,gsae",
        "--k",
        "4",
        "--d-sae",
        "32",
        "--batch-size",
        "4",
        "--context-length",
        "16",
        "--max-tokens",
        "512",
        "--shuffle-batches",
        "2",
        "--out",
        str(tmp_path / "two"),
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, _why(r.stderr)
    for name in ("topk_k4", "gsae_k4_b0.5"):
        sae = load_sae(tmp_path / "two" / name)
        assert sae.cfg.metadata["tokens_seen"] == 8 * 4 * 15  # 8 global steps of 4 rows x 15 tokens
        assert all(torch.isfinite(t).all() for t in sae.state_dict().values())


_CLOSE = """
import os, sys, torch
from gradsae.distributed import Dist, all_reduce
with Dist("cpu"):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])  # imports torch._dynamo
    all_reduce(torch.ones(3), mean=True)
left = [n for n in (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
        if "gloo" in n]
print("threads left", left, file=sys.stderr)
sys.exit(1 if left else 0)
"""


def test_close_frees_the_process_group(tmp_path):
    """Dist.close leaves no gloo thread behind, even after an optimizer was made inside the group: a live
    gloo thread at interpreter exit aborts the process now and then (seen in CI)."""
    if not os.path.isdir("/proc/self/task"):
        import pytest

        pytest.skip("needs Linux /proc to list threads")
    script = tmp_path / "close.py"
    script.write_text(_CLOSE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, _why(r.stderr)
