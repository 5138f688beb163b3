"""Round trips against the real peer packages (sae-lens, eai-sparsify, dictionary-learning).

Every architecture gradsae writes loads in sae-lens with the same encode/decode; every architecture those
packages save (their training checkpoints included) loads in gradsae with the same results, or is refused
with one line saying why. The files are made by the packages themselves on tiny random SAEs.
`make test` installs the packages (requirements-peers.txt, --no-deps so the CPU torch stays).
"""

import json

import pytest
import torch

try:
    import sae_lens
    import sparsify
    from circuit_tracer.transcoder.activation_functions import JumpReLU as CTJumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder
    from dictionary_learning import dictionary as dl_dict
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK
except ImportError as e:  # fail loudly: these tests are the point of issue 13
    pytest.fail(
        f"peer package missing ({e}): pip install --no-deps -r requirements-peers.txt (make test does it)",
        pytrace=False,
    )

from gradsae.saes import DEFAULT_GSAE, DEFAULT_SAE
from gradsae import SAE, GradsaeError, SAEConfig, load_sae
from gradsae.saes import bundled_saes
from gradsae.saes.sae import ARCHITECTURES

D, C, K = 12, 40, 5
TOL = dict(rtol=1e-5, atol=1e-5)


def x_batch(seed=0, n=16, scale=3.0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * scale


def randomize(module, seed=0, scale=0.3):
    """Random values in every float parameter (not zeros, not the packages' structured init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


# ---------------------------------------------------------------------------------------------
# gradsae writes -> sae-lens reads
# ---------------------------------------------------------------------------------------------


def gradsae_sae(arch, nsf=None, seed=1):
    k = K if arch in ("topk", "batchtopk", "gsae", "e2e") else None
    sae = SAE.init_random(
        SAEConfig(
            d_in=D,
            d_sae=C,
            architecture=arch,
            k=k,
            beta=0.7,
            norm_scaling_factor=nsf,
            hook_name="blocks.2.hook_resid_post",
            model_name="tiny",
        ),
        seed=seed,
    )
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(C, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(C, generator=g) * 0.3)
        if hasattr(sae, "grad_scale"):
            sae.grad_scale.fill_(2.5)
    return sae


@pytest.mark.parametrize("nsf", [None, 0.37])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_gradsae_architecture_loads_in_saelens(tmp_path, arch, nsf):
    sae = gradsae_sae(arch, nsf)
    sae.save(tmp_path / "s")
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    x = x_batch()
    h = sae.encode(x)  # a g-SAE / e2e SAE without a gradient is TopK, what sae-lens runs
    torch.testing.assert_close(lens.encode(x), h, **TOL)
    torch.testing.assert_close(lens.decode(h), sae.decode(h), **TOL)
    assert lens.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    # and gradsae gets back the SAE it saved: architecture, k, beta, scaling factor, grad_scale
    back = load_sae(tmp_path / "s")
    assert (back.cfg.architecture, back.cfg.k, back.cfg.beta) == (arch, sae.cfg.k, 0.7)
    assert back.cfg.norm_scaling_factor == nsf
    for name, t in sae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], t, **TOL)
    grad = x_batch(seed=5) * 100
    torch.testing.assert_close(back.encode(x, grad_x=grad), sae.encode(x, grad_x=grad), **TOL)


def test_saved_batchtopk_runs_as_jumprelu_in_saelens(tmp_path):
    gradsae_sae("batchtopk").save(tmp_path / "b")
    assert json.loads((tmp_path / "b/cfg.json").read_text())["architecture"] == "jumprelu"
    assert type(sae_lens.SAE.load_from_disk(str(tmp_path / "b"))).__name__ == "JumpReLUSAE"


@pytest.mark.parametrize("name", sorted(bundled_saes()))
def test_bundled_saes_load_in_saelens(name):
    sae = load_sae(name)
    lens = sae_lens.SAE.load_from_disk(str(bundled_saes()[name]), dtype="float32")
    x = torch.randn(8, sae.d_in, generator=torch.Generator().manual_seed(0)) * 4
    h = sae.encode(x)
    torch.testing.assert_close(lens.encode(x), h, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lens.decode(h), sae.decode(h), rtol=1e-4, atol=1e-4)


def test_convert_output_loads_in_saelens(tmp_path):
    """The issue's own example: gradsae convert <bundled SAE> out, then sae-lens encode."""
    from gradsae.demo import ConvertConfig, convert

    convert(ConvertConfig(src=DEFAULT_SAE, dst=str(tmp_path / "out")))
    sae = load_sae(DEFAULT_SAE)
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "out"))
    x = torch.randn(8, sae.d_in, generator=torch.Generator().manual_seed(1)) * 4
    torch.testing.assert_close(lens.encode(x), sae.encode(x), rtol=1e-4, atol=1e-4)
    convert(ConvertConfig(src=DEFAULT_GSAE, dst=str(tmp_path / "half"), dtype="bfloat16"))
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "half"), dtype="float32")
    h = load_sae(DEFAULT_GSAE).encode(x)
    want = load_sae(DEFAULT_GSAE).decode(h)
    rel = (lens.decode(h) - want).norm() / want.norm()
    assert rel < 1e-2  # bfloat16 rounding of the weights (8-bit mantissa: ~0.4%), nothing more


# ---------------------------------------------------------------------------------------------
# sae-lens writes -> gradsae reads
# ---------------------------------------------------------------------------------------------


def lens_inference(kind, **cfg):
    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
        "abstopk": (sae_lens.AbsTopKSAE, sae_lens.AbsTopKSAEConfig),
    }
    cls, cfg_cls = classes[kind]
    sae = cls(cfg_cls(d_in=D, d_sae=C, **cfg))
    sae = randomize(sae)
    if hasattr(sae, "threshold"):
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(C, generator=torch.Generator().manual_seed(3)) * 0.3)
    return sae


def assert_same(ours, lens, x, encode=None):
    h_ref = lens.encode(x) if encode is None else encode(x)
    torch.testing.assert_close(ours.encode(x), h_ref, **TOL)
    torch.testing.assert_close(ours.decode(h_ref), lens.decode(h_ref), **TOL)


@pytest.mark.parametrize(
    "kind,cfg",
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": K}),
        ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
    ],
)
def test_saelens_inference_saes_load_identically(tmp_path, kind, cfg):
    lens = lens_inference(kind, **cfg)
    lens.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    lens.save_model(tmp_path / "s")
    ours = load_sae(tmp_path / "s")
    assert ours.layer == 3
    assert_same(ours, lens, x_batch())


def lens_training(kind, **cfg):
    classes = {
        "standard": (sae_lens.StandardTrainingSAE, sae_lens.StandardTrainingSAEConfig),
        "topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig),
        "batchtopk": (sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig),
        "matryoshka_batchtopk": (
            sae_lens.MatryoshkaBatchTopKTrainingSAE,
            sae_lens.MatryoshkaBatchTopKTrainingSAEConfig,
        ),
        "jumprelu": (sae_lens.JumpReLUTrainingSAE, sae_lens.JumpReLUTrainingSAEConfig),
    }
    cls, cfg_cls = classes[kind]
    sae = randomize(cls(cfg_cls(d_in=D, d_sae=C, **cfg)))
    if hasattr(sae, "topk_threshold"):
        sae.topk_threshold = torch.tensor(0.21, dtype=torch.double)  # what training's running estimate sets
    return sae


@pytest.mark.parametrize(
    "kind,cfg",
    [
        ("standard", {}),
        ("topk", {"k": K}),  # training TopK defaults to rescale_acts_by_decoder_norm=True
        ("topk", {"k": K, "rescale_acts_by_decoder_norm": False}),
        ("batchtopk", {"k": K}),
        ("batchtopk", {"k": K, "rescale_acts_by_decoder_norm": False}),
        ("matryoshka_batchtopk", {"k": K, "matryoshka_widths": [10, C]}),
        ("jumprelu", {}),
    ],
)
def test_saelens_training_checkpoints_load_as_saelens_runs_them(tmp_path, kind, cfg):
    """A training checkpoint (save_model of a *TrainingSAE) gives what sae-lens's own inference export runs."""
    train = lens_training(kind, **cfg)
    train.save_model(tmp_path / "ckpt")
    train.save_inference_model(tmp_path / "inference")
    ref = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
    ours = load_sae(tmp_path / "ckpt")
    x = x_batch()
    assert_same(ours, ref, x)
    if kind in ("batchtopk", "matryoshka_batchtopk"):  # not plain ReLU: the threshold is used
        assert ours.cfg.architecture == "jumprelu"
        assert 0 < (ours.encode(x) != 0).sum() < (ours.encode_pre(x) > 0).sum()


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_saelens_per_token_normalisation_is_refused(tmp_path, norm):
    lens = lens_inference("standard", normalize_activations=norm)
    lens.save_model(tmp_path / "s")
    with pytest.raises(GradsaeError, match="per-token normalisation") as e:
        load_sae(tmp_path / "s")
    assert "norm_scaling_factor" not in str(e.value)  # adding one would compute the wrong thing


@pytest.mark.parametrize("kind,why", [("gated", "gated"), ("abstopk", "AbsTopK")])
def test_saelens_unsupported_architectures_refused(tmp_path, kind, why):
    lens = lens_inference(kind, **({"k": K} if kind == "abstopk" else {}))
    lens.save_model(tmp_path / "s")
    with pytest.raises(GradsaeError, match=why):
        load_sae(tmp_path / "s")


# ---------------------------------------------------------------------------------------------
# sparsify writes -> gradsae reads
# ---------------------------------------------------------------------------------------------


def sparsify_coder(seed=0):
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=C, k=K))
    return randomize(coder, seed)


def test_sparsify_topk_loads_identically(tmp_path):
    coder = sparsify_coder()
    coder.save_to_disk(tmp_path / "layers.4")
    ours = load_sae(tmp_path / "layers.4")
    assert ours.cfg.hook_name == "blocks.4.hook_resid_post" and ours.cfg.k == K
    x = x_batch()
    enc = coder.encode(x)
    dense = torch.zeros(x.shape[0], C).scatter(-1, enc.top_indices, enc.top_acts)
    torch.testing.assert_close(ours.encode(x), dense, **TOL)
    torch.testing.assert_close(ours.decode(dense), coder.decode(enc.top_acts, enc.top_indices), **TOL)


def test_sparsify_mlp_sae_splices_at_the_mlp_output(tmp_path):
    """A sparsify SAE trained on ``layers.1.mlp`` keeps its site: spliced, the MLP's output is what sparsify's
    own forward reconstructs from it (never the residual stream)."""
    from conftest import D_MODEL, make_tiny
    from gradsae.splice import Splice

    coder = randomize(sparsify.SparseCoder(D_MODEL, sparsify.SparseCoderConfig(num_latents=C, k=K)), 3, scale=0.1)
    coder.save_to_disk(tmp_path / "layers.1.mlp")
    ours = load_sae(tmp_path / "layers.1.mlp")
    assert ours.cfg.hook_name == "blocks.1.hook_mlp_out"
    model, tok = make_tiny("llama")
    ids = torch.tensor([tok("the quick brown fox", add_special_tokens=True)["input_ids"]])
    with torch.no_grad(), Splice(model, ours, error="none"):
        spliced = model(input_ids=ids).logits
    mlp = model.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda m, a, out: coder(out.flatten(0, 1)).sae_out.view_as(out))
    try:
        with torch.no_grad():
            theirs = model(input_ids=ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(spliced, theirs, rtol=1e-4, atol=1e-4)


def test_sparsify_transcoder_not_on_an_mlp_is_one_line(tmp_path):
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=C, k=K, transcode=True))
    coder.save_to_disk(tmp_path / "layers.2")
    with pytest.raises(GradsaeError, match="transcoders trained on a block's MLP"):
        load_sae(tmp_path / "layers.2")


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoder_equals_sparsify_and_replaces_the_mlp(tmp_path, skip):
    """A sparsify (skip) transcoder of layers.1.mlp computes what sparsify computes (an asymmetric W_skip: a
    transpose would show), and spliced it replaces the MLP module's output by sparsify's output from its input."""
    from conftest import D_MODEL, make_tiny
    from gradsae.splice import Splice

    sc = sparsify.SparseCoderConfig(num_latents=C, k=K, transcode=True, skip_connection=skip)
    coder = randomize(sparsify.SparseCoder(D_MODEL, sc), 4, scale=0.1)
    coder.save_to_disk(tmp_path / "layers.1.mlp")
    ours = load_sae(tmp_path / "layers.1.mlp")
    assert (ours.cfg.hook_name, ours.cfg.hook_name_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    x = torch.randn(16, D_MODEL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), coder(x).sae_out, **TOL)
    model, tok = make_tiny("llama")
    ids = torch.tensor([tok("the quick brown fox", add_special_tokens=True)["input_ids"]])
    with torch.no_grad(), Splice(model, ours, error="none"):
        spliced = model(input_ids=ids).logits
    mlp = model.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda m, a, out: coder(a[0].flatten(0, 1)).sae_out.view_as(out))
    try:
        with torch.no_grad():
            theirs = model(input_ids=ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(spliced, theirs, rtol=1e-4, atol=1e-4)
    gemma, _ = make_tiny("gemma2")
    with pytest.raises(GradsaeError, match="MLP module's own output"):
        Splice(gemma, ours)  # Gemma normalises the MLP's output before adding it: not where sparsify trained


# ---------------------------------------------------------------------------------------------
# dictionary_learning writes -> gradsae reads
# ---------------------------------------------------------------------------------------------


def dl_module(name):
    if name == "AutoEncoder":
        ae = dl_dict.AutoEncoder(D, C)
    elif name == "AutoEncoderNew":
        ae = dl_dict.AutoEncoderNew(D, C)
    elif name == "JumpReluAutoEncoder":
        ae = dl_dict.JumpReluAutoEncoder(D, C)
    elif name == "AutoEncoderTopK":
        ae = AutoEncoderTopK(D, C, K)
    elif name == "BatchTopKSAE":
        ae = BatchTopKSAE(D, C, K)
    elif name == "MatryoshkaBatchTopKSAE":
        ae = MatryoshkaBatchTopKSAE(D, C, K, group_sizes=[10, C - 10])
    elif name == "GatedAutoEncoder":
        ae = dl_dict.GatedAutoEncoder(D, C)
    randomize(ae)
    if name == "JumpReluAutoEncoder":
        with torch.no_grad():
            ae.threshold.copy_(torch.rand(C, generator=torch.Generator().manual_seed(4)) * 0.3)
    if name in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE", "AutoEncoderTopK"):
        ae.threshold.fill_(0.2)  # set by training once threshold_start_step has passed
    return ae


def dl_save(ae, folder, cls_name, submodule="resid_post_layer_4", checkpoint=False):
    """What dictionary_learning.training.trainSAE writes: config.json, ae.pt or checkpoints/ae_<step>.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    trainer = {
        "dict_class": cls_name,
        "activation_dim": D,
        "dict_size": C,
        "layer": 4,
        "lm_name": "tiny",
        "submodule_name": submodule,
    }
    if hasattr(ae, "k"):
        trainer["k"] = int(ae.k)
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    state = {k: v.cpu() for k, v in ae.state_dict().items()}
    if checkpoint:
        (folder / "checkpoints").mkdir()
        torch.save(state, folder / "checkpoints" / "ae_100.pt")
        return folder / "checkpoints" / "ae_100.pt"
    torch.save(state, folder / "ae.pt")
    return folder


DL_CLASSES = [
    "AutoEncoder",
    "AutoEncoderNew",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
]


@pytest.mark.parametrize("cls_name", DL_CLASSES)
@pytest.mark.parametrize("checkpoint", [False, True])
def test_dictionary_learning_loads_identically(tmp_path, cls_name, checkpoint):
    ae = dl_module(cls_name)
    where = dl_save(ae, tmp_path / "trainer_0", cls_name, checkpoint=checkpoint)
    ours = load_sae(where)
    assert ours.cfg.hook_name == "blocks.4.hook_resid_post" and ours.cfg.model_name == "tiny"
    x = x_batch()
    h = ae.encode(x)  # each class's default inference encode (threshold for the BatchTopK family)
    torch.testing.assert_close(ours.encode(x), h, **TOL)
    torch.testing.assert_close(ours.decode(h), ae.decode(h), **TOL)


def test_dictionary_learning_checkpoint_without_any_config_is_refused_when_ambiguous(tmp_path):
    ae = dl_module("AutoEncoderTopK")
    torch.save(ae.state_dict(), tmp_path / "ae_5.pt")
    with pytest.raises(GradsaeError, match="AutoEncoderTopK or BatchTopKSAE"):
        load_sae(tmp_path / "ae_5.pt")
    # a class whose keys are its own is recognised without a config
    torch.save(dl_module("MatryoshkaBatchTopKSAE").state_dict(), tmp_path / "m.pt")
    assert load_sae(tmp_path / "m.pt").cfg.metadata["dict_class"] == "MatryoshkaBatchTopKSAE"


def test_dictionary_learning_mlp_out_keeps_its_hook_and_is_never_moved_to_the_residual_stream(tmp_path):
    from conftest import make_tiny
    from gradsae.splice import check_compatible

    ae = dl_module("AutoEncoder")
    ours = load_sae(dl_save(ae, tmp_path / "t", "AutoEncoder", submodule="mlp_out_layer_4"))
    assert ours.cfg.hook_name == "blocks.4.hook_mlp_out"
    model, _ = make_tiny("llama")
    with pytest.raises(GradsaeError, match="is at hook_mlp_out: this command splices only at hook_resid_post"):
        check_compatible(model, ours, 1)  # a residual-only command, even with a block given


def test_dictionary_learning_gated_refused(tmp_path):
    ae = dl_module("GatedAutoEncoder")
    with pytest.raises(GradsaeError, match="gated"):
        load_sae(dl_save(ae, tmp_path / "g", "GatedAutoEncoder"))


def test_dictionary_learning_config_over_other_class_weights(tmp_path):
    ae = dl_module("JumpReluAutoEncoder")
    with pytest.raises(GradsaeError, match="names AutoEncoder but .* JumpReluAutoEncoder's weights"):
        load_sae(dl_save(ae, tmp_path / "x", "AutoEncoder"))


# ---------------------------------------------------------------------------------------------
# Gemma Scope 2: sae-lens's own loader on the very same local bytes
# ---------------------------------------------------------------------------------------------


def _lens_gemma_scope_2(monkeypatch, repo_root, folder_name):
    """sae-lens 6.54's Gemma Scope 2 loader with its hub replaced by ``repo_root`` (a local copy of the repo)."""
    from safetensors import safe_open

    from sae_lens.loading import pretrained_sae_loaders as loaders

    def hub(repo_id, filename=None, subfolder=None, **_):
        path = repo_root / (f"{subfolder}/{filename}" if subfolder else filename)
        if not path.exists():
            raise loaders.EntryNotFoundError(str(path))
        return str(path)

    def shapes(repo_id, filename):
        with safe_open(str(repo_root / filename), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    monkeypatch.setattr(loaders, "hf_hub_download", hub)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)
    cfg, state, _ = loaders.gemma_3_sae_huggingface_loader("google/gemma-scope-2-1b-pt", folder_name)
    lens = sae_lens.SAE.from_dict(cfg)
    lens.load_state_dict(state)
    return lens, cfg


def _gemma_scope_2_params(folder, seed: int, d_out: int = D, skip: bool = False):
    """Random Gemma Scope 2 weights in ``folder/params.safetensors`` (w_dec [C, d_out]; the skip matrix [D, d_out])."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    w = {
        "w_enc": torch.randn(D, C, generator=g),
        "w_dec": torch.randn(C, d_out, generator=g),
        "b_enc": torch.randn(C, generator=g) * 0.3,
        "b_dec": torch.randn(d_out, generator=g) * 0.3,
        "threshold": torch.rand(C, generator=g) * 0.5,
    }
    if skip:
        w["affine_skip_connection"] = torch.randn(D, d_out, generator=g)
    save_file(w, folder / "params.safetensors")


@pytest.mark.parametrize("with_config", [False, True])
def test_gemma_scope_2_residual_sae_equals_saelens_on_the_same_files(tmp_path, monkeypatch, with_config):
    folder_name = "resid_post/layer_3_width_40_l0_small"
    folder = tmp_path / folder_name
    _gemma_scope_2_params(folder, 5)
    if with_config:
        cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-1b-pt", "hf_hook_point_in": "model.layers.3.output"}
        (folder / "config.json").write_text(json.dumps(cfg))
    lens, lens_cfg = _lens_gemma_scope_2(monkeypatch, tmp_path, folder_name)
    ours = load_sae(folder)
    assert ours.cfg.hook_name == lens_cfg["hook_name"] == "blocks.3.hook_resid_post"
    assert ours.cfg.apply_b_dec_to_input is lens_cfg["apply_b_dec_to_input"] is False
    assert_same(ours, lens, x_batch(scale=1.0))


@pytest.mark.parametrize("affine", [False, True])
def test_gemma_scope_2_transcoder_equals_saelens_on_the_same_files(tmp_path, monkeypatch, affine):
    """A transcoder (d_out != d_in here, and an asymmetric skip matrix: a transposed one would show) computes what
    sae-lens's JumpReLU(Skip)Transcoder computes from the same bytes, skip term included."""
    O = D + 4
    folder_name = f"transcoder/layer_3_width_40_l0_small{'_affine' if affine else ''}"
    folder = tmp_path / folder_name
    _gemma_scope_2_params(folder, 6, d_out=O, skip=affine)
    cfg = {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-1b-pt",
        "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output",
        "affine_connection": affine,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    lens, lens_cfg = _lens_gemma_scope_2(monkeypatch, tmp_path, folder_name)
    ours = load_sae(folder)
    assert lens_cfg["architecture"] == ("jumprelu_skip_transcoder" if affine else "jumprelu_transcoder")
    assert ours.cfg.hook_name_out == lens_cfg["hook_name_out"] == "blocks.3.hook_mlp_out"
    assert ours.cfg.out_dim == lens_cfg["d_out"] == O and ours.cfg.skip_connection is affine
    x = x_batch(scale=1.0)
    assert_same(ours, lens, x)
    torch.testing.assert_close(ours(x), lens(x), **TOL)  # the whole output, skip term included


# ---------------------------------------------------------------------------------------------
# sae-lens transcoder folders, both ways
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,skip", [("jumprelu", True), ("jumprelu", False), ("relu", True), ("relu", False)])
def test_gradsae_transcoders_load_in_saelens_and_back(tmp_path, arch, skip):
    from gradsae import SAE, SAEConfig

    O = D + 3  # d_out != d_in, and a non-square skip matrix: a transposed one could not even load
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture=arch,
        apply_b_dec_to_input=False,
        hook_name="blocks.2.ln2.hook_normalized",
        hook_name_out="blocks.2.hook_mlp_out",
        d_out=O,
        skip_connection=skip,
    )
    ours = randomize(SAE(cfg), 7)
    ours.save(tmp_path / "t")
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "t"))
    assert type(lens).__name__ == f"{'JumpReLU' if arch == 'jumprelu' else ''}{'Skip' if skip else ''}Transcoder"
    x = x_batch(scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), lens(x), **TOL)
    back = load_sae(tmp_path / "t")
    assert (back.cfg.hook_name, back.cfg.hook_name_out, back.cfg.out_dim) == (cfg.hook_name, cfg.hook_name_out, O)
    assert back.digest() == ours.digest()


def test_saelens_skip_transcoder_reads_in_gradsae(tmp_path):
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig

    lens_cfg = JumpReLUSkipTranscoderConfig(d_in=D, d_sae=C, d_out=D, apply_b_dec_to_input=False)
    lens_cfg.metadata.hook_name = "blocks.1.ln2.hook_normalized"
    lens = randomize(JumpReLUSkipTranscoder(lens_cfg), 8)
    assert (lens.W_skip - lens.W_skip.T).abs().max() > 0.1  # asymmetric: a transpose would show
    lens.save_model(tmp_path / "lens")
    ours = load_sae(tmp_path / "lens")
    assert ours.cfg.skip_connection and ours.cfg.hook_name_out == "blocks.1.hook_mlp_out"
    x = x_batch(scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), lens(x), **TOL)


# ---------------------------------------------------------------------------------------------
# circuit-tracer per-layer transcoders: its own to_safetensors -> gradsae reads
# ---------------------------------------------------------------------------------------------


def _circuit_tracer_set(folder, d_model, jumprelu: bool, skip: bool, input_hook: str, seed=0):
    """A one-layer circuit-tracer transcoder set written by circuit-tracer itself (layer_1.safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    act = CTJumpReLU(torch.zeros(C), 0.1) if jumprelu else torch.nn.functional.relu
    ct = SingleLayerTranscoder(
        d_model, C, act, 1, skip_connection=skip, device=torch.device("cpu"), dtype=torch.float32
    )
    randomize(ct, seed, scale=0.2)
    if jumprelu:
        ct.activation_function.threshold.data = torch.rand(C, generator=torch.Generator().manual_seed(seed)) * 0.2
    ct.to_safetensors(str(folder / "layer_1.safetensors"))
    (folder / "config.yaml").write_text(
        f"model_name: tiny\nfeature_input_hook: {input_hook}\nfeature_output_hook: hook_mlp_out\n"
        "transcoders:\n  - layer_0.safetensors\n  - layer_1.safetensors\n"
    )
    return ct


@pytest.mark.parametrize("jumprelu,skip", [(True, True), (True, False), (False, True)])
def test_circuit_tracer_transcoder_equals_circuit_tracer(tmp_path, jumprelu, skip):
    ct = _circuit_tracer_set(tmp_path / "set", D, jumprelu, skip, "ln2.hook_normalized")
    if skip:
        assert (ct.W_skip - ct.W_skip.T).abs().max() > 0.1  # asymmetric: a transpose would show
    ours = load_sae(tmp_path / "set" / "layer_1.safetensors")
    assert (ours.cfg.hook_name, ours.cfg.hook_name_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert ours.cfg.architecture == ("jumprelu" if jumprelu else "relu") and ours.cfg.skip_connection is skip
    x = x_batch(scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), ct.encode(x), **TOL)
        torch.testing.assert_close(ours(x), ct(x), **TOL)
    with pytest.raises(GradsaeError, match="transcoder set"):
        load_sae(tmp_path / "set")


def test_circuit_tracer_resid_mid_transcoder_replaces_the_mlp(tmp_path):
    """feature_input_hook hook_resid_mid: the residual the pre-MLP norm reads; spliced, the MLP's output becomes
    circuit-tracer's transcoder output from it."""
    from conftest import D_MODEL, make_tiny
    from gradsae.splice import Splice

    ct = _circuit_tracer_set(tmp_path / "set", D_MODEL, True, True, "hook_resid_mid", seed=3)
    ours = load_sae(tmp_path / "set" / "layer_1.safetensors")
    assert ours.cfg.hook_name == "blocks.1.hook_mlp_in"
    model, tok = make_tiny("llama")
    ids = torch.tensor([tok("the quick brown fox", add_special_tokens=True)["input_ids"]])
    with torch.no_grad(), Splice(model, ours, error="none"):
        spliced = model(input_ids=ids).logits
    blk, seen = model.model.layers[1], {}
    hooks = [
        blk.post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.update(x=a[0])),
        blk.mlp.register_forward_hook(lambda m, a, out: ct(seen["x"])),
    ]
    try:
        with torch.no_grad():
            theirs = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(spliced, theirs, rtol=1e-4, atol=1e-4)


def test_mutated_circuit_tracer_config_yaml_loads_or_is_one_line(tmp_path):
    from conftest import each_mutation

    _circuit_tracer_set(tmp_path / "set", D, True, True, "ln2.hook_normalized")
    good = {"model_name": "tiny", "feature_input_hook": "ln2.hook_normalized", "feature_output_hook": "hook_mlp_out"}
    x = x_batch()

    def read():  # JSON is YAML: the mutations are YAML files too
        assert torch.isfinite(load_sae(tmp_path / "set" / "layer_1.safetensors")(x)).all()

    n, loaded = each_mutation(tmp_path / "set" / "config.yaml", good, read)
    assert n > 40 and loaded > 0


def test_circuit_tracer_cross_layer_transcoder_is_refused_in_one_line(tmp_path):
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    kw = dict(device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    clt = CrossLayerTranscoder(n_layers=2, d_transcoder=C, d_model=D, **kw)
    clt.to_safetensors(str(tmp_path / "clt"))
    for path in (tmp_path / "clt", tmp_path / "clt" / "W_enc_0.safetensors"):
        with pytest.raises(GradsaeError, match="cross-layer transcoder"):
            load_sae(path)
