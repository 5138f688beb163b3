"""Sensitivity analyses (g-SAE §2.3/§2.4/§4.4): the pure pieces on toy tensors, the ΔL probe against the
gradient on a tiny model, and one small run of the command on the bundled model."""

import json
import math

import pytest
import torch

from gradsae.saes import DEFAULT_SAE, load_sae
from gradsae.errors import GradsaeError
from gradsae.sensitivity import (
    SensitivityConfig,
    capture_with_grads,
    nearest_cosine,
    perturbation_effects,
    random_directions,
    tail_latents,
    uniform_norms,
)

from conftest import make_tiny


def test_random_directions_kinds():
    g = torch.Generator().manual_seed(0)
    D = 16
    scales = torch.ones(D)
    scales[0] = 20.0  # one dominant direction in the "activations"
    acts = torch.randn(4000, D, generator=g) * scales
    at, dirs = random_directions(acts, 3000, g)
    assert at.shape == (3000,) and int(at.max()) < 4000
    for v in dirs.values():
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(3000))
    # covariance-adjusted and difference directions follow the dominant axis; isotropic ones do not
    assert dirs["covariance-adjusted"][:, 0].abs().mean() > 0.8
    assert dirs["activation difference"][:, 0].abs().mean() > 0.8
    assert dirs["isotropic"][:, 0].abs().mean() < 0.3


def test_uniform_norms_mean_and_sd():
    r = uniform_norms(2.0, 200_000, torch.Generator().manual_seed(0))
    assert abs(float(r.mean()) - 2.0) < 0.01 and abs(float(r.std()) - 1.0) < 0.01 and float(r.min()) > 0


def test_nearest_cosine_and_tails():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(300, 8, generator=g)
    W[1] = W[0] * 3  # an exact duplicate direction
    sim = nearest_cosine(W, chunk=64)
    Wn = W / W.norm(dim=1, keepdim=True)
    brute = (Wn @ Wn.T).fill_diagonal_(-2).max(1).values
    torch.testing.assert_close(sim, brute)
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    parts = tail_latents(sim, 5, g)
    assert all(len(v) == 5 for v in parts.values())
    assert (
        sim[parts["left tail"]].max()
        < sim[parts["middle"]].min()
        <= sim[parts["middle"]].max()
        < sim[parts["right tail"]].min()
    )


def test_perturbation_effect_matches_gradient_to_first_order():
    model, tok = make_tiny("llama")
    model.requires_grad_(False)
    rows = torch.randint(3, len(tok), (2, 12))
    acts, grads = capture_with_grads(model, rows, [1])
    g = grads[1][0, 5]
    d = torch.randn(3, g.shape[0])
    d = d / d.norm(dim=1, keepdim=True) * 1e-3
    dl = perturbation_effects(model, rows[0], 1, 5, d)
    torch.testing.assert_close(dl.float(), d @ g, rtol=0.05, atol=1e-7)
    assert perturbation_effects(model, rows[0], 1, 5, torch.zeros(2, g.shape[0])).abs().max() == 0
    # the last position predicts nothing, so the loss does not depend on it (why the analyses leave it out)
    assert grads[1][0, -1].abs().sum() == 0 and grads[1][0, -2].abs().sum() > 0


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sequences": 0}, "--sequences"),
        ({"scales": [0.1, float("nan")]}, "--scales"),
        ({"layers": [], "fig3_layers": [], "sae": []}, "nothing to do"),
        ({"out": " "}, "--out"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(GradsaeError, match=match):
        SensitivityConfig(**kw)


@pytest.mark.slow
def test_command_on_bundled_model(tmp_path):
    from gradsae.sensitivity import run

    cfg = SensitivityConfig(
        layers=[3, 20],
        fig3_layers=[load_sae(DEFAULT_SAE).layer],
        sae=[DEFAULT_SAE],
        sequences=4,
        positions=256,
        scales=[0.01, 1.0],
        perturbations=16,
        per_position=8,
        latents_per_tail=5,
        context_length=32,
        out=str(tmp_path / "s"),
        progress=False,
        device="cpu",
    )
    res = run(cfg)
    assert {(r.layer, r.kind) for r in res.directional} == {
        (l, k) for l in (3, 20) for k in ("activation difference", "isotropic", "covariance-adjusted")
    }
    assert [r.scale for r in res.fig3] == [0.01, 1.0] and all(-1 <= r.rho_norm <= 1 for r in res.fig3)
    # first-order estimates are accurate for small perturbations
    assert res.fig3[0].first_order_rel_error < 0.2
    assert {r.part for r in res.tails} == {"left tail", "middle", "right tail"}
    for f in ("sensitivity.json", "summary.md", "fig2_directional.png", "fig3_spearman.png", "config.json"):
        assert (tmp_path / "s" / f).stat().st_size > 0
    saved = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert len(saved["done"]) == 4 and all(math.isfinite(r["mean"]) for r in saved["directional"])
    again = run(cfg)  # everything done: nothing recomputed, same numbers
    assert again.fig3 == res.fig3
    cfg2 = SensitivityConfig(**{**cfg.__dict__, "sequences": 5})
    with pytest.raises(GradsaeError, match="other settings"):
        run(cfg2)


def test_a_foreign_sensitivity_json_is_one_line(tmp_path):
    from gradsae.errors import GradsaeError
    from gradsae.sensitivity import SensitivityResults

    p = tmp_path / "sensitivity.json"
    for text in ('{"my": "notes"}', "[1, 2]", '{"config": {}, "directional": [{"x": 1}], "fig3": [], "tails": []}'):
        p.write_text(text)
        with pytest.raises(GradsaeError, match="not written by gradsae sensitivity"):
            SensitivityResults.load(p)
