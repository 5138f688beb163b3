"""EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` (TopK, ``encoder.weight`` [C, D]); the folder is named
after the module it hooked (``layers.6``). A transcoder (``transcode``, optionally ``skip_connection`` with
``W_skip`` [d_in, d_in] used as ``x @ W_skip.T``) trained on ``layers.N.mlp`` reads that module's input and writes
its output: ``blocks.N.ln2.hook_normalized`` -> ``blocks.N.hook_mlp_out``, which is that output where the block has
no norm after its MLP (``metadata["writes_mlp_module_output"]``; the splice refuses Gemma 2/3 blocks)."""

from __future__ import annotations

from pathlib import Path

from ..errors import GradsaeError
from ..hooks import canonical_hook_name, hook_name_for, site_of
from . import checks, formats
from .sae import SAE, SAEConfig


def load(path: Path) -> SAE:
    """The SAE in a sparsify folder."""
    raw = checks.read_json(path / "cfg.json")
    w = checks.read_safetensors(path / "sae.safetensors")
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(w)
    if missing:
        raise GradsaeError(f"{path}/sae.safetensors lacks {', '.join(sorted(missing))}: not a sparsify SAE")
    transcode = checks.flag(raw, "transcode", False, path / "cfg.json")
    skip = checks.flag(raw, "skip_connection", False, path / "cfg.json")
    if skip != ("W_skip" in w) or (skip and not transcode):
        raise GradsaeError(
            f"{path}: cfg.json's skip_connection={skip} and transcode={transcode} do not match the weights "
            f"({'with' if 'W_skip' in w else 'without'} W_skip): the config and the weights do not belong together"
        )
    act = raw.get("activation", "topk")
    if act != "topk":
        raise GradsaeError(f"sparsify activation {act!r} in {path} is not supported: gradsae reads topk")
    D, C = checks.dims(w["encoder.bias"], w["b_dec"])
    if raw.get("d_in") is not None and checks.whole(raw["d_in"], "d_in", path / "cfg.json") != D:
        raise GradsaeError(f"{path}/cfg.json says d_in={raw['d_in']} but b_dec has {D}: config and weights differ")
    # sparsify names the folder after the module it hooked (layers.6, layers.6.mlp, ...)
    # (a folder name that is no hook, e.g. after renaming, leaves the hook to --layer)
    hook = next(
        (
            h
            for h in (canonical_hook_name(path.absolute().name), canonical_hook_name(str(raw.get("hook") or "")))
            if h.startswith("blocks.")
        ),
        "",
    )
    meta = {"format": "sparsify", "source": str(path)}
    hook_out = ""
    if transcode:
        site = site_of(hook)
        if site is None or site[1] != "hook_mlp_out":
            raise GradsaeError(
                f"{path} is a sparsify transcoder of {hook or 'an unknown module'!r}: gradsae splices transcoders "
                "trained on a block's MLP (a folder named layers.N.mlp)"
            )
        hook, hook_out = hook_name_for(site[0], "ln2.hook_normalized"), hook
        meta["writes_mlp_module_output"] = True
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="topk",
        k=checks.whole(raw.get("k", 32), "k", path / "cfg.json"),
        apply_b_dec_to_input=not transcode,
        hook_name=hook,
        hook_name_out=hook_out,
        d_out=D if transcode else None,
        skip_connection=skip,
        metadata=meta,
    )
    W_skip = w["W_skip"].float().T if skip else None  # sparsify: x @ W_skip.mT
    return checks.build(cfg, w["encoder.weight"], w["encoder.bias"], w["W_dec"], w["b_dec"], path, None, W_skip)


def find(path: Path) -> Path | None:
    if path.is_dir() and (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file():
        return path
    return None


formats.register(formats.Format("sparsify", "cfg.json+sae.safetensors (sparsify)", find, load))
