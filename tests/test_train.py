"""Trainer: toy dictionary recovery, the g-SAE selection rule, kill-and-resume gives identical weights."""

import pytest
import torch

from gradsae import SAE, SAEConfig, load_sae
from gradsae.training.cache import cache_from_arrays
from gradsae.errors import GradsaeError
from gradsae.saes.sae import gsae_selection_score, topk_code
from gradsae.training.grid import build_grid, decode_dense, decode_sparse, geometric_median, lr_at, remove_parallel_grad
from gradsae.training.train import TrainConfig, run


def toy_data(N=12000, D=24, M=48, k=3, seed=0):
    """x = sparse non-negative combinations of M random unit directions (the known dictionary)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(M, D, generator=g)
    W = W / W.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(M, generator=g)[:k] for _ in range(N)])
    coef = torch.rand(N, k, generator=g) + 0.5
    x = torch.einsum("nk,nkd->nd", coef, W[idx])
    grads = torch.randn(N, D, generator=g) * 1e-4
    return W, x, grads


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    W, x, grads = toy_data()
    path = cache_from_arrays(tmp_path_factory.mktemp("toy") / "cache", x, grads, shard_tokens=4000)
    return W, path


def _cfg(cache, out, **kw):
    base = dict(
        cache=str(cache),
        out=str(out),
        architectures=["topk"],
        k=[3],
        d_sae=[96],
        batch_tokens=256,
        epochs=3,
        lr=3e-3,
        warmup_steps=10,
        holdout_shards=1,
        dead_tokens=4000,
        log_every=10,
        checkpoint_every=1000,
        threads=1,
        device="cpu",
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_topk_recovers_known_dictionary(toy_cache, tmp_path):
    W, cache = toy_cache
    out = run(_cfg(cache, tmp_path / "run"))
    sae = load_sae(out / "topk_k3")
    Wd = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    best = (W @ Wd.T).max(dim=-1).values  # best cosine of every true direction
    assert best.mean() > 0.9, best.mean()
    assert sae.cfg.norm_scaling_factor and sae.cfg.k == 3
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(96), rtol=1e-4, atol=1e-4)


def test_kill_and_resume_gives_identical_weights(toy_cache, tmp_path):
    _, cache = toy_cache
    kw = dict(architectures=["topk", "gsae"], beta=[1.0], epochs=0.5, checkpoint_every=7)
    ref = run(_cfg(cache, tmp_path / "a", **kw))
    part = tmp_path / "b"
    run(_cfg(cache, part, max_steps=5, **kw))  # "killed" after 5 steps (checkpoint written)
    assert not (part / "topk_k3").exists()
    run(_cfg(cache, part, max_steps=6, **kw))  # killed again
    run(_cfg(cache, part, **kw))  # resumed to the end
    for name in ("topk_k3", "gsae_k3_b1"):
        a, b = load_sae(ref / name), load_sae(part / name)
        for key, t in a.state_dict().items():
            assert torch.equal(t, b.state_dict()[key]), (name, key)


def test_resume_refuses_changed_config(toy_cache, tmp_path):
    _, cache = toy_cache
    run(_cfg(cache, tmp_path / "c", max_steps=2, epochs=0.3))
    with pytest.raises(GradsaeError, match="different config"):
        run(_cfg(cache, tmp_path / "c", max_steps=2, epochs=0.3, lr=1e-3))


def test_gsae_beta_zero_selects_like_topk():
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=16, d_sae=64, architecture="topk", k=5)
    topk = SAE.init_random(cfg, seed=3)
    gcfg = SAEConfig(d_in=16, d_sae=64, architecture="gsae", k=5, beta=0.0)
    gsae = SAE.init_random(gcfg, seed=3)
    x, g = torch.randn(200, 16), torch.randn(200, 16)
    a, b = topk.encode_sparse(x), gsae.encode_sparse(x, g)
    assert torch.equal(a.indices.sort(-1).values, b.indices.sort(-1).values)
    gsae.cfg.beta = 10.0  # and a nonzero beta does change the selection on random gradients
    c = gsae.encode_sparse(x, g)
    assert not torch.equal(a.indices.sort(-1).values, c.indices.sort(-1).values)


def test_selection_rule_on_hand_made_tensors():
    z = torch.tensor([[3.0, 2.0, 1.0, -4.0]])
    glat = torch.tensor([[0.0, 0.0, 10.0, 100.0]])
    score = gsae_selection_score(z, glat, beta=1.0, scale=1.0)
    torch.testing.assert_close(score, torch.tensor([[3.0, 2.0, 11.0, -404.0]]))
    code = topk_code(score, z, k=1)
    assert code.indices.tolist() == [[2]] and code.values.tolist() == [[1.0]]  # kept value is z, not the score
    # scale divides the gradient term: beta=1, scale=10 -> 1 + 1*1 = 2 < 3
    assert topk_code(gsae_selection_score(z, glat, 1.0, 10.0), z, 1).indices.tolist() == [[0]]


def test_sparse_and_dense_decoders_agree():
    from gradsae.saes.sae import SparseCode

    W, b = torch.randn(50, 8), torch.randn(8)
    code = SparseCode(torch.rand(6, 4), torch.stack([torch.randperm(50)[:4] for _ in range(6)]))  # TopK: distinct
    torch.testing.assert_close(decode_sparse(code, W, b), decode_dense(code, W, b))


def test_small_pure_pieces():
    W = torch.randn(5, 3)
    W = W / W.norm(dim=-1, keepdim=True)
    G = remove_parallel_grad(W, torch.randn(5, 3))
    torch.testing.assert_close((G * W).sum(-1), torch.zeros(5), atol=1e-6, rtol=0)
    assert lr_at(0, 100, 1.0, 10, 0.2) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, 10, 0.2) == 1.0 and lr_at(99, 100, 1.0, 10, 0.2) < 0.1
    pts = torch.cat([torch.zeros(9, 2), torch.full((1, 2), 100.0)])
    assert geometric_median(pts).norm() < 1.0  # robust to the outlier, unlike the mean
    names = [s.name for s in build_grid([9], ["topk", "gsae"], [8, 16], [0.5, 2], [4096], [0])]
    assert names == ["topk_k8", "topk_k16", "gsae_k8_b0.5", "gsae_k8_b2", "gsae_k16_b0.5", "gsae_k16_b2"]
    names = [s.name for s in build_grid([6, 14], ["topk", "e2e"], [8], [0.5], [64, 128], [0, 1])]
    assert names[:4] == ["L6/topk_k8_c64_s0", "L6/topk_k8_c64_s1", "L6/topk_k8_c128_s0", "L6/topk_k8_c128_s1"]
    assert len(names) == 16 and names[-1] == "L14/e2e_k8_c128_s1"
    with pytest.raises(GradsaeError, match="cannot train architecture 'relu'"):
        build_grid([9], ["relu"], [8], [0.5], [64], [0])


def test_snapshots_export_mid_run_weights_and_may_change_on_resume(toy_cache, tmp_path):
    _, cache = toy_cache
    kw = dict(epochs=0.5, checkpoint_every=2, shuffle_batches=2)
    out = tmp_path / "s"
    run(_cfg(cache, out, max_steps=2, **kw))  # a first invocation without snapshots
    run(_cfg(cache, out, snapshot_tokens=[1024, 10**9], **kw))  # resumed with them: allowed
    snap = load_sae(out / "snapshots" / "1024" / "topk_k3")
    final = load_sae(out / "topk_k3")
    assert 1024 <= snap.cfg.metadata["model_tokens"] < final.cfg.metadata["model_tokens"]
    assert not torch.equal(snap.W_dec, final.W_dec)
    assert not (out / "snapshots" / str(10**9)).exists()  # never reached
    with pytest.raises(GradsaeError, match="snapshot-tokens"):
        run(_cfg(cache, tmp_path / "bad", snapshot_tokens=[0], **kw))


def test_max_tokens_may_change_before_the_decay_and_gives_the_same_weights(toy_cache, tmp_path):
    _, cache = toy_cache
    kw = dict(checkpoint_every=2, shuffle_batches=2, decay_frac=0.5)
    ref = run(_cfg(cache, tmp_path / "ref", max_tokens=256 * 12, **kw))
    part = tmp_path / "part"
    run(_cfg(cache, part, max_tokens=256 * 40, max_steps=4, **kw))  # planned longer, stopped at step 4
    run(_cfg(cache, part, max_tokens=256 * 12, **kw))  # shortened: the decay of 12 steps starts at 6 > 4
    a, b = load_sae(ref / "topk_k3"), load_sae(part / "topk_k3")
    for key, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[key]), key
    late = tmp_path / "late"
    run(_cfg(cache, late, max_tokens=256 * 12, max_steps=8, **kw))  # step 8: inside the decay
    with pytest.raises(GradsaeError, match="different config"):
        run(_cfg(cache, late, max_tokens=256 * 40, **kw))


def test_a_kill_while_exporting_a_snapshot_gives_the_uninterrupted_snapshot(toy_cache, tmp_path, monkeypatch):
    """Snapshots are exported before the checkpoint that passes them: a run killed mid-export resumes from the
    checkpoint before, trains to the same step and exports the same weights."""
    from gradsae.saes.sae import SAE

    _, cache = toy_cache
    kw = dict(epochs=0.5, checkpoint_every=2, shuffle_batches=2, snapshot_tokens=[1024], k=[3, 5])
    ref = run(_cfg(cache, tmp_path / "ref", **kw))
    real_save, calls = SAE.save, []

    def dying_save(self, path):
        if "snapshots" in str(path):
            calls.append(path)
            if len(calls) == 2:  # the second SAE of the snapshot: killed half-way
                raise KeyboardInterrupt
        return real_save(self, path)

    monkeypatch.setattr(SAE, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(cache, tmp_path / "cut", **kw))
    monkeypatch.setattr(SAE, "save", real_save)
    out = run(_cfg(cache, tmp_path / "cut", **kw))
    for name in ("topk_k3", "topk_k5"):
        a, b = load_sae(ref / "snapshots" / "1024" / name), load_sae(out / "snapshots" / "1024" / name)
        assert torch.equal(a.W_dec, b.W_dec) and a.cfg.metadata["train_steps"] == b.cfg.metadata["train_steps"]
    assert not list((tmp_path / "cut").rglob(".*.tmp*"))  # no temp file survives the rerun


def test_snapshot_tokens_past_the_end_are_refused(toy_cache, tmp_path):
    _, cache = toy_cache
    with pytest.raises(GradsaeError, match="is not before --max-tokens 2048"):
        run(_cfg(cache, tmp_path / "s", max_tokens=2048, snapshot_tokens=[4096]))
