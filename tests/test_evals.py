"""Evals: metric functions on hand-made tensors, the KV-cached steering effect against a brute-force
forward pass, and a full evaluate() on a tiny model and cache."""

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny, random_sae
from gradsae.training.cache import ActivationCache, CacheConfig, write_cache
from gradsae.training.evals import (
    EvalConfig,
    GradAwareSAE,
    evaluate,
    max_decoder_cosine,
    next_token_ce_kl,
    reconstruction_metrics,
    steering_deltas,
    steering_effect,
)
from gradsae.hooks import block, join_output, split_output, unembedding


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    model, tok = make_tiny("llama")
    d = tmp_path_factory.mktemp("ev")
    corpus = d / "c.txt"
    corpus.write_text("\n".join(f"row {i}: pack my box with five dozen liquor jugs {i * 3}" for i in range(30)))
    cfg = CacheConfig(
        model="tiny",
        layers=[1],
        data=[str(corpus)],
        out=str(d / "cache"),
        context_length=16,
        seqs_per_shard=4,
        batch_size=4,
        max_tokens=300,
    )
    return model, tok, ActivationCache(write_cache(model, tok, cfg)), d


def test_reconstruction_metrics_on_hand_made_tensors():
    x = torch.randn(50, 4)
    m = reconstruction_metrics(x, x)
    assert m["nmse"] == 0 and m["explained_variance"] == 1 and m["cossim"] == pytest.approx(1)
    assert reconstruction_metrics(x, torch.zeros_like(x))["nmse"] == pytest.approx(1)
    assert reconstruction_metrics(x, x.mean(0).expand_as(x))["explained_variance"] == pytest.approx(0, abs=1e-6)


def test_ce_kl_and_steering_deltas():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    c, s, kl = next_token_ce_kl(logits, logits, ids, start=1)
    assert c.shape == (2 * 3,) and torch.equal(c, s) and kl.abs().max() < 1e-6
    p = torch.tensor([0.5, 0.3, 0.2])
    ps = torch.tensor([[0.2, 0.6, 0.2], [0.4, 0.3, 0.3]])
    a, o = steering_deltas(p, ps, torch.tensor([[1], [1]]))
    torch.testing.assert_close(a, torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(o, torch.tensor([0.0, 0.1]))


def test_max_decoder_cosine():
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    torch.testing.assert_close(
        max_decoder_cosine(W, chunk=2), torch.tensor([0.7071, 0.7071, 0.7071]), atol=1e-4, rtol=0
    )


def test_steering_effect_matches_brute_force(tiny_setup):
    model, _, cache, _ = tiny_setup
    sae = random_sae(arch="topk", k=8, layer=1)
    ids = torch.from_numpy(np.array(cache.tokens(0))).long()
    cfg = EvalConfig(steer_latents=3, steer_contexts=2, steer_alphas=[2.0, 8.0], steer_top_n=4, seed=1)
    alive = torch.ones(sae.d_sae, dtype=torch.bool)
    res = steering_effect(model, sae, ids, alive, cfg, drop_first=1)
    # brute force: full forward of the prefix, vector added at its last position
    lat = torch.tensor(res["latents"])
    # re-derive the contexts the same way steering_effect does (same generator draws)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.randperm(sae.d_sae, generator=g)
    seqs = torch.randint(0, ids.shape[0], (2,), generator=g)
    pos = torch.randint(2, ids.shape[1], (2,), generator=g)
    W_U = unembedding(model).float()
    dirs = sae.W_dec[lat] / sae.W_dec[lat].norm(dim=-1, keepdim=True)
    assoc = (dirs @ W_U.T).topk(4, dim=-1).indices
    total = torch.zeros(2, 3)
    delta = {"v": None}

    def hook(m, a, out):
        if delta["v"] is None:
            return None
        Z, rest = split_output(out)
        Z = Z.clone()
        Z[:, -1] += delta["v"]
        return join_output(Z, rest)

    h = block(model, 1).register_forward_hook(hook)
    try:
        for s, p in zip(seqs.tolist(), pos.tolist()):
            prefix = ids[s : s + 1, :p]
            with torch.no_grad():
                delta["v"] = None
                clean = model(input_ids=prefix).logits[0, -1].softmax(-1)
                for ai, alpha in enumerate([2.0, 8.0]):
                    for li in range(3):
                        delta["v"] = alpha * dirs[li]
                        pst = model(input_ids=prefix).logits[0, -1].softmax(-1)
                        total[ai, li] += (pst - clean)[assoc[li]].sum()
                delta["v"] = None
    finally:
        h.remove()
    torch.testing.assert_close(torch.tensor(res["assoc_per_latent"]), total / 2, atol=1e-4, rtol=1e-3)


def test_grad_aware_sae_in_splice_uses_cached_gradient(tiny_setup):
    model, _, cache, _ = tiny_setup
    sae = random_sae(arch="gsae", k=4, layer=1)
    sae.cfg.beta = 50.0
    x, g = cache.load(1, [0], grads=True)
    wrapped = GradAwareSAE(sae)
    wrapped.grad_x = g.reshape(4, 15, -1)
    h = wrapped.encode(x.float().reshape(4, 15, -1))
    ref = sae.encode(x.float(), g).reshape(4, 15, -1)
    assert torch.equal(h, ref)
    assert not torch.equal(h, sae.encode(x.float()).reshape(4, 15, -1))  # the gradient changed the selection


def test_evaluate_writes_saebench_style_json_and_plots(tiny_setup):
    model, _, cache, d = tiny_setup
    sae = random_sae(arch="gsae", k=8, layer=1)
    cfg = EvalConfig(
        sae="toy",
        out=str(d / "eval"),
        holdout_shards=2,
        n_seqs=4,
        batch_size=4,
        steer_latents=4,
        steer_contexts=2,
        steer_alphas=[4.0, 16.0],
    )
    res = evaluate(model, sae, cache, cfg)
    on_disk = json.loads((d / "eval" / "eval.json").read_text())
    assert (
        on_disk["eval_result_metrics"]["reconstruction_quality"]["nmse"]
        == res["eval_result_metrics"]["reconstruction_quality"]["nmse"]
    )
    assert set(res["eval_result_metrics_by_selection"]) == {"gradient", "topk"}
    m = res["eval_result_metrics"]
    for section, key in (
        ("sparsity", "l0"),
        ("model_performance_preservation", "l_added"),
        ("model_behavior_preservation", "kl_div_with_sae"),
        ("misc", "dead_frac"),
    ):
        assert key in m[section]
    assert m["sparsity"]["l0"] <= 8
    assert len(m["steering"]["assoc_mean"]) == 2
    for png in ("density_hist.png", "decoder_maxcos_hist.png", "steering.png"):
        assert (d / "eval" / png).stat().st_size > 1000
    # beta = 0: gradient-aware selection is exactly TopK
    by = res["eval_result_metrics_by_selection"]
    assert by["gradient"]["reconstruction_quality"] == by["topk"]["reconstruction_quality"]


def test_splice_keep_first_leaves_the_first_position_alone(tiny_setup):
    from gradsae import Splice

    model, _, cache, _ = tiny_setup
    sae = random_sae(arch="topk", k=8, layer=1)
    ids = torch.from_numpy(np.array(cache.tokens(0))).long()
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with Splice(model, sae, error="none", keep_first=1):
            kept = model(input_ids=ids).logits
        with Splice(model, sae, error="none"):
            spliced = model(input_ids=ids).logits
    torch.testing.assert_close(kept[:, 0], clean[:, 0])  # causal: position 0 sees only itself
    assert not torch.allclose(spliced[:, 0], clean[:, 0])
    assert not torch.allclose(kept[:, 1:], clean[:, 1:])


def test_dead_latents_by_both_rules_are_reported(tiny_setup):
    from gradsae.training.evals import activation_metrics

    model, _, cache, d = tiny_setup
    sae = random_sae(arch="topk", k=4, layer=1)
    sae.cfg.metadata.update({"dead_frac_train": 0.25, "dead_frac_train_5batches": 0.5})  # as `gradsae train` writes
    cfg = EvalConfig(
        sae="toy",
        out=str(d / "eval5"),
        holdout_shards=2,
        n_seqs=2,
        batch_size=2,
        steer_latents=0,
        plots=False,
        dead_batch_tokens=4,
    )
    misc = evaluate(model, sae, cache, cfg)["eval_result_metrics"]["misc"]
    x, _ = cache.load(1, [len(cache.shards) - 2, len(cache.shards) - 1])
    _, tail = activation_metrics(sae, x[-20:], None)  # the last 5 batches of 4 tokens
    assert misc["dead_frac_5batches"] == pytest.approx(float((tail == 0).float().mean()))
    assert misc["dead_frac_5batches"] >= misc["dead_frac"]  # a window of 20 tokens sees fewer latents fire
    assert misc["dead_frac_5batches"] > 0
    assert (misc["dead_frac_train"], misc["dead_frac_train_5batches"]) == (0.25, 0.5)


def test_distributions_count_every_latent_once():
    import torch
    from gradsae.training.evals import distributions

    density = torch.tensor([0.0, 1e-8, 1e-3, 0.5, 1.0, 0.0], dtype=torch.float64)
    maxcos = torch.tensor([-1.0, -0.2, 0.0, 0.33, 0.99, 1.0])
    d = distributions(density, maxcos)
    assert d["dead"] == 2 and sum(d["density_log10_counts"]) == 4  # 1e-8 is clipped into the first bin
    assert d["density_log10_counts"][0] == 1 and d["density_log10_counts"][-1] == 1
    assert sum(d["max_cos_counts"]) == 6 and d["max_cos_counts"][0] == 1 and d["max_cos_counts"][-1] == 2


def test_saebench_scores_are_one_for_an_exact_sae_and_zero_ablation_zeroes_the_site(tiny_setup):
    """ce_loss_score / kl_div_score (SAEBench): an SAE that reconstructs x exactly keeps everything zero ablation
    loses (both scores 1); the zero-ablation splice equals zeroing the block output by hand."""
    from gradsae import SAE, SAEConfig, Splice
    from gradsae.training.evals import ZeroAblation, model_metrics, saebench_score

    model, _, cache, _ = tiny_setup
    D = 64
    cfg = SAEConfig(d_in=D, d_sae=2 * D, architecture="topk", k=2 * D, hook_name="blocks.1.hook_resid_post")
    exact = SAE.init_random(cfg)
    eye = torch.eye(D)
    with torch.no_grad():  # relu(x) - relu(-x) = x
        exact.W_enc.copy_(torch.cat([eye, -eye], 1))
        exact.W_dec.copy_(torch.cat([eye, -eye], 0))
        exact.b_enc.zero_(), exact.b_dec.zero_()
    ids = torch.from_numpy(np.array(cache.tokens(0))).long()
    m = model_metrics(model, exact.eval(), ids, None, 1, 4)
    perf, beh = m["model_performance_preservation"], m["model_behavior_preservation"]
    assert perf["ce_loss_score"] == pytest.approx(1.0, abs=1e-4) and beh["kl_div_score"] == pytest.approx(1.0, abs=1e-4)
    assert perf["ce_loss_with_ablation"] != perf["ce_loss_without_sae"] and beh["kl_div_with_ablation"] > 0

    def zero_block_output(module, args, out):
        h, rest = split_output(out)
        h = h.clone()
        h[:, 1:] = 0
        return join_output(h, rest)

    handle = block(model, 1).register_forward_hook(zero_block_output)
    try:
        with torch.no_grad():
            by_hand = model(input_ids=ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), Splice(model, ZeroAblation(random_sae(layer=1)), error="none", keep_first=1):
        spliced = model(input_ids=ids).logits
    torch.testing.assert_close(spliced, by_hand)
    assert saebench_score(1.0, 0.0) is None
