"""Activation cache: round trip against a direct forward/backward, float16 gradient scaling, resume."""

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny
from gradsae.training.cache import (
    ActivationCache,
    CacheConfig,
    cache_from_arrays,
    pack_sequences,
    pow2_scale,
    to_float16,
    write_cache,
)
from gradsae.errors import GradsaeError
from gradsae.capture import summed_next_token_ce


def _cfg(tmp_path, **kw):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(60)))
    base = dict(
        model="tiny",
        layers=[0, 2],
        data=[str(corpus)],
        out=str(tmp_path / "cache"),
        context_length=16,
        seqs_per_shard=4,
        batch_size=4,
        max_tokens=500,
    )
    base.update(kw)
    return CacheConfig(**base)


def test_round_trip_matches_direct_gradient(tmp_path):
    model, tok = make_tiny("llama")
    cfg = _cfg(tmp_path)
    out = write_cache(model, tok, cfg)
    c = ActivationCache(out)
    assert c.complete and c.layers == [0, 2] and c.has_grads
    ids = torch.from_numpy(np.array(c.tokens(0))).long()
    assert ids.shape == (4, 16) and (ids[:, 0] == tok.bos_token_id).all()
    # direct computation: hidden state after block L is hidden_states[L + 1]
    for layer in (0, 2):
        h = {}

        def hook(m, a, o):
            z = (o if isinstance(o, torch.Tensor) else o[0]).detach().requires_grad_(True)
            h["z"] = z
            return z if isinstance(o, torch.Tensor) else (z, *o[1:])

        handle = model.model.layers[layer].register_forward_hook(hook)
        with torch.enable_grad():
            out_ = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            summed_next_token_ce(out_.logits, ids).backward()
        handle.remove()
        x_ref = h["z"][:, 1:].reshape(-1, h["z"].shape[-1]).detach()
        g_ref = h["z"].grad[:, 1:].reshape(-1, h["z"].shape[-1])
        x = torch.from_numpy(np.array(c.acts(0, layer))).float()
        arr, s = c.grads(0, layer)
        g = torch.from_numpy(np.array(arr)).float() / s
        assert x.shape == x_ref.shape == (4 * 15, 64)
        torch.testing.assert_close(x, x_ref, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(g, g_ref, rtol=2e-3, atol=float(g_ref.abs().max()) * 1e-3)


def test_resume_redoes_only_missing_shard(tmp_path):
    model, tok = make_tiny("gpt2")
    cfg = _cfg(tmp_path, layers=[1])
    out = write_cache(model, tok, cfg)
    m = json.loads((out / "manifest.json").read_text())
    n = len(m["shards"])
    assert n >= 3
    full = np.array(ActivationCache(out).acts(n - 1, 1))
    first_mtime = (out / "shard_00000.L1.acts.npy").stat().st_mtime_ns
    # simulate a kill during the last shard: its files are gone / partial and it is not in the manifest
    m["shards"] = m["shards"][:-1]
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    (out / f"shard_{n - 1:05d}.L1.acts.npy").unlink()
    stale = out / f".shard_{n - 1:05d}.L1.acts.k1lld.tmp.npy"  # what a kill during a write leaves
    stale.write_bytes(b"partial")
    write_cache(model, tok, cfg)
    assert not stale.exists() and not list(out.glob(".*tmp*"))
    c = ActivationCache(out)
    assert c.complete and len(c.shards) == n
    assert (out / "shard_00000.L1.acts.npy").stat().st_mtime_ns == first_mtime  # finished shard not redone
    np.testing.assert_array_equal(np.array(c.acts(n - 1, 1)), full)


def test_resume_refuses_other_config(tmp_path):
    model, tok = make_tiny("gpt2")
    write_cache(model, tok, _cfg(tmp_path, layers=[1], max_tokens=200))
    with pytest.raises(GradsaeError, match="different config"):
        write_cache(model, tok, _cfg(tmp_path, layers=[1], max_tokens=200, context_length=12))


def test_float16_gradient_scale_avoids_underflow():
    g = torch.randn(100, 8) * 1e-9  # far below float16's smallest normal number
    plain, under_plain = to_float16(g)
    s = pow2_scale(float(g.abs().max()))
    scaled, under = to_float16(g, s)
    assert under_plain > 0.5 and under == 0.0
    assert s == 2.0 ** round(np.log2(s))
    torch.testing.assert_close(torch.from_numpy(scaled).float() / s, g, rtol=1e-3, atol=0)


def test_pack_sequences_shapes():
    _, tok = make_tiny("llama")
    rows = pack_sequences(iter(["abc" * 10, "xyz" * 10]), tok, context_length=8, prepend_bos=True)
    assert rows.shape[1] == 8 and (rows[:, 0] == tok.bos_token_id).all()
    with pytest.raises(GradsaeError, match="fewer than one sequence"):
        pack_sequences(iter(["a"]), tok, context_length=64, prepend_bos=True)


def test_cache_from_arrays_round_trip(tmp_path):
    x, g = torch.randn(1000, 16), torch.randn(1000, 16) * 1e-5
    c = ActivationCache(cache_from_arrays(tmp_path / "c", x, g, shard_tokens=300))
    X, G = c.load(0, grads=True)
    assert len(c.shards) == 4 and X.shape == (1000, 16)
    torch.testing.assert_close(X.float(), x, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(G, g, rtol=1e-3, atol=1e-8)


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(GradsaeError, match="gradsae cache"):
        ActivationCache(tmp_path / "nope")


def test_temp_names_are_unique_per_write(tmp_path, monkeypatch):
    """Two writers of the same shard never share a temp file (fixed names let one rename the other's)."""
    import tempfile

    from gradsae.training import cache as cache_mod

    seen = []
    real = tempfile.mkstemp

    def spy(*a, **kw):
        fd, name = real(*a, **kw)
        seen.append(name)
        return fd, name

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", spy)
    for _ in range(2):
        cache_mod._save_npy(tmp_path / "a.npy", np.arange(6, dtype=np.float16))
    assert len(set(seen)) == 2 and all(".tmp" in n for n in seen)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(6, dtype=np.float16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_non_utf8_corpus_is_one_clear_error(tmp_path):
    model, tok = make_tiny("llama")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 na\xefve\n".encode("latin-1") * 50)
    with pytest.raises(GradsaeError, match="not UTF-8"):
        write_cache(model, tok, _cfg(tmp_path, data=[str(bad)]))


@pytest.mark.parametrize("damage", ["truncated", "object dtype", "no shards", "layers as text", "missing shard"])
def test_a_damaged_cache_is_one_line(tmp_path, damage):
    model, tok = make_tiny("llama")
    out = write_cache(model, tok, _cfg(tmp_path, layers=[1]))
    shard = sorted(out.glob("*.L1.acts.npy"))[0]
    m = json.loads((out / "manifest.json").read_text())
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "object dtype":
        np.save(shard, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif damage == "no shards":
        del m["shards"]
    elif damage == "layers as text":
        m["layers"] = "1"
    else:
        shard.unlink()
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GradsaeError) as e:
        ActivationCache(out).load(1, grads=True)
    assert "\n" not in str(e.value) and ("damaged" in str(e.value) or "missing" in str(e.value))
