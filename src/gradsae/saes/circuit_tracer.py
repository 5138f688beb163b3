"""circuit-tracer per-layer transcoders: ``layer_{L}.safetensors`` (``W_enc`` and ``W_dec`` [d_transcoder, d_model],
``b_enc``, ``b_dec``, optionally ``activation_function.threshold`` (JumpReLU), ``k`` (TopK) and ``W_skip``
[d_model, d_model], used as ``x @ W_skip.T``) beside the set's ``config.yaml``, whose ``feature_input_hook`` and
``feature_output_hook`` (TransformerLens names, e.g. ``ln2.hook_normalized`` / ``hook_resid_mid`` and
``hook_mlp_out``) say where block L's transcoder reads and writes. ``hook_resid_mid`` is the residual the pre-MLP
norm reads: gradsae's ``hook_mlp_in`` site. Cross-layer transcoders (one encoder, decoders to every later layer) are
refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import GradsaeError
from ..hooks import hook_name_for
from . import checks, formats
from .sae import SAE, SAEConfig

_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors$")
_INPUTS = {"ln2.hook_normalized": "ln2.hook_normalized", "hook_resid_mid": "hook_mlp_in", "hook_mlp_in": "hook_mlp_in"}


def _config(folder: Path) -> dict:
    import yaml

    path = folder / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise GradsaeError(f"{path} is not readable YAML ({type(e).__name__}): fix or regenerate it") from None
    if not isinstance(raw, dict):
        raise GradsaeError(f"{path} is not a mapping: a circuit-tracer config.yaml names feature_input_hook etc.")
    return raw


def load(path: Path) -> SAE:
    """Block L's transcoder of a circuit-tracer set (``layer_{L}.safetensors``, config.yaml beside it)."""
    layer = int(_LAYER_FILE.search(path.name).group(1))
    raw = _config(path.parent)
    src, dst = raw.get("feature_input_hook"), raw.get("feature_output_hook")
    if not isinstance(src, str) or src not in _INPUTS or dst != "hook_mlp_out":
        raise GradsaeError(
            f"{path.parent}/config.yaml: transcoders from {src!r} to {dst!r}; gradsae splices transcoders that replace "
            f"a block's MLP (feature_input_hook one of {', '.join(_INPUTS)}, feature_output_hook hook_mlp_out)"
        )
    w = checks.read_safetensors(path)
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in w]
    if missing:
        raise GradsaeError(f"{path} lacks {', '.join(missing)}: not a circuit-tracer transcoder")
    thr, k = w.get("activation_function.threshold"), w.get("k")
    if thr is not None and k is not None:
        raise GradsaeError(f"{path} holds both a JumpReLU threshold and a TopK k: the file is damaged")
    D, C = checks.dims(w["b_enc"], w["b_dec"])
    skip = w.get("W_skip")
    model = raw.get("model_name")
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="jumprelu" if thr is not None else "topk" if k is not None else "relu",
        k=int(k.reshape(-1)[0]) if k is not None else None,
        apply_b_dec_to_input=False,
        hook_name=hook_name_for(layer, _INPUTS[src]),
        hook_name_out=hook_name_for(layer, "hook_mlp_out"),
        d_out=D,
        skip_connection=skip is not None,
        model_name=str(model) if isinstance(model, str) else "",
        metadata={"format": "circuit_tracer", "source": str(path)},
    )
    f = {key: v.float() for key, v in w.items() if key != "k"}
    W_skip = f["W_skip"].T if skip is not None else None  # circuit-tracer: x @ W_skip.T
    return checks.build(
        cfg, f["W_enc"], f["b_enc"], f["W_dec"], f["b_dec"], path, f.get("activation_function.threshold"), W_skip
    )


def find(path: Path) -> Path | None:
    """A ``layer_{L}.safetensors`` with a config.yaml beside it; the set's folder is one line (pick a layer), and so
    is a cross-layer transcoder (``W_enc_{i}.safetensors`` / ``W_dec_{i}.safetensors``)."""
    folder = path.parent if path.is_file() else path
    if re.match(r"W_(enc|dec)_\d+\.safetensors$", path.name) or (
        path.is_dir() and any(re.match(r"W_enc_\d+\.safetensors$", p.name) for p in path.iterdir())
    ):
        raise GradsaeError(
            f"{folder} holds a circuit-tracer cross-layer transcoder: each latent writes to every later layer, which "
            "gradsae's one-site splice cannot run exactly, so it is refused rather than approximated"
        )
    if path.is_file():
        ok = _LAYER_FILE.search(path.name) and (path.parent / "config.yaml").is_file()
        return path if ok else None
    if path.is_dir() and (path / "config.yaml").is_file():
        layers = sorted((p.name for p in path.iterdir() if _LAYER_FILE.search(p.name)), key=lambda n: int(n[6:-12]))
        if layers:
            more = ", ..." if len(layers) > 3 else ""
            raise GradsaeError(
                f"{path} holds a circuit-tracer transcoder set ({', '.join(layers[:3])}{more}): "
                "point at one layer_L.safetensors"
            )
    return None


formats.register(formats.Format("circuit_tracer", "layer_L.safetensors + config.yaml (circuit-tracer)", find, load))
