"""The SAEs shipped in the package: they load by short name, have the documented shapes, fit the size
budget, their cards quote their eval.json, and (slow) they reconstruct held-out SmolLM2 activations with
NMSE no worse than the card's value."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gradsae import bundled_saes, load_sae

# name -> (layer, architecture, k): three TopK layers spread over depth as the GradSAE paper's 9/20/31 of 42
# (Table 4), and a TopK / g-SAE / E2E trio trained on the same tokens at one layer (the g-SAE comparison)
EXPECTED = {
    "smollm2/topk/L6": (6, "topk", 128),
    "smollm2/topk/L14": (14, "topk", 128),
    "smollm2/topk/L22": (22, "topk", 128),
    "smollm2/topk-k32/L14": (14, "topk", 32),
    "smollm2/gsae/L14": (14, "gsae", 32),
    "smollm2/e2e/L14": (14, "e2e", 32),
}
NAMES = tuple(EXPECTED)
REPO = Path(__file__).resolve().parents[1]


def _folder(name):
    return bundled_saes()[name]


def test_the_bundled_set_is_the_documented_one():
    from gradsae.saes import DEFAULT_GSAE, DEFAULT_SAE

    assert set(bundled_saes()) == set(EXPECTED)
    assert DEFAULT_SAE in EXPECTED and DEFAULT_GSAE in EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_bundled_sae_loads_with_documented_shape(name):
    layer, arch, k = EXPECTED[name]
    sae = load_sae(name)
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (576, 4096, k)
    assert sae.cfg.hook_name == f"blocks.{layer}.hook_resid_post" and sae.layer == layer
    assert sae.cfg.architecture == arch
    assert sae.W_dec.shape == (4096, 576) and sae.W_enc.shape == (576, 4096)
    torch.testing.assert_close(sae.W_dec.float().norm(dim=-1), torch.ones(4096), atol=2e-3, rtol=0)
    if arch == "gsae":
        assert sae.cfg.beta > 0 and sae.cfg.beta_mode == "rms" and float(sae.grad_scale) > 0
    meta = sae.cfg.metadata
    assert meta["model_tokens"] > 0 and all("wiki-0" in d for d in meta["train_config"]["data"])
    assert not any("wiki-04" in d for d in meta["train_config"]["data"])  # the held-out shard


def test_bundled_saes_fit_the_size_budget():
    files = [f for f in (REPO / "src/gradsae/bundled/saes").rglob("*") if f.is_file()]
    weights = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    dashboards = sum(f.stat().st_size for f in files if f.name.startswith("dashboard"))
    assert weights <= 60e6, weights  # issue 11: at most 60 MB of weights in all
    assert dashboards <= 10e6, dashboards


@pytest.mark.parametrize("name", NAMES)
def test_card_quotes_its_eval_json(name):
    folder = _folder(name)
    card = (folder / "README.md").read_text()
    ev = json.loads((folder / "eval.json").read_text())["eval_result_metrics"]
    for key, val in (
        ("NMSE", ev["reconstruction_quality"]["nmse"]),
        ("L_added", ev["model_performance_preservation"]["l_added"]),
        ("dead fraction", ev["misc"]["dead_frac"]),
    ):
        m = re.search(rf"\| {re.escape(key)}[^|]*\| *([-0-9.e]+) *\|", card)
        assert m, f"card of {name} has no {key} row"
        assert float(m.group(1)) == pytest.approx(val, rel=5e-3, abs=5e-4), key
    assert "gradsae train" in card and "gradsae eval" in card and "gradsae cache" in card


WIKI04 = REPO.parent / "shared" / "data" / "wikipedia" / "wiki-04.jsonl.gz"


def _heldout_activations(layers, rows=32, T=128):
    """x at each layer [rows * (T - 1), D] for the first rows of the held-out Wikipedia shard (position 0,
    the attention sink, left out as in training)."""
    import itertools

    from gradsae import ResidualCapture, load_model
    from gradsae.corpus import iter_documents, iter_token_rows

    if not WIKI04.exists():
        pytest.skip("the held-out corpus (../shared/data/wikipedia) is not available here")
    model, tok = load_model("smollm2")
    ids = torch.from_numpy(
        np.stack(list(itertools.islice(iter_token_rows(iter_documents([str(WIKI04)]), tok, T, True), rows)))
    ).long()
    xs = {l: [] for l in layers}
    for a in range(0, len(ids), 8):
        b = ids[a : a + 8]
        with ResidualCapture(model, sorted(layers), stop=True) as cap:
            cap.run(input_ids=b, attention_mask=torch.ones_like(b))
        for l in layers:
            xs[l].append(cap.acts[l][:, 1:].reshape(-1, 576))
    return {l: torch.cat(v) for l, v in xs.items()}


@pytest.mark.slow
def test_bundled_saes_reconstruct_heldout_activations():
    """NMSE on 4,064 held-out tokens near the card's (measured on 16k other held-out tokens of the same
    shard): a broken export or a wrong scaling factor would be off by far more than the 25% allowed."""
    from gradsae.training.evals import reconstruction_metrics

    xs = _heldout_activations({l for l, _, _ in EXPECTED.values()})
    for name, (layer, _, _) in EXPECTED.items():
        sae = load_sae(name, dtype="float32")  # as `gradsae eval` does
        nmse = reconstruction_metrics(xs[layer], sae(xs[layer]))["nmse"]
        card = json.loads((_folder(name) / "eval.json").read_text())
        card_nmse = card["eval_result_metrics"]["reconstruction_quality"]["nmse"]
        assert nmse < card_nmse * 1.25, (name, nmse, card_nmse)
