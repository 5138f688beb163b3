"""Shared fixtures: tiny randomly initialised models of each architecture with a byte-level tokenizer
(no downloads), random SAEs, and the real bundled SmolLM2 for the slow tests."""

from __future__ import annotations

import functools
import os

import json

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# llama: Llama 3.x (llama3 rope scaling); gemma3: Gemma3ForCausalLM (270M / 1B); gemma3mm: the multimodal wrapper
# Gemma 3 4B+ loads as (Gemma3ForConditionalGeneration, used for text only)
ARCHS = ("llama", "gemma2", "gemma3", "gemma3mm", "qwen2", "qwen3", "gpt2")
D_MODEL = 64


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
    """A real fast tokenizer over 256 byte symbols plus <bos>/<eos>/<pad> (ids 256, 257, 258)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in ("<bos>", "<eos>", "<pad>"):
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tok.padding_side = "left"
    return tok


def tiny_config(arch: str, vocab: int):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=D_MODEL, n_layer=3, n_head=4, n_positions=512, **common)
    kw = dict(
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **common,
    )
    if arch == "llama":  # Llama 3.x: llama3 rope scaling
        kw.update(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        )
    if arch == "gemma2":
        kw.update(head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    if arch in ("gemma3", "gemma3mm"):  # local and global layers, a window shorter than the test prompts
        kw.update(
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=30.0,
        )
    if arch == "gemma3mm":
        from transformers import Gemma3Config

        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        ids = {k: v for k, v in common.items() if k != "vocab_size"}
        return Gemma3Config(text_config=kw, vision_config=vision, mm_tokens_per_image=4, image_token_index=300, **ids)
    if arch == "qwen3":
        kw.update(head_dim=16)
    return AutoConfig.for_model({"gemma3": "gemma3_text"}.get(arch, arch), **kw)


def make_tiny(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from gradsae.model import prepare

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_config(arch, len(tok))
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger weights so outputs are not all near-uniform
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return prepare(model, tok, "cpu", torch.float32)


@pytest.fixture(params=ARCHS)
def tiny(request):
    return make_tiny(request.param)


@pytest.fixture
def tiny_dir(tmp_path):
    """The tiny Llama saved as a Hugging Face folder (``m``) and a random SAE (``sae``) under tmp_path."""
    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    random_sae(bias=0.1).save(tmp_path / "sae")
    return tmp_path


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


def random_sae(d_in=D_MODEL, d_sae=256, arch="relu", k=None, layer=1, seed=0, bias=0.0, site="hook_resid_post"):
    from gradsae import SAE, SAEConfig

    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k, hook_name=f"blocks.{layer}.{site}")
    sae = SAE.init_random(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.mul_(0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1 + bias)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.05)
    return sae.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def smollm2():
    from gradsae import load_model

    return load_model("smollm2")


def json_mutations(cfg: dict, into_lists: bool = False, values=None, skip=None):
    """A few hundred versions of a valid cfg.json: every field deleted or given a value of another type or out
    of range, at every depth (``into_lists``: also inside the first element of every list; ``skip``: a path
    predicate for free-form parts)."""
    import copy

    values = values or [None, "x", "16", -1, 0, 1.5, 1e300, True, [], {}, [1, 2], {"a": 1}]

    def paths(v, prefix=()):
        items = v.items() if isinstance(v, dict) else enumerate(v[:1]) if into_lists and isinstance(v, list) else ()
        for k, sub in items:
            yield prefix + (k,)
            yield from paths(sub, prefix + (k,))

    for p in paths(cfg):
        if skip is not None and skip(p):
            continue
        for v in values + ["DELETE"]:
            c = copy.deepcopy(cfg)
            node = c
            for k in p[:-1]:
                node = node[k]
            if v == "DELETE":
                del node[p[-1]]
            else:
                node[p[-1]] = v
            yield f"{'.'.join(map(str, p))}={v!r}", c


def _mutated_files(good: dict, text: str):
    yield from json_mutations(good)
    yield from ((f"truncated at {i}", text[:i]) for i in range(0, len(text), max(1, len(text) // 40)))
    yield "deep nesting", "[" * 100_000 + "]" * 100_000
    yield "not UTF-8", b"\xff\xfe{"


def each_mutation(path, good: dict, read):
    """Write every mutation of ``good`` (and truncations, deep nesting, bytes that are not UTF-8) to ``path`` and
    call ``read()``: each is a load or one line (GradsaeError), never a traceback. Returns (cases, loads)."""
    from gradsae.errors import GradsaeError

    text = json.dumps(good)
    n = loads = 0
    for name, c in _mutated_files(good, text):
        if isinstance(c, bytes):
            path.write_bytes(c)
        else:
            path.write_text(c if isinstance(c, str) else json.dumps(c))
        n += 1
        try:
            read()
            loads += 1
        except GradsaeError as e:
            assert "\n" not in str(e), name
        except Exception as e:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"{path.name} {name}: {type(e).__name__}: {e}")
    path.write_text(text)
    return n, loads
