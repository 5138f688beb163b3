"""Gemma Scope 2 (the SAEs of every Gemma 3 model): one folder per SAE,
``<site>/layer_{L}_width_{W}_l0_{small|medium|big}[_affine]/`` holding ``params.safetensors`` (``w_enc`` [d_in, d_sae],
``w_dec`` [d_sae, d_out], ``b_enc``, ``b_dec``, ``threshold``) with or without ``config.json``. All JumpReLU; b_dec is
not subtracted from the input (as sae-lens reads them).

The site comes from ``config.json``'s ``hf_hook_point_in`` (a Hugging Face module hook point), else from the folder
path, and is where sae-lens hooks it on the HF model:

==============  =============================================  ====================================================
site            Hugging Face hook point                        gradsae
==============  =============================================  ====================================================
resid_post      ``model.layers.L.output``                      ``blocks.L.hook_resid_post``
attn_out        input of ``model.layers.L.self_attn.o_proj``   ``blocks.L.attn.hook_z``
mlp_out         ``model.layers.L.post_feedforward_layernorm``  ``blocks.L.hook_mlp_out``
transcoder      ``pre_feedforward_layernorm`` → ``post_...``   ``blocks.L.ln2.hook_normalized`` → ``...hook_mlp_out``
                (``_affine``: + ``affine_skip_connection``)    a skip transcoder: W_skip = the file's [d_in, d_out]
clt             ``params_layer_{i}.safetensors``, every layer  refused at load (a cross-layer transcoder)
==============  =============================================  ====================================================

sae-lens 6.54 names a transcoder's input ``blocks.L.hook_mlp_in``, which in TransformerLens is the residual before
the pre-MLP norm; the weights read ``pre_feedforward_layernorm.output``, the norm's output, which is
``ln2.hook_normalized``: gradsae uses that name, so it splices where the weights were trained.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import GradsaeError
from ..hooks import canonical_hook_name, hook_name_for
from . import checks, formats
from .sae import SAE, SAEConfig

PARAMS = "params.safetensors"
_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
_PATH_SITES = {"resid_post": "hook_resid_post", "attn_out": "attn.hook_z", "mlp_out": "hook_mlp_out"}


def _hf_hook(folder: Path, raw: dict, key: str) -> str | None:
    hf = raw.get(key)
    if hf is None:
        return None
    if not isinstance(hf, str):
        raise GradsaeError(f"{folder}/config.json has {key}={hf!r}: give the hook point's name")
    hook = canonical_hook_name(hf)
    if not hook.startswith("blocks."):
        raise GradsaeError(
            f"{folder}/config.json names {hf!r}, which gradsae does not know: Gemma Scope 2 reads at "
            "model.layers.L.output, self_attn.o_proj.input, pre_ or post_feedforward_layernorm.output"
        )
    return hook


def site_hooks(folder: Path, raw: dict) -> tuple[str, str]:
    """(hook_name, hook_name_out) of a Gemma Scope 2 dictionary, from its config.json (``raw``) or its folder path:
    ``blocks.L.hook_resid_post`` / ``blocks.L.attn.hook_z`` / ``blocks.L.hook_mlp_out`` with "" for an SAE,
    ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out`` for a transcoder."""
    hook_in, hook_out = _hf_hook(folder, raw, "hf_hook_point_in"), _hf_hook(folder, raw, "hf_hook_point_out")
    if hook_in is not None:
        if hook_out is None and raw.get("affine_connection") is not None:  # a transcoder's config without its output
            hook_out = hook_name_for(int(hook_in.split(".")[1]), "hook_mlp_out")
        return hook_in, hook_out or ""
    parts = (folder.absolute().parent.name, folder.absolute().name)  # <site>/layer_L_...: the release's layout
    m = re.match(r"layer_(\d+)_width_", folder.name)
    transcoder = any("transcoder" in p for p in parts)
    site = next((_PATH_SITES[p] for p in reversed(parts) if p in _PATH_SITES), None)
    if m is None or (site is None and not transcoder):
        raise GradsaeError(
            f"cannot tell the site of the Gemma Scope 2 SAE in {folder}: keep the release's layout "
            "(<resid_post|attn_out|mlp_out|transcoder>/layer_L_width_W_l0_.../params.safetensors) or its config.json"
        )
    layer = int(m.group(1))
    if transcoder:
        return hook_name_for(layer, "ln2.hook_normalized"), hook_name_for(layer, "hook_mlp_out")
    return hook_name_for(layer, site), ""


def load(folder: Path) -> SAE:
    """The SAE in a Gemma Scope 2 folder."""
    raw = checks.read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    arch = raw.get("architecture", "jump_relu")
    if arch != "jump_relu":
        raise GradsaeError(f"{folder}/config.json names architecture {arch!r}; Gemma Scope 2 SAEs are jump_relu")
    hook, hook_out = site_hooks(folder, raw)
    w = checks.read_safetensors(folder / PARAMS)
    missing = [k for k in _KEYS if k not in w]
    if missing:
        raise GradsaeError(f"{folder}/{PARAMS} lacks {', '.join(missing)}: not a Gemma Scope 2 SAE")
    skip = w.get("affine_skip_connection")
    if (skip is not None or tuple(w["w_enc"].shape) != tuple(reversed(w["w_dec"].shape))) and not hook_out:
        raise GradsaeError(
            f"{folder} holds a transcoder's weights (a skip matrix, or w_dec not the shape of w_enc transposed) but "
            "its path and config.json name an SAE site: keep the release's transcoder/ layout or its config.json"
        )
    C = int(w["b_enc"].shape[-1])
    D, O = int(w["w_enc"].shape[0]), int(w["b_dec"].shape[-1])
    model = raw.get("model_name")
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name=hook,
        hook_name_out=hook_out,
        d_out=O if hook_out else None,
        skip_connection=skip is not None,
        model_name=str(model) if isinstance(model, str) else "",
        metadata={"format": "gemma_scope_2", "source": str(folder)},
    )
    return checks.build(
        cfg,
        w["w_enc"].float(),
        w["b_enc"].float(),
        w["w_dec"].float(),
        w["b_dec"].float(),
        folder,
        w["threshold"].float(),
        None if skip is None else skip.float(),  # stored [d_in, d_out], as x @ W_skip uses it
    )


def find(path: Path) -> Path | None:
    """A folder holding ``params.safetensors`` (a CLT's ``params_layer_{i}.safetensors`` is one line)."""
    if not path.is_dir():
        return None
    if (path / PARAMS).is_file():
        return path
    if any(re.match(r"params_layer_\d+\.safetensors$", p.name) for p in path.iterdir()):
        raise GradsaeError(
            f"{path} holds a cross-layer transcoder (params_layer_*.safetensors): it writes to every later layer, "
            "which gradsae's one-site splice cannot run exactly, so it is refused rather than approximated"
        )
    return None


formats.register(
    formats.Format("gemma_scope_2", "<site>/layer_L_width_W_.../params.safetensors (Gemma Scope 2)", find, load)
)
