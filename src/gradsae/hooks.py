"""The one place that knows hook-point names and where the residual stream lives.

Every tool names "the residual stream after block L" differently:

====================================  ==========================================
``blocks.L.hook_resid_post``          TransformerLens / SAELens
``blocks.L+1.hook_resid_pre``         TransformerLens (input of the next block)
``model.layers.L`` / ``layers.L``     Hugging Face module path / EleutherAI sparsify
``transformer.h.L``                   GPT-2 module path
``resid_post_layer_L``                dictionary_learning ``submodule_name``
====================================  ==========================================

SAEs trained elsewhere (``blocks.L.hook_mlp_out``, ``blocks.L.attn.hook_z``, ``mlp_out_layer_L``,
``layers.L.mlp``, Gemma Scope ``-mlp`` / ``-att`` releases) keep their true hook name
(``canonical_hook_name``), never moved to the residual stream. The splice serves the sites in
``SPLICE_SITES`` (``site_of`` reads the site, ``site_point`` finds its module); other sites are refused in
one line.

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
    (re.compile(r"^resid_post_layer_(\d+)$"), 0),  # dictionary_learning submodule_name
]

# Hook points that are NOT the residual stream after a block: SAEs trained there are loaded with their
# true hook name (TransformerLens spelling) and refused by the splice, which serves block outputs only.
_OTHER_SITES = [
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_out$"), "hook_mlp_out"),
    (re.compile(r"^blocks\.(\d+)\.hook_attn_out$"), "hook_attn_out"),
    (re.compile(r"^blocks\.(\d+)\.attn\.hook_z$"), "attn.hook_z"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_mid$"), "hook_resid_mid"),
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_in$"), "hook_mlp_in"),
    (re.compile(r"^blocks\.(\d+)\.ln2\.hook_normalized$"), "ln2.hook_normalized"),
    (re.compile(r"^blocks\.(\d+)\.(mlp\.hook_post|mlp\.hook_pre)$"), None),
    (re.compile(r"^mlp_out_layer_(\d+)$"), "hook_mlp_out"),  # dictionary_learning
    (re.compile(r"^attn_out_layer_(\d+)$"), "hook_attn_out"),  # dictionary_learning
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp$"), "hook_mlp_out"),  # sparsify / HF module paths
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn$"), "hook_attn_out"),
    (re.compile(r"^(?:transformer\.)?h\.(\d+)\.mlp$"), "hook_mlp_out"),
    (re.compile(r"^(?:transformer\.)?h\.(\d+)\.attn$"), "hook_attn_out"),
    # Hugging Face module hook points (Gemma Scope 2's config.json, as sae-lens hooks them)
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.o_proj\.input$"), "attn.hook_z"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.post_feedforward_layernorm\.output$"), "hook_mlp_out"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.pre_feedforward_layernorm\.output$"), "ln2.hook_normalized"),
]

_SITE_WORDS = {
    "hook_mlp_out": "the MLP output",
    "hook_attn_out": "the attention output",
    "attn.hook_z": "the attention heads' outputs before W_O",
    "hook_resid_mid": "the mid-block residual",
    "hook_mlp_in": "the MLP input before its norm",
    "ln2.hook_normalized": "the MLP input",
}


# The sites the splice serves, as TransformerLens names them; where each lives in a Hugging Face block is
# ``site_point``'s business. A transcoder reads one of TRANSCODER_INPUTS and writes hook_mlp_out of the same block.
SPLICE_SITES = ("hook_resid_post", "hook_attn_out", "attn.hook_z", "hook_mlp_out")
TRANSCODER_INPUTS = ("ln2.hook_normalized", "hook_mlp_in")


def site_of(name: str | None) -> tuple[int, str] | None:
    """(block L, site) of any known spelling of a hook point; None for a name gradsae does not know.

    >>> site_of("layers.4.mlp"), site_of("blocks.2.hook_resid_pre")
    ((4, 'hook_mlp_out'), (1, 'hook_resid_post'))
    """
    m = re.match(r"^blocks\.(\d+)\.(.+)$", canonical_hook_name(str(name or "")))
    return (int(m.group(1)), m.group(2)) if m else None


def _child(parent: nn.Module, *names: str) -> nn.Module:
    for name in names:
        if isinstance(getattr(parent, name, None), nn.Module):
            return getattr(parent, name)
    raise GradsaeError(
        f"{type(parent).__name__} has no {' / '.join(names)} submodule: gradsae cannot find this site in this model"
    )


def site_point(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, str]:
    """The module of block ``layer`` whose output (``"output"``) or first input (``"input"``) is ``site``.

    Where each site is, as TransformerLens defines it (and sae-lens hooks Gemma Scope 2 on HF models):

    - ``hook_resid_post``: the block's output;
    - ``hook_mlp_out``: the MLP's output, after ``post_feedforward_layernorm`` where the block has one (Gemma 2/3);
    - ``hook_attn_out``: the attention's output (after ``o_proj``), after ``post_attention_layernorm`` where the
      block normalises both outputs (Gemma 2/3; in Llama-style blocks that name is the pre-MLP norm);
    - ``attn.hook_z``: the input of the attention's output projection (the heads' outputs, concatenated);
    - ``ln2.hook_normalized``: the MLP's input (after the pre-MLP norm); ``hook_mlp_in``: the pre-MLP norm's input
      (the residual between attention and MLP). Transcoders read these; they are not replaced.
    """
    blk = block(model, layer)
    post_norms = isinstance(getattr(blk, "post_feedforward_layernorm", None), nn.Module)
    if site == "hook_resid_post":
        return blk, "output"
    if site == "hook_mlp_out":
        return (blk.post_feedforward_layernorm if post_norms else _child(blk, "mlp")), "output"
    if site == "hook_attn_out":
        return (blk.post_attention_layernorm if post_norms else _child(blk, "self_attn", "attn", "attention")), "output"
    if site == "attn.hook_z":
        attn = _child(blk, "self_attn", "attn", "attention")
        return _child(attn, "o_proj", "c_proj", "dense", "out_proj"), "input"
    if site == "ln2.hook_normalized":
        return _child(blk, "mlp"), "input"
    if site == "hook_mlp_in":
        norm = "pre_feedforward_layernorm" if post_norms else "post_attention_layernorm"
        return _child(blk, norm, "ln_2", "post_attention_layernorm"), "input"
    raise GradsaeError(
        f"gradsae does not splice at {_SITE_WORDS.get(site, site)}: it splices at {', '.join(SPLICE_SITES)}"
    )


def site_width(model: nn.Module, layer: int, site: str) -> int:
    """The width of the activation at ``site`` (d_model, or n_heads × d_head for ``attn.hook_z``)."""
    if site != "attn.hook_z":
        return hidden_size(model)
    proj, _ = site_point(model, layer, site)
    if isinstance(proj, nn.Linear):
        return proj.in_features
    return int(proj.weight.shape[0])  # GPT-2's Conv1D keeps its weight as [in, out]


def hook_name_for(layer: int, site: str = "hook_resid_post") -> str:
    """The canonical (SAELens / TransformerLens) hook name for ``site`` of block ``layer``.

    >>> hook_name_for(9), hook_name_for(4, "hook_mlp_out")
    ('blocks.9.hook_resid_post', 'blocks.4.hook_mlp_out')
    """
    return f"blocks.{layer}.{site}"


def canonical_hook_name(name: str) -> str:
    """Any known spelling of a hook point -> its TransformerLens name; the site is kept, never guessed.

    Residual names become ``blocks.L.hook_resid_post`` (``resid_pre`` of block L+1 included), an MLP or
    attention output keeps its site (``mlp_out_layer_4`` -> ``blocks.4.hook_mlp_out``); a name gradsae does
    not know is returned unchanged, so the splice refuses it instead of guessing the residual stream.
    """
    name = name.strip()
    for pattern, site in _OTHER_SITES:
        m = pattern.match(name)
        if m:
            return name if site is None else hook_name_for(int(m.group(1)), site)
    try:
        return hook_name_for(parse_hook_name(name))
    except GradsaeError:
        return name


def gemma_scope_hook(parts: tuple[str, ...]) -> str:
    """Hook of a Gemma Scope ``params.npz`` from its path, e.g. ``gemma-scope-9b-pt-mlp/layer_12/...``.

    Releases end in ``-res``, ``-mlp`` or ``-att`` (optionally ``-canonical``); ``layer_L`` gives the block.
    A path with a layer but no release marker is taken as residual (the ``-res`` releases are the common
    case and the model-width check still applies); one without a layer gives "" (the user passes --layer).
    """
    layer, site = None, "hook_resid_post"
    for part in parts:
        m = re.match(r"layer_(\d+)$", part)
        if m:
            layer = int(m.group(1))
        m = re.search(r"-(res|mlp|att)(?:-canonical)?$", part)
        if m:
            site = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}[m.group(1)]
    if layer is None:
        return ""
    return hook_name_for(layer, site)


def dictionary_learning_hook(submodule_name: str | None, layer: int | None) -> str:
    """Hook of a dictionary_learning SAE from its trainer config (``submodule_name``, ``layer``).

    ``resid_post_layer_4`` -> ``blocks.4.hook_resid_post``; ``mlp_out_layer_4`` -> ``blocks.4.hook_mlp_out``;
    no submodule name -> the residual stream after ``layer`` (the library's default submodule).
    """
    if submodule_name:
        return canonical_hook_name(str(submodule_name))
    return hook_name_for(int(layer)) if layer is not None else ""


def parse_hook_name(name: str) -> int:
    """Map any residual-stream hook name to the index L of the block whose output it is.

    Non-residual hooks (MLP / attention outputs) are refused with one line (``site_of`` reads those): a block
    index for them would read activations their SAE never saw.

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
    for pattern, site in _OTHER_SITES:
        m = pattern.match(name)
        if m:
            what = _SITE_WORDS.get(site, "not the residual stream")
            raise GradsaeError(
                f"hook {name!r} is {what} of block {m.group(1)}, not the residual stream: this needs a "
                "residual-stream SAE (blocks.L.hook_resid_post)"
            )
    raise GradsaeError(
        f"cannot map hook name {name!r} to a residual-stream layer: use one of "
        "'blocks.L.hook_resid_post', 'blocks.L.hook_resid_pre', 'model.layers.L', 'layers.L' or pass --layer L"
    )


# Where Hugging Face causal LMs keep their decoder blocks, tried in order. ``model.language_model.layers``: the
# multimodal wrappers transformers loads Gemma 3 (4B and up) and others as (``Gemma3ForConditionalGeneration``), used
# for text only; ``language_model.model.layers``: the same wrappers in transformers < 4.52.
_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM (Llama 3, Gemma 2 and 3, Qwen2 and 3, GPT-2, NeoX, ...;
    a multimodal wrapper such as ``Gemma3ForConditionalGeneration`` gives its language model's blocks)."""
    for path in _BLOCK_PATHS:
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


def text_config(model: nn.Module):
    """The config of the language model (a multimodal wrapper's ``text_config``, else the model's own)."""
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else getattr(cfg, "text_config", None) or cfg


def hidden_size(model: nn.Module) -> int:
    cfg = text_config(model)
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
