"""SAEs at the attention output, the MLP output and the heads' outputs before W_O (``hooks.SPLICE_SITES``):
spliced where TransformerLens / sae-lens define each site, on the tiny models of every architecture."""

import pytest
import torch

from conftest import ARCHS, make_tiny, random_sae
from gradsae import GradsaeError
from gradsae.hooks import decoder_layers, site_of
from gradsae.influence import Example, influence
from gradsae.splice import RowEdit, Splice

SITES = ("hook_attn_out", "attn.hook_z", "hook_mlp_out")


def _attn(blk):
    return next(getattr(blk, n) for n in ("self_attn", "attn") if hasattr(blk, n))


def _proj(attn):
    return next(getattr(attn, n) for n in ("o_proj", "c_proj") if hasattr(attn, n))


def _zeroed_by_hand(model, layer: int, site: str):
    """A hook that makes ``site`` of block ``layer`` what it is when the site's activation is zero, written
    from the module structure without gradsae: the attention / MLP module's output set to what its own
    layers give for a zero input (a post-norm, where the block has one, maps 0 to 0)."""
    blk = decoder_layers(model)[layer]
    if site == "hook_mlp_out":
        return blk.mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    attn = _attn(blk)

    def hook(m, a, out):
        first = out[0] if isinstance(out, tuple) else out
        proj = _proj(attn)
        new = (
            proj(torch.zeros(*first.shape[:-1], _width(proj), dtype=first.dtype))
            if site == "attn.hook_z"
            else 0 * first
        )
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return attn.register_forward_hook(hook)


def _width(proj):
    return proj.in_features if isinstance(proj, torch.nn.Linear) else proj.weight.shape[0]


def _site_sae(model, site, layer=1, **kw):
    width = _width(_proj(_attn(decoder_layers(model)[layer]))) if site == "attn.hook_z" else 64
    return random_sae(d_in=width, site=site, layer=layer, **kw)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_a_zero_sae_at_a_site_is_that_site_zeroed(arch, site):
    """An SAE whose reconstruction is 0, spliced without the error term, is the site's activation zeroed: the
    splice is at the right module and nothing else of the block changes."""
    model, tok = make_tiny(arch)
    sae = _site_sae(model, site)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    ids = torch.tensor([tok("the quick brown fox", add_special_tokens=True)["input_ids"]])
    clean = _logits(model, ids)
    with Splice(model, sae, error="none"):
        spliced = _logits(model, ids)
    handle = _zeroed_by_hand(model, 1, site)
    try:
        by_hand = _logits(model, ids)
    finally:
        handle.remove()
    torch.testing.assert_close(spliced, by_hand, rtol=1e-4, atol=1e-4)
    assert (spliced - clean).abs().max() > 1e-3  # the site matters: the test can fail


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_keeping_the_error_term_leaves_the_model_unchanged_and_passes_gradients(arch, site):
    model, tok = make_tiny(arch)
    sae = _site_sae(model, site, bias=0.2)
    ids = torch.tensor([tok("hello there", add_special_tokens=True)["input_ids"]])
    clean = _logits(model, ids)
    with Splice(model, sae, error="keep", grad=True) as s:
        out = model(input_ids=ids).logits.float()
        out[0, -1].log_softmax(-1)[5].backward()
    torch.testing.assert_close(out.detach(), clean, rtol=1e-4, atol=1e-4)
    g = s.latents.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("site,layer", [("hook_mlp_out", 1), ("attn.hook_z", 1), ("hook_attn_out", 0)])
def test_exact_ablation_at_a_site_equals_rerunning_by_hand(arch, site, layer):
    """The exact method's shared trunk stops below the block that holds the site (none for block 0)."""
    model, tok = make_tiny(arch)
    sae = _site_sae(model, site, layer=layer, d_sae=3, bias=0.5, seed=4)
    res = influence(model, tok, sae, [Example("hello", "abc")], target="logprob", method="exact")[0]
    ids = tok("hello abc", add_special_tokens=True)["input_ids"]
    x = torch.tensor([ids])
    n_p = len(tok("hello")["input_ids"])

    def lp(edit=None):
        with torch.no_grad(), Splice(model, sae, edits=None if edit is None else [edit]):
            logits = model(input_ids=x).logits[0].log_softmax(-1)
        return sum(logits[t - 1, ids[t]].item() for t in range(n_p, len(ids)))

    full = lp()
    assert res.target_value == pytest.approx(full, abs=1e-5)
    for c in range(3):
        by_hand = (full - lp(RowEdit(zero=[c], at=0, until=len(ids) - 1))) / (len(ids) - 1)
        assert res.scores[c].item() == pytest.approx(by_hand, abs=1e-5)


def test_site_names_and_refusals():
    model, _ = make_tiny("llama")
    assert site_of("layers.1.mlp") == (1, "hook_mlp_out") == site_of("blocks.1.hook_mlp_out")
    assert site_of("model.layers.2.self_attn.o_proj.input") == (2, "attn.hook_z")
    assert site_of("blocks.3.hook_resid_pre") == (2, "hook_resid_post") and site_of("nonsense") is None
    mlp = random_sae(site="hook_mlp_out")
    assert Splice(model, mlp, layer=2).layer == 2 and Splice(model, mlp, layer=2).site == "hook_mlp_out"
    with pytest.raises(GradsaeError, match="names the site hook_resid_post"):
        Splice(model, mlp, layer="blocks.1.hook_resid_post")  # never moved to the residual stream
    for hook in ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in"):
        with pytest.raises(GradsaeError, match="splices only at"):
            Splice(model, random_sae(site=hook.split(".", 2)[2]))
    with pytest.raises(GradsaeError, match="does not match the model's hidden size"):
        Splice(model, random_sae(d_in=32, site="hook_mlp_out"))


def test_residual_only_commands_refuse_a_site_sae_in_one_line():
    """eval, sensitivity and train --init-from change or read the residual stream itself (check_compatible's
    default); the dashboard and every splicing command take every site."""
    from gradsae.splice import check_compatible

    model, _ = make_tiny("llama")
    for sae in (random_sae(site="hook_mlp_out"), _transcoder()):
        with pytest.raises(GradsaeError, match="splices only at hook_resid_post"):
            check_compatible(model, sae, None)


def _reader(site: str, layer: int = 1):
    """An SAE whose latents are [relu(Z), relu(-Z)]: Z at ``site`` read back exactly as H[:D] - H[D:]."""
    sae = random_sae(d_in=64, d_sae=128, site=site, layer=layer)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(64), -torch.eye(64)], dim=1))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_and_mlp_outputs_add_up_to_the_block_update(arch):
    """TransformerLens's definition, checked structurally: resid_post = resid_pre + attn_out + mlp_out (Gemma's
    post-norms included in the two outputs)."""
    model, tok = make_tiny(arch)
    ids = torch.tensor([tok("the quick brown fox", add_special_tokens=True)["input_ids"]])
    with torch.no_grad(), Splice(model, _reader("hook_attn_out"), error="keep", capture=True) as a:
        with Splice(model, _reader("hook_mlp_out"), error="keep", capture=True) as m:
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    z = [s.latents[..., :64] - s.latents[..., 64:] for s in (a, m)]
    torch.testing.assert_close(z[0] + z[1], hs[2] - hs[1], rtol=1e-4, atol=1e-4)
    assert z[0].abs().max() > 1e-3 and z[1].abs().max() > 1e-3


# ---- transcoders: read the MLP's input, write its output ------------------------------------------------


def _transcoder(read: str = "ln2.hook_normalized", layer: int = 1, skip: bool = True, seed: int = 0):
    from gradsae import SAE, SAEConfig

    cfg = SAEConfig(
        d_in=64,
        d_sae=96,
        architecture="relu",
        apply_b_dec_to_input=False,
        hook_name=f"blocks.{layer}.{read}",
        hook_name_out=f"blocks.{layer}.hook_mlp_out",
        d_out=64,
        skip_connection=skip,
    )
    t = SAE.init_random(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        t.b_enc.copy_(torch.randn(96, generator=g) * 0.1)
        if skip:
            t.W_skip.copy_(torch.randn(64, 64, generator=g) * 0.1)
    return t


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("read", ["ln2.hook_normalized", "hook_mlp_in"])
def test_a_skip_only_transcoder_replaces_the_mlp_by_its_skip_map(arch, read):
    """With a zero decoder, a spliced skip transcoder makes the MLP's output x @ W_skip, x what it reads: the MLP's
    input (ln2.hook_normalized) or the residual before the pre-MLP norm (hook_mlp_in), written where sae-lens
    writes a Gemma Scope 2 transcoder (after the post-MLP norm in Gemma 2/3)."""
    model, tok = make_tiny(arch)
    t = _transcoder(read)
    with torch.no_grad():
        t.W_dec.zero_()
        t.b_dec.zero_()
    ids = torch.tensor([tok("the quick brown fox", add_special_tokens=True)["input_ids"]])
    with Splice(model, t, error="none"):
        spliced = _logits(model, ids)
    blk = decoder_layers(model)[1]
    post = getattr(blk, "post_feedforward_layernorm", None)
    norm = getattr(blk, "pre_feedforward_layernorm", None) if post is not None else None
    src = (
        blk.mlp if read == "ln2.hook_normalized" else norm or getattr(blk, "post_attention_layernorm", None) or blk.ln_2
    )
    seen = {}
    handles = [src.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))]
    handles.append((post or blk.mlp).register_forward_hook(lambda m, a, out: seen["x"] @ t.W_skip))
    try:
        by_hand = _logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(spliced, by_hand, rtol=1e-4, atol=1e-4)
    assert (spliced - _logits(model, ids)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_a_transcoder_with_its_error_term_leaves_the_model_unchanged(arch):
    model, tok = make_tiny(arch)
    t = _transcoder()
    ids = torch.tensor([tok("hello there", add_special_tokens=True)["input_ids"]])
    clean = _logits(model, ids)
    with Splice(model, t, error="keep", grad=True) as s:
        out = model(input_ids=ids).logits.float()
        out[0, -1].log_softmax(-1)[5].backward()
    torch.testing.assert_close(out.detach(), clean, rtol=1e-4, atol=1e-4)
    assert s.latents.grad is not None and s.latents.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_exact_ablation_of_transcoder_latents_equals_rerunning_by_hand(arch):
    model, tok = make_tiny(arch)
    t = _transcoder(seed=3)
    res = influence(model, tok, t, [Example("hello", "abc")], target="logprob", method="exact")[0]
    ids = tok("hello abc", add_special_tokens=True)["input_ids"]
    x = torch.tensor([ids])
    n_p = len(tok("hello")["input_ids"])

    def lp(edit=None):
        with torch.no_grad(), Splice(model, t, edits=None if edit is None else [edit]):
            logits = model(input_ids=x).logits[0].log_softmax(-1)
        return sum(logits[i - 1, ids[i]].item() for i in range(n_p, len(ids)))

    full = lp()
    active = res.baseline.nonzero().flatten()[:3].tolist()
    assert active
    for c in active:
        by_hand = (full - lp(RowEdit(zero=[c], at=0, until=len(ids) - 1))) / (len(ids) - 1)
        assert res.scores[c].item() == pytest.approx(by_hand, abs=1e-5)


def test_transcoders_gradsae_cannot_splice_are_one_line():
    from gradsae import SAE, SAEConfig

    model, _ = make_tiny("llama")
    for src, dst in (
        ("blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"),
        ("blocks.1.hook_mlp_in", "blocks.2.hook_mlp_out"),
    ):
        cfg = SAEConfig(d_in=64, d_sae=8, apply_b_dec_to_input=False, hook_name=src, hook_name_out=dst, d_out=64)
        with pytest.raises(GradsaeError, match="replace one block's MLP"):
            Splice(model, SAE(cfg))
    with pytest.raises(GradsaeError, match="needs hook_name_out"):
        SAEConfig(d_in=64, d_sae=8, d_out=32)


# ---- dashboards read latents at the SAE's own site -------------------------------------------------------


@pytest.mark.parametrize("kind", ["hook_mlp_out", "attn.hook_z", "transcoder"])
def test_dashboard_evidence_is_the_latents_at_the_sites_own_place(kind):
    """The dashboard's activation-only pass (stopped after the block) and its influence pass give the latents the
    SAE computes from the activation it reads, taken by hand from the module."""
    from gradsae.dashboard.model_pass import batch_evidence

    model, tok = make_tiny("gemma2")
    sae = _transcoder(seed=2) if kind == "transcoder" else _site_sae(model, kind, bias=0.2)
    blk = decoder_layers(model)[1]
    module, pre = {
        "hook_mlp_out": (blk.post_feedforward_layernorm, False),
        "attn.hook_z": (blk.self_attn.o_proj, True),
    }.get(kind, (blk.mlp, True))
    ids = torch.tensor([tok("the quick brown fox jumps", add_special_tokens=True)["input_ids"]] * 2)
    seen = {}
    hook = (
        module.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
        if pre
        else module.register_forward_hook(lambda m, a, out: seen.update(x=out))
    )
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        hook.remove()
    want = sae.encode(seen["x"].float())
    rows = torch.arange(2)
    fast = batch_evidence(model, sae, 1, ids, rows, skip_first=0, influence=False)
    full = batch_evidence(model, sae, 1, ids, rows, skip_first=0, influence=True)
    torch.testing.assert_close(fast.H, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full.H, want, rtol=1e-4, atol=1e-5)
    assert want.abs().sum() > 0


# ---- several SAEs scored in one backward ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_several_saes_in_one_backward_score_each_latent_as_its_sae_alone(arch):
    """A residual SAE at block 0, an attention-output SAE and a transcoder at block 1, a residual SAE at block 2:
    spliced together with their error terms, each passes the others' gradients through unchanged."""
    model, tok = make_tiny(arch)
    saes = [
        random_sae(layer=0, bias=0.2, seed=1),
        _site_sae(model, "hook_attn_out", layer=1, bias=0.2, seed=2),
        _transcoder(layer=1, seed=3),
        random_sae(layer=2, bias=0.2, seed=4),
    ]
    exs = [Example("the quick brown", " fox jumps"), Example("hello", " world again")]
    together = influence(model, tok, saes, exs, error="keep", batch_size=2)
    assert len(together) == 4 and all(len(r) == 2 for r in together)
    for sae, res in zip(saes, together):
        alone = influence(model, tok, sae, exs, error="keep", batch_size=2)
        for a, b in zip(alone, res):
            torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(b.baseline, a.baseline)
            assert b.target_value == pytest.approx(a.target_value, abs=1e-5)
            assert a.scores.abs().sum() > 0


def test_several_saes_refuse_what_they_do_not_do():
    model, tok = make_tiny("llama")
    two = [random_sae(layer=0), random_sae(layer=2)]
    ex = [Example("hello", " world")]
    for kw, says in (({"method": "exact"}, "method='exact'"), ({"error": "none"}, "error='none'")):
        with pytest.raises(GradsaeError, match=says):
            influence(model, tok, two, ex, **{"error": "keep", **kw})
    with pytest.raises(GradsaeError, match="give each example's output"):
        influence(model, tok, two, ["hello"], error="keep")
    with pytest.raises(GradsaeError, match="same site of the same block"):
        influence(model, tok, [random_sae(layer=1), random_sae(layer=1, seed=5)], ex, error="keep")


def test_influence_command_ranks_several_saes_together(tmp_path, capsys):
    import json

    from gradsae.cli import main

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    random_sae(layer=0, bias=0.3, seed=1).save(tmp_path / "a")
    _site_sae(model, "hook_mlp_out", layer=1, bias=0.3, seed=2).save(tmp_path / "b")
    args = [
        "influence",
        "--model",
        str(tmp_path / "m"),
        "--prompt",
        "hello there",
        "--output",
        " world",
        "--error",
        "keep",
    ]
    out = tmp_path / "r.json"
    assert main([*args, "--sae", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--top", "6", "--out", str(out)]) == 0
    ex = json.loads(out.read_text())["examples"][0]
    rows = ex["ranking"]
    assert len(rows) == 6 and [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert {r["hook"] for r in rows} <= {"blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"}
    assert len(ex["per_sae"]) == 2
    capsys.readouterr()
    assert main([*args, "--sae", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--layer", "1"]) == 2
    assert "drop --layer" in capsys.readouterr().err


# ---- capture and training at a site ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_capture_at_sites_gives_the_site_and_its_gradient(arch):
    """attn_out + mlp_out is the block update (as the splice reads them), and the gradient at hook_mlp_out is the
    gradient at the block's output (the MLP output is added to the residual last)."""
    from gradsae.capture import capture

    model, tok = make_tiny(arch)
    ids = torch.tensor([tok("the quick brown fox jumps", add_special_tokens=True)["input_ids"]] * 2)
    res, res_g = capture(model, ids, [0, 1], grad=True)
    att, att_g = capture(model, ids, [1], grad=True, site="hook_attn_out")
    mlp, mlp_g = capture(model, ids, [1], grad=True, site="hook_mlp_out")
    torch.testing.assert_close(att[1] + mlp[1], res[1] - res[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mlp_g[1], res_g[1], rtol=1e-4, atol=1e-6)
    assert att_g[1].abs().max() > 0
    stopped, none = capture(model, ids, [1], grad=False, site="hook_attn_out")
    torch.testing.assert_close(stopped[1], att[1])
    assert none == {}


def _train_args(model_dir, corpus, out, *extra):
    return [
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(corpus),
        "--layers",
        "1",
        "--k",
        "4",
        "--d-sae",
        "32",
        "--batch-size",
        "4",
        "--context-length",
        "16",
        "--max-tokens",
        str(4 * 16 * 6),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def llama_dir(tmp_path):
    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the {i} quick brown foxes jump over {i + 1} lazy dogs today" for i in range(60)))
    return tmp_path / "m", corpus


@pytest.mark.parametrize("site", ["hook_attn_out", "hook_mlp_out"])
def test_train_at_a_site_writes_saes_that_read_it_and_splice_there(llama_dir, tmp_path, site):
    from gradsae import load_sae
    from gradsae.cli import main

    model_dir, corpus = llama_dir
    out = tmp_path / f"run-{site}"
    assert main(_train_args(model_dir, corpus, out, "--site", site, "--architectures", "topk,gsae")) == 0
    folders = sorted(p for p in out.iterdir() if (p / "cfg.json").is_file())
    assert len(folders) == 2
    model, tok = make_tiny("llama")
    for f in folders:
        sae = load_sae(f)
        assert sae.cfg.hook_name == f"blocks.1.{site}"
        [r] = influence(model, tok, sae, [Example("the quick brown", " fox")])
        assert r.scores.abs().sum() > 0


def test_train_and_cache_refuse_what_a_site_cannot_do(llama_dir, tmp_path, capsys):
    from gradsae.cli import main

    model_dir, corpus = llama_dir
    cases = [
        (["--site", "hook_mlp_out", "--architectures", "e2e"], "trained at the residual stream"),
        (["--site", "hook_attn_out", "--cache", str(tmp_path)], "a cache holds the residual stream"),
    ]
    for extra, says in cases:
        assert main(_train_args(model_dir, corpus, tmp_path / "x", *extra)) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and says in err[0], err


def test_eval_of_a_site_sae_needs_a_cache_of_that_site(llama_dir, tmp_path, capsys):
    from gradsae.cli import main

    model_dir, corpus = llama_dir
    out = tmp_path / "run"
    assert main(_train_args(model_dir, corpus, out, "--site", "hook_mlp_out", "--architectures", "topk")) == 0
    [sae_dir] = [p for p in out.iterdir() if (p / "cfg.json").is_file()]
    common = ["--model", str(model_dir), "--data", str(corpus), "--layers", "1", "--context-length", "16"]
    common += ["--seqs-per-shard", "8", "--device", "cpu", "--no-progress"]
    assert main(["cache", *common, "--site", "hook_mlp_out", "--out", str(tmp_path / "c-mlp")]) == 0
    assert main(["cache", *common, "--out", str(tmp_path / "c-res")]) == 0
    ev = ["eval", "--model", str(model_dir), "--sae", str(sae_dir), "--device", "cpu", "--no-progress"]
    ev += ["--holdout-shards", "1", "--n-seqs", "4"]
    assert main([*ev, "--cache", str(tmp_path / "c-res"), "--out", str(tmp_path / "e0")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "gradsae cache --site hook_mlp_out" in err[0], err
    assert main([*ev, "--cache", str(tmp_path / "c-mlp"), "--out", str(tmp_path / "e1")]) == 0
    import json

    result = json.loads((tmp_path / "e1" / "eval.json").read_text())
    metrics = result["eval_result_metrics"]
    assert result["sae_cfg"]["hook_name"] == "blocks.1.hook_mlp_out"
    assert metrics["model_performance_preservation"]["ce_loss_with_sae"] > 0
    assert "steering" not in metrics  # the steering probe adds to the residual stream
