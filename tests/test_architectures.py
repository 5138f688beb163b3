"""The architecture registry: every module asks it, and a new architecture is one module + one registration
(tests/toy_architecture.py), which then encodes, trains, saves and loads like the built-in ones."""

import pytest
import torch

from conftest import make_tiny
from gradsae.saes import architectures
from gradsae.errors import GradsaeError
from gradsae.saes.sae import SAE, SAEConfig


@pytest.fixture(autouse=True, scope="module")
def toy():
    """Register the toy for this module's tests only (other tests see the built-in registry)."""
    import importlib
    import sys

    sys.modules.pop("toy_architecture", None)
    mod = importlib.import_module("toy_architecture")
    yield mod
    architectures.REGISTRY.pop("abstopk_toy", None)
    sys.modules.pop("toy_architecture", None)


def test_the_built_in_architectures_and_what_they_declare():
    names = set(architectures.REGISTRY)
    assert {"relu", "jumprelu", "batchtopk", "topk", "gsae", "e2e"} <= names
    assert {"topk", "gsae", "e2e", "abstopk_toy"} <= set(architectures.trainable())
    assert architectures.get("gsae").training.needs_grad and architectures.get("e2e").training.loss == "kl"
    assert {a: architectures.get(a).saelens for a in ("gsae", "e2e", "batchtopk", "relu")} == {
        "gsae": "topk",
        "e2e": "topk",
        "batchtopk": "jumprelu",
        "relu": "standard",
    }
    with pytest.raises(GradsaeError, match="unknown SAE architecture 'gated'"):
        architectures.get("gated")
    with pytest.raises(ValueError, match="registered already"):
        architectures.register(architectures.Architecture("topk", "dense", "standard"))
    with pytest.raises(ValueError, match="TopK-family"):
        architectures.register(architectures.Architecture("x", "dense", "standard", training=architectures.Training()))


def test_a_registered_architecture_encodes_with_its_own_selection():
    sae = SAE.init_random(SAEConfig(d_in=8, d_sae=16, architecture="abstopk_toy", k=3), seed=0)
    x = torch.randn(5, 8)
    code = sae.encode_sparse(x)
    pre = sae.encode_pre(x)
    assert (code.indices.sort().values == pre.abs().topk(3).indices.sort().values).all()
    torch.testing.assert_close(code.values, pre.gather(-1, code.indices).relu())
    with pytest.raises(GradsaeError, match="needs k"):
        SAEConfig(d_in=8, d_sae=16, architecture="abstopk_toy")


def test_a_registered_architecture_trains_saves_and_loads(tmp_path):
    from gradsae import load_sae
    from gradsae.training.train import TrainConfig, run

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"doc {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(60)))
    out = run(
        TrainConfig(
            model=str(tmp_path / "m"),
            data=[str(corpus)],
            out=str(tmp_path / "run"),
            layers=[1],
            architectures=["topk", "abstopk_toy"],
            k=[4],
            d_sae=[32],
            batch_size=4,
            context_length=16,
            max_tokens=4 * 16 * 6,
            shuffle_batches=2,
            device="cpu",
            progress=False,
            warmup_steps=1,
        )
    )
    toy, topk = load_sae(out / "abstopk_toy_k4"), load_sae(out / "topk_k4")
    assert toy.cfg.architecture == "abstopk_toy" and toy.cfg.metadata["train_steps"] == 6
    assert not torch.equal(toy.W_dec, topk.W_dec)  # same start, different selection, different weights
    with pytest.raises(GradsaeError, match="cannot train architecture 'jumprelu'"):
        run(TrainConfig(model=str(tmp_path / "m"), data=[str(corpus)], architectures=["jumprelu"], layers=[1]))
