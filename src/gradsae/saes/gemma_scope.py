"""Gemma Scope (1): one ``params.npz`` per SAE (JumpReLU, b_dec not subtracted from the input); the hook is read
from the folder path (``layer_L/width_W/...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import GradsaeError
from ..hooks import gemma_scope_hook
from . import checks, formats
from .sae import SAE, SAEConfig


def load(path: Path) -> SAE:
    """The SAE in a Gemma Scope ``params.npz``."""
    if any("transcoder" in part for part in path.parts):
        raise GradsaeError(
            f"{path} is a Gemma Scope transcoder: it maps one hook to another, and gradsae splices "
            "SAEs that reconstruct their input"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            w = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    except Exception as e:
        raise GradsaeError(f"cannot read {path} ({type(e).__name__}): not a valid params.npz of arrays") from None
    missing = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"} - set(w)
    if missing:
        raise GradsaeError(f"{path} lacks {', '.join(sorted(missing))}: not a Gemma Scope params.npz")
    D, C = checks.dims(w["b_enc"], w["b_dec"])
    # absolute, not resolve: hub caches symlink params.npz into blobs/, which would lose layer_L/
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name=gemma_scope_hook(path.absolute().parts),
        metadata={"format": "gemma_scope", "source": str(path)},
    )
    return checks.build(cfg, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], path, w["threshold"])


def find(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".npz" else None
    return path / "params.npz" if (path / "params.npz").is_file() else None


formats.register(formats.Format("gemma_scope", "params.npz (Gemma Scope)", find, load))
