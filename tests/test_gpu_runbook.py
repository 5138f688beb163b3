"""The GPU runbook (scripts/gpu/runbook.py) at tiny sizes on the CPU: the model travels in halves and is joined
by hash, every call fits the device's 64 MiB, and each device step runs end to end."""

import gzip
import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rb():
    spec = importlib.util.spec_from_file_location("runbook", REPO / "scripts" / "gpu" / "runbook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel that pip installs offline."""
    path = folder / "probe_pkg-1.0-py3-none-any.whl"
    files = {
        "probe_pkg/__init__.py": "VALUE = 7\n",
        "probe_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: probe-pkg\nVersion: 1.0\n",
        "probe_pkg-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(
            "probe_pkg-1.0.dist-info/RECORD", "".join(f"{n},,\n" for n in files) + "probe_pkg-1.0.dist-info/RECORD,,\n"
        )
    return path


def test_split_then_join_restores_the_file_and_checks_its_hash(rb, tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(bytes(range(256)) * 1001)
    parts = [tmp_path / "a" / "p1", tmp_path / "b" / "p2"]
    sizes = rb.split_file(src, parts)
    assert sum(sizes) == src.stat().st_size and abs(sizes[0] - sizes[1]) <= 1
    out = rb.join_parts(parts, tmp_path / "joined.bin", rb.sha256(src))
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(SystemExit, match="sha256"):
        rb.join_parts(parts[::-1], tmp_path / "wrong.bin", rb.sha256(src))
    assert not (tmp_path / "wrong.bin").exists() and not (tmp_path / "wrong.bin.tmp").exists()


def test_every_call_fits_the_device_limit_once_slimmed(rb):
    """The work tree minus what `slim` removes, plus the larger half of the 98 MB model, stays under 64 MiB."""
    heavy = rb.heavy_files()
    assert heavy and not any(n.startswith(rb.KEEP_BUNDLED) for n in heavy)
    assert any("/topk/L14/" in n for n in heavy)
    slim_tree = rb.tree_bytes() - sum((REPO / n).stat().st_size for n in heavy if (REPO / n).exists())
    half_model, wiki = 49.2 * 2**20, 5 * 8.3e6  # SmolLM2 Q4_1 in halves; wiki-00..04
    assert slim_tree + max(half_model, wiki) < rb.CALL_LIMIT, f"slim tree {slim_tree / 2**20:.1f} MiB"


def test_the_device_steps_run_end_to_end_at_tiny_sizes(rb, tmp_path, monkeypatch):
    from conftest import make_tiny

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    fake = tmp_path / rb.MODEL_NAME
    fake.write_bytes(b"gguf-bytes" * 5000)
    shards = []
    for name in ("wiki-00.jsonl.gz", "wiki-04.jsonl.gz"):
        p = tmp_path / "wiki" / name
        p.parent.mkdir(exist_ok=True)
        with gzip.open(p, "wt") as f:
            for i in range(80):
                f.write(json.dumps({"title": f"t{i}", "text": f"Article {i} of {name}: the quick brown fox {i * 3}."}))
                f.write("\n")
        shards.append(p)
    stage, root, out = tmp_path / "stage", tmp_path / "device", tmp_path / "out"
    out.mkdir()
    manifest = rb.prepare(fake, _wheel(tmp_path), shards, stage)
    assert manifest["sha256"] == rb.sha256(fake) and sorted(manifest["data"]) == [s.name for s in shards]
    info = rb.step_receive(root, out, stage)
    assert "torch" in info and json.loads((out / "env.json").read_text())["cuda"] == info["cuda"]
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os, probe_pkg\n"
        "def test_joined_model_and_wheel():\n"
        f"    assert os.environ['GRADSAE_SMOLLM2_GGUF'].endswith({rb.MODEL_NAME!r})\n"
        "    assert probe_pkg.VALUE == 7\n"
    )
    assert rb.step_check(root, out, stage, tests=str(probe)) == 0
    assert (root / rb.MODEL_NAME).read_bytes() == fake.read_bytes()
    assert json.loads((out / "check.json").read_text())["rc"] == 0
    tiny_grid = {
        "layer": 1,
        "d_sae": 32,
        "ks": "4",
        "seeds": "0",
        "batch_size": 2,
        "context_length": 16,
        "max_tokens_cap": 256,
    }
    res = rb.step_grid(root, out, minutes=0.5, stage=stage, grid=tiny_grid, model=str(tmp_path / "tiny"), device="cpu")
    assert all(a["rc"] == 0 for a in res["arms"].values()), (out / "grid.log").read_text()[-2000:]
    assert res["budget_tokens"] >= 4 * 2 * 16 and len(res["evals"]) == 3  # topk, gsae, e2e
    import tarfile

    with tarfile.open(out / "grid.tar.gz") as tar:
        names = tar.getnames()
    assert "grid.json" in names and sum(n.endswith("eval.json") for n in names) == 3
