"""The one place that knows hook-point names and where the residual stream lives.

Every tool names "the residual stream after block L" differently:

====================================  ==========================================
``blocks.L.hook_resid_post``          TransformerLens / SAELens
``blocks.L+1.hook_resid_pre``         TransformerLens (input of the next block)
``model.layers.L`` / ``layers.L``     Hugging Face module path / EleutherAI sparsify
``transformer.h.L``                   GPT-2 module path
====================================  ==========================================

All of them resolve to ``resolve_layer(...) == L``: the output of decoder block L,
which equals ``hidden_states[L + 1]`` from ``output_hidden_states=True``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .errors import GradsaeError

_PATTERNS = [
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), -1),
    (re.compile(r"^(?:model\.)?layers\.(\d+)(?:\.output)?$"), 0),
    (re.compile(r"^(?:transformer\.)?h\.(\d+)$"), 0),
    (re.compile(r"^(?:gpt_neox\.)?layers\.(\d+)$"), 0),
    (re.compile(r"^layer_(\d+)(?:/.*)?$"), 0),  # Gemma Scope folder names
]


def hook_name_for(layer: int) -> str:
    """The canonical (SAELens) hook name for the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def parse_hook_name(name: str) -> int:
    """Map any known hook-point name to the index L of the block whose output it is.

    >>> parse_hook_name("blocks.9.hook_resid_post"), parse_hook_name("layers.9")
    (9, 9)
    """
    name = name.strip()
    if name.isdigit():
        return int(name)
    for pattern, shift in _PATTERNS:
        m = pattern.match(name)
        if m:
            layer = int(m.group(1)) + shift
            if layer < 0:
                raise GradsaeError(
                    f"hook {name!r} is the input of block 0 (the embeddings), which gradsae does not splice: "
                    "use an SAE trained on a block output (blocks.L.hook_resid_post, L >= 0)"
                )
            return layer
    raise GradsaeError(
        f"cannot map hook name {name!r} to a residual-stream layer: use one of "
        "'blocks.L.hook_resid_post', 'blocks.L.hook_resid_pre', 'model.layers.L', 'layers.L' or pass --layer L"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM (Llama, Gemma 2, Qwen2, GPT-2, NeoX, ...)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise GradsaeError(
        f"cannot find the decoder blocks of {type(model).__name__}: gradsae supports Hugging Face causal LMs "
        "with model.layers / transformer.h / gpt_neox.layers"
    )


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def resolve_layer(model: nn.Module, layer: int | str | None) -> int:
    """Validate a layer index (or hook name) against the model; negative indices count from the end."""
    n = n_layers(model)
    if layer is None:
        raise GradsaeError("no layer given: pass --layer L or use an SAE whose config names its hook")
    idx = parse_hook_name(layer) if isinstance(layer, str) else int(layer)
    if idx < 0:
        idx += n
    if not 0 <= idx < n:
        raise GradsaeError(f"layer {layer} is out of range: this model has blocks 0..{n - 1}")
    return idx


def block(model: nn.Module, layer: int) -> nn.Module:
    return decoder_layers(model)[resolve_layer(model, layer)]


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise GradsaeError(f"cannot read the hidden size of {type(model).__name__} from its config")


def unembedding(model: nn.Module) -> torch.Tensor:
    """W_U as [V, D] (the LM head's weight): logits = x @ W_U.T before any softcapping."""
    head = model.get_output_embeddings()
    if head is None:
        raise GradsaeError(f"{type(model).__name__} has no output embeddings: gradsae needs a causal LM head")
    return head.weight


def split_output(out):
    """A decoder block returns a Tensor (transformers >= 4.56 for most models) or a tuple; give (hidden, rest)."""
    if isinstance(out, torch.Tensor):
        return out, None
    return out[0], out[1:]


def join_output(hidden: torch.Tensor, rest):
    return hidden if rest is None else (hidden, *rest)
