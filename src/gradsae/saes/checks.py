"""What every SAE reader shares: reading a config or weights file with a one-line error, checking config values,
orienting weights by shape (d_in from b_dec, d_sae from b_enc, never from key names alone) and building the SAE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import GradsaeError
from .sae import SAE, SAEConfig


def read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GradsaeError(f"malformed JSON in {path} (line {e.lineno}: {e.msg}): fix or regenerate the file") from None
    except UnicodeDecodeError:
        raise GradsaeError(f"{path} is not UTF-8 text: it is not an SAE config; regenerate the file") from None
    except RecursionError:
        raise GradsaeError(f"{path} nests too deeply to be an SAE config: fix or regenerate the file") from None
    if not isinstance(raw, dict):
        raise GradsaeError(
            f"{path} holds a JSON {type(raw).__name__}, not an object: an SAE config is "
            '{"d_in": ..., ...}; fix or regenerate the file'
        )
    return raw


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several error types for truncated files
        raise GradsaeError(f"cannot read {path} ({e}): the file is truncated or not safetensors") from None


def whole(value, key: str, where) -> int:
    """A config count such as k: an int, or a float / digit string with no fraction; else one line."""
    try:
        f = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        f = math.nan
    if not math.isfinite(f) or f != int(f):
        raise GradsaeError(
            f'{where} has {key}={value!r}, which is not a whole number: set {key} to an integer, e.g. "{key}": 32'
        )
    return int(f)


def flag(raw: dict, key: str, default: bool, where) -> bool:
    """A config switch: JSON true/false (a string such as "no" is one line, not silently True)."""
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise GradsaeError(f"{where} has {key}={value!r}: set it to true or false")
    return value


def real(value, key: str, where) -> float:
    """A finite JSON number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GradsaeError(f"{where} has {key}={value!r}: give a finite number")
    return float(value)


def scaling_factor(value, where: Path) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if not (f == f and 0 < f < float("inf")):
        raise GradsaeError(
            f"{where} has norm_scaling_factor={value!r}: it must be a positive finite number "
            "(the factor activations were multiplied by in training); fix or remove it"
        )
    return f


def orient(t: torch.Tensor, rows: int, cols: int, name: str, where: Path) -> torch.Tensor:
    """Return t as [rows, cols], transposing if it is stored the other way round."""
    if tuple(t.shape) == (rows, cols):
        return t
    if tuple(t.shape) == (cols, rows):
        return t.T
    raise GradsaeError(
        f"{name} in {where} has shape {tuple(t.shape)}, expected ({rows}, {cols}) or "
        f"({cols}, {rows}): the file does not belong to a d_in={rows if name == 'W_enc' else cols} SAE"
    )


def build(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, where: Path, threshold=None, W_skip=None) -> SAE:
    """The SAE of ``cfg`` with these weights (W_enc / W_dec oriented by shape; a skip transcoder's ``W_skip``
    already as [d_in, d_out]: its orientation is each format's convention, invisible in a square shape)."""
    D, C, O = cfg.d_in, cfg.d_sae, cfg.out_dim
    for name, t, shape in (("b_enc", b_enc, (C,)), ("b_dec", b_dec, (O,))):
        if tuple(t.shape) != shape:
            raise GradsaeError(
                f"{name} in {where} has shape {tuple(t.shape)}, expected {shape}: config says d_in={D}, d_sae={C}"
            )
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(orient(W_enc, D, C, "W_enc", where))
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(orient(W_dec, C, O, "W_dec", where))
        sae.b_dec.copy_(b_dec)
        if cfg.skip_connection:
            if W_skip is None or tuple(W_skip.shape) != (D, O):
                got = "none" if W_skip is None else tuple(W_skip.shape)
                raise GradsaeError(f"the skip matrix in {where} has shape {got}, expected ({D}, {O})")
            sae.W_skip.copy_(W_skip)
        if hasattr(sae, "threshold"):
            if threshold is None:
                raise GradsaeError(
                    f"{where} has no threshold, which a {cfg.architecture} SAE needs: "
                    "the config and the weights belong to different SAE classes"
                )
            if threshold.numel() == 1:
                threshold = threshold.reshape(()).expand(C)
            if tuple(threshold.shape) != (C,):
                raise GradsaeError(
                    f"threshold in {where} has shape {tuple(threshold.shape)}, expected ({C},) "
                    "or a single value: the file is corrupt or belongs to another SAE"
                )
            sae.threshold.copy_(threshold)
    return sae


def dims(b_enc: torch.Tensor, b_dec: torch.Tensor) -> tuple[int, int]:
    return int(b_dec.shape[-1]), int(b_enc.shape[-1])
