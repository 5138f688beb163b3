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

NAMES = ("smollm2/topk/L9", "smollm2/gsae/L9")
REPO = Path(__file__).resolve().parents[1]


def _folder(name):
    return bundled_saes()[name]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_sae_loads_with_documented_shape(name):
    assert name in bundled_saes()
    sae = load_sae(name)
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (576, 4096, 32)
    assert sae.cfg.hook_name == "blocks.9.hook_resid_post" and sae.layer == 9
    assert sae.cfg.architecture == name.split("/")[1]
    assert sae.W_dec.shape == (4096, 576) and sae.W_enc.shape == (576, 4096)
    torch.testing.assert_close(sae.W_dec.float().norm(dim=-1), torch.ones(4096), atol=2e-3, rtol=0)
    if sae.cfg.architecture == "gsae":
        assert sae.cfg.beta > 0 and sae.cfg.beta_mode == "rms" and float(sae.grad_scale) > 0


def test_bundled_saes_fit_the_size_budget():
    total = sum(f.stat().st_size for f in (REPO / "src/gradsae/bundled/saes").rglob("*") if f.is_file())
    assert total <= 25 * 2 ** 20, total


@pytest.mark.parametrize("name", NAMES)
def test_card_quotes_its_eval_json(name):
    folder = _folder(name)
    card = (folder / "README.md").read_text()
    ev = json.loads((folder / "eval.json").read_text())["eval_result_metrics"]
    for key, val in (("NMSE", ev["reconstruction_quality"]["nmse"]),
                     ("L_added", ev["model_performance_preservation"]["l_added"]),
                     ("dead fraction", ev["misc"]["dead_frac"])):
        m = re.search(rf"\| {re.escape(key)}[^|]*\| *([-0-9.e]+) *\|", card)
        assert m, f"card of {name} has no {key} row"
        assert float(m.group(1)) == pytest.approx(val, rel=5e-3, abs=5e-4), key
    assert "gradsae train" in card and "gradsae eval" in card and "gradsae cache" in card


def _heldout_activations(sae):
    """Recompute the held-out shard's sequences from the corpus (same packing and shuffle) and x at layer 9."""
    from gradsae import ResidualCapture, load_model
    from gradsae.training.cache import iter_documents, pack_sequences

    meta = sae.cfg.metadata
    c = meta["cache"]
    model, tok = load_model("smollm2")
    data = [str(p) if Path(p).is_absolute() else str(REPO / p) for p in c["data"]]
    if not all(Path(p).exists() for p in data):
        pytest.skip("the training corpus (../shared/data) is not available here")
    seqs = pack_sequences(iter_documents(data), tok, c["context_length"], c["prepend_bos"], c["max_tokens"])
    if c["shuffle"]:
        seqs = seqs[np.random.default_rng(c["seed"]).permutation(len(seqs))]
    h = meta["holdout_shards"][-1]
    rows = torch.from_numpy(seqs[h * c["seqs_per_shard"]:(h + 1) * c["seqs_per_shard"]].astype(np.int64))
    xs = []
    for a in range(0, len(rows), 16):
        b = rows[a:a + 16]
        with ResidualCapture(model, [9], stop=True) as cap:
            cap.run(input_ids=b, attention_mask=torch.ones_like(b))
        xs.append(cap.acts[9][:, c["drop_first"]:].reshape(-1, 576))
    return torch.cat(xs)


@pytest.mark.slow
def test_bundled_saes_reconstruct_heldout_activations():
    from gradsae.training.evals import reconstruction_metrics

    x = None
    for name in NAMES:
        sae = load_sae(name, dtype="float32")  # as `gradsae eval` does
        if x is None:
            x = _heldout_activations(sae)
        nmse = reconstruction_metrics(x, sae(x))["nmse"]
        card = json.loads((_folder(name) / "eval.json").read_text())
        card_nmse = card["eval_result_metrics"]["reconstruction_quality"]["nmse"]
        # the card was measured on float16-cached activations of these same tokens: allow 2% for rounding
        assert nmse < card_nmse * 1.02, (name, nmse, card_nmse)


def test_info_lists_every_bundled_sae_with_its_eval(capsys):
    from gradsae.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name, folder in bundled_saes().items():
        ev = json.loads((folder / "eval.json").read_text())["eval_result_metrics"]
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert f"{ev['reconstruction_quality']['nmse']:.4f}" in line, line
