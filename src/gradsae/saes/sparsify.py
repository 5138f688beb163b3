"""EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` (TopK, ``encoder.weight`` [C, D]); the folder is named
after the module it hooked (``layers.6``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import GradsaeError
from ..hooks import canonical_hook_name
from . import checks, formats
from .sae import SAE, SAEConfig


def load(path: Path) -> SAE:
    """The SAE in a sparsify folder."""
    raw = checks.read_json(path / "cfg.json")
    w = checks.read_safetensors(path / "sae.safetensors")
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(w)
    if missing:
        raise GradsaeError(f"{path}/sae.safetensors lacks {', '.join(sorted(missing))}: not a sparsify SAE")
    if raw.get("transcode") or raw.get("skip_connection") or "W_skip" in w:
        raise GradsaeError(f"{path} is a sparsify transcoder/skip SAE: gradsae reads SAEs that reconstruct their input")
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
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="topk",
        k=checks.whole(raw.get("k", 32), "k", path / "cfg.json"),
        apply_b_dec_to_input=True,
        hook_name=hook,
        metadata={"format": "sparsify", "source": str(path)},
    )
    return checks.build(cfg, w["encoder.weight"], w["encoder.bias"], w["W_dec"], w["b_dec"], path)


def find(path: Path) -> Path | None:
    if path.is_dir() and (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file():
        return path
    return None


formats.register(formats.Format("sparsify", "cfg.json+sae.safetensors (sparsify)", find, load))
