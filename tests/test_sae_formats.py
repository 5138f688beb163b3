"""Every SAE format: write from random tensors in that format's own layout, load, compare to a direct formula."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gradsae.saes import DEFAULT_SAE
from conftest import each_mutation
from gradsae import SAE, GradsaeError, SAEConfig, load_sae
from gradsae.saes.sae import gsae_selection_score, topk_code

D, C = 16, 48
g = torch.Generator().manual_seed(0)
W_enc, b_enc = torch.randn(D, C, generator=g), torch.randn(C, generator=g) * 0.2
W_dec, b_dec = torch.randn(C, D, generator=g), torch.randn(D, generator=g) * 0.2
thr = torch.rand(C, generator=g) * 0.5
X = torch.randn(10, D, generator=g) * 2


def relu_ref(x, apply=True):
    return torch.relu((x - b_dec * apply) @ W_enc + b_enc)


def topk_ref(x, k):
    pre = torch.relu((x - b_dec) @ W_enc + b_enc)
    v, i = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, i, v)


def jump_ref(x, apply=False):
    pre = (x - b_dec * apply) @ W_enc + b_enc
    return pre * (pre > thr)


def check(sae, ref_h):
    h = sae.encode(X)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(h), ref_h @ W_dec + b_dec, rtol=1e-5, atol=1e-5)


def test_saelens_v6(tmp_path):
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": D,
                "d_sae": C,
                "dtype": "float32",
                "apply_b_dec_to_input": True,
                "normalize_activations": "none",
                "metadata": {"model_name": "m", "hook_name": "blocks.3.hook_resid_post"},
            }
        )
    )
    sae = load_sae(tmp_path)
    assert sae.cfg.architecture == "relu" and sae.layer == 3 and sae.cfg.model_name == "m"
    check(sae, relu_ref(X))


def test_saelens_v6_topk_and_jumprelu(tmp_path):
    (tmp_path / "a").mkdir()
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "a/sae_weights.safetensors")
    (tmp_path / "a/cfg.json").write_text(
        json.dumps(
            {
                "architecture": "topk",
                "k": 5,
                "d_in": D,
                "d_sae": C,
                "apply_b_dec_to_input": True,
                "metadata": {"hook_name": "blocks.1.hook_resid_post"},
            }
        )
    )
    sae = load_sae(tmp_path / "a")
    check(sae, topk_ref(X, 5))
    assert (sae.encode(X) != 0).sum(-1).max() <= 5
    (tmp_path / "b").mkdir()
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": thr},
        tmp_path / "b/sae_weights.safetensors",
    )
    (tmp_path / "b/cfg.json").write_text(
        json.dumps(
            {
                "architecture": "jumprelu",
                "d_in": D,
                "d_sae": C,
                "apply_b_dec_to_input": False,
                "metadata": {"hook_name": "blocks.1.hook_resid_post"},
            }
        )
    )
    check(load_sae(tmp_path / "b"), jump_ref(X))


def test_saelens_old_flat_cfg(tmp_path):
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "hook_point": "blocks.5.hook_resid_pre",
                "hook_point_layer": 5,
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": 7},
                "d_in": D,
                "d_sae": C,
                "apply_b_dec_to_input": True,
                "model_name": "gpt2",
            }
        )
    )
    sae = load_sae(tmp_path)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 7
    assert sae.layer == 4  # resid_pre of block 5 is the output of block 4
    check(sae, topk_ref(X, 7))


def test_gemma_scope_npz(tmp_path):
    folder = tmp_path / "layer_9" / "width_16k" / "average_l0_88"
    folder.mkdir(parents=True)
    np.savez(
        folder / "params.npz",
        W_enc=W_enc.numpy(),
        b_enc=b_enc.numpy(),
        W_dec=W_dec.numpy(),
        b_dec=b_dec.numpy(),
        threshold=thr.numpy(),
    )
    sae = load_sae(folder)
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input and sae.layer == 9
    check(sae, jump_ref(X, apply=False))
    assert load_sae(folder / "params.npz").layer == 9


def _sparsify_folder(tmp_path):
    folder = tmp_path / "layers.6"
    folder.mkdir()
    save_file(
        {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
        folder / "sae.safetensors",
    )
    cfg = {
        "activation": "topk",
        "expansion_factor": 3,
        "normalize_decoder": True,
        "num_latents": C,
        "k": 4,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, cfg


def test_sparsify_folder(tmp_path):
    folder, _ = _sparsify_folder(tmp_path)
    sae = load_sae(folder)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4 and sae.layer == 6
    check(sae, topk_ref(X, 4))
    with pytest.raises(GradsaeError, match="several SAEs"):
        load_sae(tmp_path)


def _dictionary_learning_folder(tmp_path, dict_class):
    """A dictionary_learning ae.pt + config.json of ``dict_class``; returns (config, the reference output)."""
    if dict_class == "AutoEncoder":
        sd = {
            "encoder.weight": W_enc.T.contiguous(),
            "encoder.bias": b_enc,
            "decoder.weight": W_dec.T.contiguous(),
            "bias": b_dec,
        }
        ref = relu_ref(X)
    elif dict_class == "AutoEncoderTopK":
        sd = {
            "encoder.weight": W_enc.T.contiguous(),
            "encoder.bias": b_enc,
            "decoder.weight": W_dec.T.contiguous(),
            "b_dec": b_dec,
            "k": torch.tensor(6),
            "threshold": torch.tensor(-1.0),
        }
        ref = topk_ref(X, 6)
    else:
        sd = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": thr}
        ref = jump_ref(X)
    torch.save(sd, tmp_path / "ae.pt")
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D,
            "dict_size": C,
            "k": 6 if "TopK" in dict_class else None,
            "layer": 2,
            "lm_name": "x",
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return cfg, ref


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK", "JumpReluAutoEncoder"])
def test_dictionary_learning(tmp_path, dict_class):
    _, ref = _dictionary_learning_folder(tmp_path, dict_class)
    sae = load_sae(tmp_path)
    assert sae.layer == 2
    check(sae, ref)


@pytest.mark.parametrize("arch,k", [("relu", None), ("jumprelu", None), ("topk", 5), ("batchtopk", 5), ("gsae", 5)])
def test_save_load_round_trip(tmp_path, arch, k):
    cfg = SAEConfig(d_in=D, d_sae=C, architecture=arch, k=k, hook_name="blocks.2.hook_resid_post", beta=0.5)
    sae = SAE.init_random(cfg, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_()
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.3)
        if hasattr(sae, "grad_scale"):
            sae.grad_scale.fill_(2.5)
    sae.save(tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert back.cfg.architecture == arch and back.cfg.k == k and back.layer == 2
    for name, t in sae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], t)
    torch.testing.assert_close(back(X), sae(X))
    saved = json.loads((tmp_path / "s/cfg.json").read_text())
    assert saved["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and saved["d_sae"] == C


def test_gsae_selection_rule_by_hand():
    z = torch.tensor([[1.0, 0.9, 0.2, 0.5]])
    g = torch.tensor([[0.0, 0.0, 10.0, 1.0]])
    # beta=0: plain TopK by z
    assert set(topk_code(gsae_selection_score(z, g, 0.0), z, 2).indices[0].tolist()) == {0, 1}
    # beta=1: scores 1.0, 0.9, 0.2+2.0=2.2, 0.5+0.5=1.0 -> latent 2, then tie 0/3 -> 2 and one of 0/3
    s = gsae_selection_score(z, g, 1.0)
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.9, 2.2, 1.0]]))
    code = topk_code(s, z, 1)
    assert code.indices.tolist() == [[2]] and code.values.tolist() == [[pytest.approx(0.2)]]  # values are z's
    # the scale divides the gradient term
    torch.testing.assert_close(gsae_selection_score(z, g, 2.0, scale=2.0), s)


def test_gsae_without_grad_equals_topk():
    cfg = SAEConfig(d_in=D, d_sae=C, architecture="gsae", k=5, beta=3.0)
    gs = SAE.init_random(cfg, seed=3)
    tk = SAE(SAEConfig(d_in=D, d_sae=C, architecture="topk", k=5))
    tk.load_state_dict({k: v for k, v in gs.state_dict().items() if k != "grad_scale"})
    torch.testing.assert_close(gs.encode(X), tk.encode(X))
    grad = torch.randn(10, D)
    assert not torch.equal(gs.encode(X, grad_x=grad * 100), tk.encode(X))


# ---- bad input -------------------------------------------------------------------------------


def test_malformed_json(tmp_path):
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(GradsaeError, match="malformed JSON"):
        load_sae(tmp_path)


def test_nan_weights(tmp_path):
    bad = W_enc.clone()
    bad[0, 0] = float("nan")
    save_file({"W_enc": bad, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": C}))
    with pytest.raises(GradsaeError, match="NaN/Inf"):
        load_sae(tmp_path)


def test_unknown_folder_and_missing_path(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(GradsaeError, match="not a known SAE folder"):
        load_sae(tmp_path)
    with pytest.raises(GradsaeError, match="no SAE at"):
        load_sae(tmp_path / "nope")


def test_shape_mismatch_between_cfg_and_weights(tmp_path):
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D + 1, "d_sae": C}))
    with pytest.raises(GradsaeError, match="d_in=17"):
        load_sae(tmp_path)


def test_wrong_weight_shape(tmp_path):
    save_file(
        {"W_enc": torch.randn(D, C + 1), "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
        tmp_path / "sae_weights.safetensors",
    )
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard"}))
    with pytest.raises(GradsaeError, match="W_enc .* has shape"):
        load_sae(tmp_path)


def test_config_validation():
    with pytest.raises(GradsaeError, match="needs k"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")
    with pytest.raises(GradsaeError, match="unknown SAE architecture"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")


def test_saelens_registry_needs_package(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("sae_lens"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(GradsaeError, match="pip install"):
        load_sae("saelens:gemma-scope-9b-it-res-canonical/layer_9/width_131k/canonical")


# ---- bad input, one line each (issue 13) -----------------------------------------------------


def write_lens(folder, cfg, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, **extra}, folder / "sae_weights.safetensors"
    )
    (folder / "cfg.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return folder


def test_cfg_json_that_is_a_list(tmp_path):
    with pytest.raises(GradsaeError, match="holds a JSON list, not an object"):
        load_sae(write_lens(tmp_path, "[1, 2]"))


@pytest.mark.parametrize("k", ["thirty-two", "abc", 3.5, None, True])
def test_k_that_is_not_a_whole_number(tmp_path, k):
    cfg = {"architecture": "topk", "d_in": D, "d_sae": C, "k": k}
    if k is None:
        cfg.pop("k")
    with pytest.raises(GradsaeError, match="not a whole number|has no k"):
        load_sae(write_lens(tmp_path, cfg))


def test_k_as_digit_string_or_integral_float_is_accepted(tmp_path):
    assert load_sae(write_lens(tmp_path / "a", {"architecture": "topk", "k": "5"})).cfg.k == 5
    assert load_sae(write_lens(tmp_path / "b", {"architecture": "topk", "k": 5.0})).cfg.k == 5


def test_threshold_of_the_wrong_length(tmp_path):
    with pytest.raises(GradsaeError, match=r"threshold .* has shape \(7,\)"):
        load_sae(write_lens(tmp_path / "s", {"architecture": "jumprelu"}, threshold=torch.rand(7)))
    folder = tmp_path / "layer_3" / "width_1k" / "x"
    folder.mkdir(parents=True)
    np.savez(
        folder / "params.npz",
        W_enc=W_enc.numpy(),
        b_enc=b_enc.numpy(),
        W_dec=W_dec.numpy(),
        b_dec=b_dec.numpy(),
        threshold=np.ones(C + 2, dtype=np.float32),
    )
    with pytest.raises(GradsaeError, match=r"threshold .* has shape"):
        load_sae(folder)


def test_config_naming_another_class_than_the_weights(tmp_path):
    with pytest.raises(GradsaeError, match="names a 'standard' SAE but the weights hold threshold"):
        load_sae(write_lens(tmp_path / "a", {"architecture": "standard"}, threshold=thr))
    with pytest.raises(GradsaeError, match="lack threshold"):
        load_sae(write_lens(tmp_path / "b", {"architecture": "jumprelu"}))
    with pytest.raises(GradsaeError, match="hold b_gate"):
        load_sae(write_lens(tmp_path / "c", {"architecture": "topk", "k": 3}, b_gate=b_enc.clone()))
    sd = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": thr}
    (tmp_path / "d").mkdir()
    torch.save(sd, tmp_path / "d/ae.pt")
    (tmp_path / "d/config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoderTopK", "k": 4}}))
    with pytest.raises(GradsaeError, match="names AutoEncoderTopK but .* JumpReluAutoEncoder's weights"):
        load_sae(tmp_path / "d")


@pytest.mark.parametrize("nsf", [float("nan"), float("inf"), -1.0, 0, "big"])
def test_bad_norm_scaling_factor_refused(tmp_path, nsf):
    cfg = {"architecture": "standard", "normalize_activations": "expected_average_only_in", "norm_scaling_factor": nsf}
    (tmp_path / "cfg.json").parent.mkdir(exist_ok=True)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg).replace("NaN", "NaN"))
    with pytest.raises(GradsaeError, match="norm_scaling_factor"):
        load_sae(tmp_path)
    with pytest.raises(GradsaeError, match="norm_scaling_factor"):
        SAEConfig(d_in=D, d_sae=C, norm_scaling_factor=nsf)


def test_missing_norm_scaling_factor_advice_only_for_constant_scaling(tmp_path):
    write_lens(tmp_path, {"architecture": "standard", "normalize_activations": "expected_average_only_in"})
    with pytest.raises(GradsaeError, match="add the factor it was trained with"):
        load_sae(tmp_path)
    write_lens(tmp_path, {"architecture": "standard", "normalize_activations": "layer_norm"})
    with pytest.raises(GradsaeError, match="per-token normalisation") as e:
        load_sae(tmp_path)
    assert "norm_scaling_factor" not in str(e.value)


def test_raw_pickle_refused_without_torch_warning(tmp_path, capfd):
    import pickle
    import warnings

    import argparse

    (tmp_path / "ae.pt").write_bytes(pickle.dumps({"encoder.weight": argparse.Namespace(x=1)}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(GradsaeError, match="weights_only=True"):
            load_sae(tmp_path)
    assert not caught
    assert capfd.readouterr().err == ""


def test_gradsae_folder_written_before_folding_still_loads(tmp_path):
    """Folders from gradsae < issue 13 kept the scaling factor as a runtime setting."""
    write_lens(
        tmp_path,
        {
            "architecture": "topk",
            "k": 5,
            "d_in": D,
            "d_sae": C,
            "apply_b_dec_to_input": True,
            "normalize_activations": "expected_average_only_in",
            "metadata": {"gradsae": {"architecture": "topk", "norm_scaling_factor": 0.5}},
        },
    )
    sae = load_sae(tmp_path)
    assert sae.cfg.norm_scaling_factor == 0.5
    torch.testing.assert_close(sae.encode(X), topk_ref(X * 0.5, 5))


def test_gemma_scope_mlp_and_attention_keep_their_hooks(tmp_path):
    for release, hook in (
        ("gemma-scope-2b-pt-mlp", "blocks.12.hook_mlp_out"),
        ("gemma-scope-2b-pt-att-canonical", "blocks.12.attn.hook_z"),
        ("gemma-scope-2b-pt-res", "blocks.12.hook_resid_post"),
    ):
        folder = tmp_path / release / "layer_12" / "width_16k" / "average_l0_50"
        folder.mkdir(parents=True)
        np.savez(
            folder / "params.npz",
            W_enc=W_enc.numpy(),
            b_enc=b_enc.numpy(),
            W_dec=W_dec.numpy(),
            b_dec=b_dec.numpy(),
            threshold=thr.numpy(),
        )
        assert load_sae(folder).cfg.hook_name == hook


def test_convert_refuses_existing_file_folder_and_bad_dtype(tmp_path, capsys):
    from gradsae.cli import main

    SAE.init_random(SAEConfig(d_in=D, d_sae=C, architecture="topk", k=3)).save(tmp_path / "a")
    (tmp_path / "file").write_text("x")
    cases = [
        ([str(tmp_path / "a"), str(tmp_path / "file")], "is a file"),
        ([str(tmp_path / "a"), str(tmp_path / "a")], "already holds files"),
        ([str(tmp_path / "a"), str(tmp_path / "new"), "--dtype", "float8"], "--dtype 'float8'"),
        ([str(tmp_path / "a"), str(tmp_path / "new2"), "--hook-name", "nonsense"], "not a hook name"),
    ]
    for args, msg in cases:
        assert main(["convert", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file"]  # no temporary folder left
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "ok"), "--hook-name", "mlp_out_layer_3"]) == 0
    assert load_sae(tmp_path / "ok").cfg.hook_name == "blocks.3.hook_mlp_out"


def test_gemma_scope_layer_read_through_a_hub_cache_symlink(tmp_path):
    """Hugging Face caches keep params.npz in blobs/ and symlink it from snapshots/<rev>/layer_L/..."""
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    np.savez(
        blob.with_suffix(".npz"),
        W_enc=W_enc.numpy(),
        b_enc=b_enc.numpy(),
        W_dec=W_dec.numpy(),
        b_dec=b_dec.numpy(),
        threshold=thr.numpy(),
    )
    link = tmp_path / "models--google--gemma-scope-2b-pt-mlp" / "snapshots" / "r1" / "layer_7" / "width_16k" / "x"
    link.mkdir(parents=True)
    (link / "params.npz").symlink_to(blob.with_suffix(".npz"))
    assert load_sae(link).cfg.hook_name == "blocks.7.hook_mlp_out"


def test_load_sae_device_auto_and_unknown():
    sae = load_sae(DEFAULT_SAE, device="auto")
    assert sae.W_enc.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(GradsaeError, match="unknown device 'tpu'"):
        load_sae(DEFAULT_SAE, device="tpu")


def test_saelens_jumprelu_training_checkpoint_with_log_threshold(tmp_path):
    write_lens(tmp_path, {"architecture": "jumprelu", "apply_b_dec_to_input": False}, log_threshold=thr.log())
    check(load_sae(tmp_path), jump_ref(X))


# ---- files another program or person wrote: one line or a correct load, never a traceback ---------------


def _saved(tmp_path, arch="gsae"):
    from conftest import random_sae

    sae = random_sae(d_in=16, d_sae=32, arch=arch, k=4 if arch in ("topk", "gsae") else None, layer=1, bias=0.1)
    sae.cfg.beta, sae.cfg.norm_scaling_factor = 0.5, 2.0
    return sae, sae.save(tmp_path / "sae")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.update(k=-3), "k=-3"),
        (lambda c: c.update(architecture="jumprelu"), "architecture='jumprelu'"),
        (lambda c: c.update(apply_b_dec_to_input="no"), "apply_b_dec_to_input='no'"),
        (lambda c: c["metadata"]["gradsae"].update(beta="x"), "beta='x'"),
        (lambda c: c["metadata"]["gradsae"].update(beta_mode="foo"), "beta_mode='foo'"),
        (lambda c: c.update(d_in="17"), "d_in=17"),
        (lambda c: c.update(k="thirty-two"), "k='thirty-two'"),
    ],
)
def test_an_edited_gradsae_folder_is_one_line_not_another_sae(tmp_path, edit, message):
    """sae-lens reads the top-level fields, gradsae its metadata: when they disagree neither wins silently."""
    import json

    from gradsae.saes import load_sae

    _, folder = _saved(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(GradsaeError, match=re.escape(message)):
        load_sae(folder)


@pytest.mark.parametrize("arch", ["gsae", "jumprelu", "relu"])
def test_mutated_cfg_json_loads_or_is_one_line(tmp_path, arch):
    import json

    from gradsae.saes import load_sae

    sae, folder = _saved(tmp_path, arch)
    x = torch.randn(3, 16)

    def read():
        got = load_sae(folder)
        # a load that kept the architecture computes what the saved SAE computes, or the edit changed k /
        # metadata that only matters elsewhere: either way a finite reconstruction
        if got.cfg.architecture == sae.cfg.architecture and got.cfg.apply_b_dec_to_input:
            assert torch.isfinite(got(x)).all()

    n, loaded = each_mutation(folder / "cfg.json", json.loads((folder / "cfg.json").read_text()), read)
    assert n > 200 and loaded > 0


def test_format_registry_order_and_a_registered_format(tmp_path, monkeypatch):
    """Detection follows formats.ORDER (a folder with SAELens and Gemma Scope files is read as SAELens); a format
    registered by other code is one module's ``register`` call and is tried after the built-in ones."""
    from gradsae.saes import formats

    both = tmp_path / "both"
    both.mkdir()
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, both / "sae_weights.safetensors")
    (both / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": C}))
    np.savez(both / "params.npz", W_enc=W_enc.numpy(), b_enc=b_enc.numpy(), W_dec=W_dec.numpy(), b_dec=b_dec.numpy())
    assert [f.name for f in formats.detection_order()][: len(formats.ORDER)] == list(formats.ORDER)
    assert load_sae(both).cfg.metadata["format"] == "saelens"

    toy = tmp_path / "toy"
    toy.mkdir()
    (toy / "toy.sae").write_text("relu")

    def load(path):
        sae = SAE(SAEConfig(d_in=D, d_sae=C, architecture=path.read_text(), metadata={"format": "toy"}))
        with torch.no_grad():
            sae.W_enc.copy_(W_enc), sae.b_enc.copy_(b_enc), sae.W_dec.copy_(W_dec), sae.b_dec.copy_(b_dec)
        return sae

    with pytest.raises(GradsaeError, match="not a known SAE folder"):
        load_sae(toy)
    monkeypatch.setattr(formats, "REGISTRY", dict(formats.REGISTRY))
    formats.register(
        formats.Format(
            "toy", "toy.sae (a test's format)", lambda p: p / "toy.sae" if (p / "toy.sae").is_file() else None, load
        )
    )
    assert [f.name for f in formats.detection_order()][-1] == "toy"
    check(load_sae(toy), relu_ref(X))
    with pytest.raises(GradsaeError, match=re.escape("toy.sae (a test's format)")):
        load_sae(tmp_path / "toy" / "toy.sae")  # a file no format takes: the message lists every format's files


# ---- Gemma Scope 2 -------------------------------------------------------------------------------


def gemma_scope_2_folder(root, site="resid_post", layer=2, config=None, extra=None):
    """A Gemma Scope 2 folder as the release lays it out: <site>/layer_L_width_W_l0_small/params.safetensors."""
    folder = root / site / f"layer_{layer}_width_48_l0_small"
    folder.mkdir(parents=True)
    w = {"w_enc": W_enc, "w_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr, **(extra or {})}
    save_file({k: v.contiguous() for k, v in w.items()}, folder / "params.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_gemma_scope_2_residual_from_the_path_and_from_config(tmp_path):
    sae = load_sae(gemma_scope_2_folder(tmp_path / "a"))
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.hook_name == "blocks.2.hook_resid_post"
    assert sae.cfg.metadata["format"] == "gemma_scope_2" and not sae.cfg.apply_b_dec_to_input
    check(sae, jump_ref(X, apply=False))
    cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-1b-pt", "hf_hook_point_in": "model.layers.5.output"}
    other = load_sae(gemma_scope_2_folder(tmp_path / "b", site="somewhere", config=cfg) / "params.safetensors")
    assert other.cfg.hook_name == "blocks.5.hook_resid_post" and other.cfg.model_name == "gemma-v3-1b-pt"
    check(other, jump_ref(X, apply=False))


@pytest.mark.parametrize(
    "site,hf,hook",
    [
        ("attn_out", "model.layers.2.self_attn.o_proj.input", "blocks.2.attn.hook_z"),
        ("mlp_out", "model.layers.2.post_feedforward_layernorm.output", "blocks.2.hook_mlp_out"),
    ],
)
def test_gemma_scope_2_attention_and_mlp_sites_keep_their_hook(tmp_path, site, hf, hook):
    from conftest import make_tiny
    from gradsae.splice import check_compatible

    assert load_sae(gemma_scope_2_folder(tmp_path / "path", site=site)).cfg.hook_name == hook
    cfg = {"architecture": "jump_relu", "hf_hook_point_in": hf}
    sae = load_sae(gemma_scope_2_folder(tmp_path / "cfg", site="x", config=cfg))
    assert sae.cfg.hook_name == hook
    model, _ = make_tiny("gemma3")
    with pytest.raises(GradsaeError, match="this command splices only at hook_resid_post"):
        check_compatible(model, sae.to(torch.float32), 2)  # never moved to the residual stream


def test_gemma_scope_2_transcoders_with_and_without_skip(tmp_path):
    """Transcoders read the MLP input (pre_feedforward_layernorm's output: ln2.hook_normalized) and write the MLP
    output; the skip matrix is used as stored, x @ affine_skip_connection (asymmetric here, so a transpose shows)."""
    plain = load_sae(gemma_scope_2_folder(tmp_path / "a", site="transcoder"))
    assert (plain.cfg.hook_name, plain.cfg.hook_name_out) == ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")
    assert plain.cfg.is_transcoder and not plain.cfg.skip_connection
    check(plain, jump_ref(X, apply=False))
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(9))
    assert (A - A.T).abs().max() > 0.1
    cfg = {
        "architecture": "jump_relu",
        "hf_hook_point_in": "model.layers.4.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.4.post_feedforward_layernorm.output",
        "affine_connection": True,
    }
    skip = load_sae(gemma_scope_2_folder(tmp_path / "b", site="x", config=cfg, extra={"affine_skip_connection": A}))
    assert skip.cfg.skip_connection and skip.cfg.hook_name_out == "blocks.4.hook_mlp_out"
    torch.testing.assert_close(skip(X), jump_ref(X) @ W_dec + b_dec + X @ A, rtol=1e-5, atol=1e-5)
    with pytest.raises(GradsaeError, match="transcoder's weights"):
        load_sae(gemma_scope_2_folder(tmp_path / "c", extra={"affine_skip_connection": A}))  # under resid_post/


def test_gemma_scope_2_clts_and_unknown_sites_are_one_line(tmp_path):
    clt = tmp_path / "clt" / "width_4k_l0_small"
    clt.mkdir(parents=True)
    save_file({"w_enc": W_enc}, clt / "params_layer_0.safetensors")
    with pytest.raises(GradsaeError, match="cross-layer transcoder"):
        load_sae(clt)
    with pytest.raises(GradsaeError, match="cannot tell the site"):
        load_sae(gemma_scope_2_folder(tmp_path / "d", site="elsewhere"))
    with pytest.raises(GradsaeError, match="jump_relu"):
        load_sae(gemma_scope_2_folder(tmp_path / "e", config={"architecture": "topk"}))


def test_gemma_scope_2_config_mutations_are_one_line_or_a_load(tmp_path):
    from conftest import json_mutations

    good = {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-1b-pt",
        "hf_hook_point_in": "model.layers.2.output",
        "width": 48,
        "l0": 10,
    }
    folder = gemma_scope_2_folder(tmp_path, config=good)
    cases = list(json_mutations(good)) + [("deep", json.loads("[" * 400 + "]" * 400)), ("list", [good])]
    for name, cfg in cases:
        (folder / "config.json").write_text(json.dumps(cfg))
        try:
            sae = load_sae(folder)
        except GradsaeError as e:
            assert "\n" not in str(e), name
            continue
        assert sae.cfg.hook_name.startswith("blocks."), name


def _finite_load(folder):
    def read():
        assert torch.isfinite(load_sae(folder)(X)).all()

    return read


def test_mutated_sparsify_cfg_json_loads_or_is_one_line(tmp_path):
    folder, cfg = _sparsify_folder(tmp_path)
    n, loaded = each_mutation(folder / "cfg.json", cfg, _finite_load(folder))
    assert n > 100 and loaded > 0


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK", "JumpReluAutoEncoder"])
def test_mutated_dictionary_learning_config_loads_or_is_one_line(tmp_path, dict_class):
    cfg, _ = _dictionary_learning_folder(tmp_path, dict_class)
    n, loaded = each_mutation(tmp_path / "config.json", cfg, _finite_load(tmp_path))
    assert n > 80 and loaded > 0


def test_mutated_transcoder_cfg_json_loads_or_is_one_line(tmp_path):
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name="blocks.2.ln2.hook_normalized",
        hook_name_out="blocks.2.hook_mlp_out",
        d_out=D + 2,
        skip_connection=True,
    )
    SAE.init_random(cfg, seed=2).save(tmp_path / "t")
    n, loaded = each_mutation(
        tmp_path / "t" / "cfg.json", json.loads((tmp_path / "t" / "cfg.json").read_text()), _finite_load(tmp_path / "t")
    )
    assert n > 150 and loaded > 0
