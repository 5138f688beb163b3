"""Every SAE format: write from random tensors in that format's own layout, load, compare to a direct formula."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gradsae import SAE, GradsaeError, SAEConfig, load_sae
from gradsae.sae import gsae_selection_score, topk_code

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
    (tmp_path / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D, "d_sae": C, "dtype": "float32", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "metadata": {"model_name": "m", "hook_name": "blocks.3.hook_resid_post"}}))
    sae = load_sae(tmp_path)
    assert sae.cfg.architecture == "relu" and sae.layer == 3 and sae.cfg.model_name == "m"
    check(sae, relu_ref(X))


def test_saelens_v6_topk_and_jumprelu(tmp_path):
    (tmp_path / "a").mkdir()
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "a/sae_weights.safetensors")
    (tmp_path / "a/cfg.json").write_text(json.dumps({"architecture": "topk", "k": 5, "d_in": D, "d_sae": C,
                                                    "apply_b_dec_to_input": True, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}))
    sae = load_sae(tmp_path / "a")
    check(sae, topk_ref(X, 5))
    assert (sae.encode(X) != 0).sum(-1).max() <= 5
    (tmp_path / "b").mkdir()
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": thr},
              tmp_path / "b/sae_weights.safetensors")
    (tmp_path / "b/cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": D, "d_sae": C,
                                                    "apply_b_dec_to_input": False, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}))
    check(load_sae(tmp_path / "b"), jump_ref(X))


def test_saelens_old_flat_cfg(tmp_path):
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({
        "hook_point": "blocks.5.hook_resid_pre", "hook_point_layer": 5, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 7}, "d_in": D, "d_sae": C, "apply_b_dec_to_input": True, "model_name": "gpt2"}))
    sae = load_sae(tmp_path)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 7
    assert sae.layer == 4  # resid_pre of block 5 is the output of block 4
    check(sae, topk_ref(X, 7))


def test_gemma_scope_npz(tmp_path):
    folder = tmp_path / "layer_9" / "width_16k" / "average_l0_88"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=W_enc.numpy(), b_enc=b_enc.numpy(), W_dec=W_dec.numpy(),
             b_dec=b_dec.numpy(), threshold=thr.numpy())
    sae = load_sae(folder)
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input and sae.layer == 9
    check(sae, jump_ref(X, apply=False))
    assert load_sae(folder / "params.npz").layer == 9


def test_sparsify_folder(tmp_path):
    folder = tmp_path / "layers.6"
    folder.mkdir()
    save_file({"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
              folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 3, "normalize_decoder": True,
                                                 "num_latents": C, "k": 4, "multi_topk": False, "skip_connection": False,
                                                 "transcode": False, "d_in": D}))
    sae = load_sae(folder)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4 and sae.layer == 6
    check(sae, topk_ref(X, 4))
    with pytest.raises(GradsaeError, match="several SAEs"):
        load_sae(tmp_path)


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK", "JumpReluAutoEncoder"])
def test_dictionary_learning(tmp_path, dict_class):
    if dict_class == "AutoEncoder":
        sd = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "decoder.weight": W_dec.T.contiguous(), "bias": b_dec}
        ref = relu_ref(X)
    elif dict_class == "AutoEncoderTopK":
        sd = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "decoder.weight": W_dec.T.contiguous(),
              "b_dec": b_dec, "k": torch.tensor(6), "threshold": torch.tensor(-1.0)}
        ref = topk_ref(X, 6)
    else:
        sd = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": thr}
        ref = jump_ref(X)
    torch.save(sd, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "activation_dim": D,
                                                                  "dict_size": C, "k": 6 if "TopK" in dict_class else None,
                                                                  "layer": 2, "lm_name": "x"}}))
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
    save_file({"W_enc": torch.randn(D, C + 1), "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
              tmp_path / "sae_weights.safetensors")
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
