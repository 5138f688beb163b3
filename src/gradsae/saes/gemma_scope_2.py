"""Gemma Scope 2 (the SAEs of every Gemma 3 model): one folder per SAE,
``<site>/layer_{L}_width_{W}_l0_{small|medium|big}[_affine]/`` holding ``params.safetensors`` (``w_enc`` [d_in, d_sae],
``w_dec`` [d_sae, d_out], ``b_enc``, ``b_dec``, ``threshold``) with or without ``config.json``. All JumpReLU; b_dec is
not subtracted from the input (as sae-lens reads them).

The site comes from ``config.json``'s ``hf_hook_point_in`` (a Hugging Face module hook point), else from the folder
path, and is where sae-lens hooks it on the HF model:

==============  =============================================  ====================================================
site            Hugging Face hook point                        gradsae
==============  =============================================  ====================================================
resid_post      ``model.layers.L.output``                      ``blocks.L.hook_resid_post``: spliced
attn_out        input of ``model.layers.L.self_attn.o_proj``   ``blocks.L.attn.hook_z``: read, refused by the splice
mlp_out         ``model.layers.L.post_feedforward_layernorm``  ``blocks.L.hook_mlp_out``: read, refused by the splice
transcoder      ``pre_feedforward_layernorm`` → ``post_...``   refused at load (maps one site to another)
clt             ``params_layer_{i}.safetensors``, every layer  refused at load (a cross-layer transcoder)
==============  =============================================  ====================================================
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


def _transcoder_refusal(where: Path) -> GradsaeError:
    return GradsaeError(
        f"{where} is a Gemma Scope 2 transcoder: it reads the MLP input and writes the MLP output, and gradsae "
        "splices dictionaries that reconstruct their input; use a resid_post, attn_out or mlp_out SAE"
    )


def site_hook(folder: Path, raw: dict) -> str:
    """The TransformerLens hook name of a Gemma Scope 2 SAE, from its config.json (``raw``) or its folder path.

    -> ``blocks.L.hook_resid_post`` / ``blocks.L.attn.hook_z`` / ``blocks.L.hook_mlp_out``; a transcoder is one line.
    """
    if raw.get("hf_hook_point_out") or raw.get("affine_connection") is not None:
        raise _transcoder_refusal(folder)
    hf = raw.get("hf_hook_point_in")
    if hf is not None:
        if not isinstance(hf, str):
            raise GradsaeError(f"{folder}/config.json has hf_hook_point_in={hf!r}: give the hook point's name")
        hook = canonical_hook_name(hf)
        if hook.endswith(".hook_mlp_in"):
            raise _transcoder_refusal(folder)
        if hook.startswith("blocks."):
            return hook
        raise GradsaeError(
            f"{folder}/config.json reads at {hf!r}, which gradsae does not know: Gemma Scope 2 SAEs read at "
            "model.layers.L.output, self_attn.o_proj.input or post_feedforward_layernorm.output"
        )
    parts = (folder.absolute().parent.name, folder.absolute().name)  # <site>/layer_L_...: the release's layout
    if any("transcoder" in p or re.search(r"(^|[_-])clt([_-]|$)", p) for p in parts):
        raise _transcoder_refusal(folder)
    m = re.match(r"layer_(\d+)_width_", folder.name)
    site = next((_PATH_SITES[p] for p in reversed(parts) if p in _PATH_SITES), None)
    if m is None or site is None:
        raise GradsaeError(
            f"cannot tell the site of the Gemma Scope 2 SAE in {folder}: keep the release's layout "
            "(<resid_post|attn_out|mlp_out>/layer_L_width_W_l0_.../params.safetensors) or its config.json"
        )
    return hook_name_for(int(m.group(1)), site)


def load(folder: Path) -> SAE:
    """The SAE in a Gemma Scope 2 folder."""
    raw = checks.read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    arch = raw.get("architecture", "jump_relu")
    if arch != "jump_relu":
        raise GradsaeError(f"{folder}/config.json names architecture {arch!r}; Gemma Scope 2 SAEs are jump_relu")
    hook = site_hook(folder, raw)
    w = checks.read_safetensors(folder / PARAMS)
    if "affine_skip_connection" in w:
        raise _transcoder_refusal(folder)
    missing = [k for k in _KEYS if k not in w]
    if missing:
        raise GradsaeError(f"{folder}/{PARAMS} lacks {', '.join(missing)}: not a Gemma Scope 2 SAE")
    D, C = checks.dims(w["b_enc"], w["b_dec"])
    if tuple(w["w_dec"].shape) not in ((C, D), (D, C)):
        raise _transcoder_refusal(folder)  # d_out != d_in: it writes somewhere else than it reads
    model = raw.get("model_name")
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name=hook,
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
