"""Read every SAE format people have on disk; write the SAELens folder format.

``load_sae(path_or_name)`` detects the format from the files present:

==========================  ===============================================  ===========================
format                      files                                            notes
==========================  ===============================================  ===========================
SAELens (v6 and older)      cfg.json + sae_weights.safetensors               our native save format
Gemma Scope                 params.npz                                       JumpReLU, no b_dec on input
EleutherAI sparsify         cfg.json + sae.safetensors                       TopK, encoder.weight [C, D]
dictionary_learning         ae.pt + config.json                              torch.load(weights_only=True)
bundled                     ``smollm2/topk/L<layer>`` etc.                   shipped in the package
sae-lens registry           ``saelens:<release>/<sae_id>``                   needs sae-lens + its hub
==========================  ===============================================  ===========================

Orientation is inferred from shapes (d_in from b_dec, d_sae from b_enc), never from key names alone.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .errors import GradsaeError
from .hooks import hook_name_for, parse_hook_name
from .io import atomic_write_text
from .sae import SAE, SAEConfig

BUNDLED_DIR = Path(__file__).parent / "bundled" / "saes"


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------

def load_sae(path_or_name: str | Path, device: str = "cpu", dtype: str | None = None) -> SAE:
    """Load an SAE from a folder/file of any supported format, a bundled name, or ``saelens:release/id``."""
    spec = str(path_or_name)
    if spec.startswith("saelens:"):
        sae = _load_from_saelens_registry(spec[len("saelens:"):], device)
    else:
        path = _resolve_path(spec)
        sae = _load_path(path)
    _validate(sae, spec)
    if dtype is not None:
        sae.cfg.dtype = str(dtype).replace("torch.", "")
        sae = sae.to(getattr(torch, sae.cfg.dtype))
    sae.cfg.device = str(device)
    return sae.to(device).eval().requires_grad_(False)


def bundled_saes() -> dict[str, Path]:
    """Short name -> folder for every SAE shipped inside the package (e.g. ``smollm2/topk/L9``)."""
    out = {}
    if BUNDLED_DIR.is_dir():
        for cfg in sorted(BUNDLED_DIR.glob("**/cfg.json")):
            out[cfg.parent.relative_to(BUNDLED_DIR).as_posix()] = cfg.parent
    return out


def save_saelens(sae: SAE, path: str | Path, dtype: str | None = None) -> Path:
    """Write ``cfg.json`` (SAELens v6 layout with nested metadata) + ``sae_weights.safetensors``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    if dtype is not None:
        tensors = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() and k != "grad_scale" else v)
                   for k, v in tensors.items()}
    arch = {"relu": "standard"}.get(c.architecture, c.architecture)
    cfg = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": dtype or c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none" if c.norm_scaling_factor is None else "expected_average_only_in",
        "reshape_activations": "none",
        "metadata": {
            "model_name": c.model_name,
            "hook_name": c.hook_name,
            "hook_head_index": None,
            "prepend_bos": c.prepend_bos,
            "context_size": c.context_size,
            "dataset_path": c.dataset_path,
            "sae_lens_version": "6.0.0",
            "gradsae": {"architecture": c.architecture, "beta": c.beta, "beta_mode": c.beta_mode,
                        "norm_scaling_factor": c.norm_scaling_factor, **c.metadata},
        },
    }
    if c.k is not None:
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    tmp = path / "sae_weights.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(path / "sae_weights.safetensors")
    atomic_write_text(path / "cfg.json", json.dumps(cfg, indent=2))
    return path


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

def _resolve_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    bundled = bundled_saes()
    if spec in bundled:
        return bundled[spec]
    hint = f" Bundled SAEs: {', '.join(bundled)}." if bundled else ""
    raise GradsaeError(f"no SAE at {spec!r}: give a folder or file of a supported format, a bundled name, "
                       f"or 'saelens:<release>/<sae_id>'.{hint}")


def _load_path(path: Path) -> SAE:
    if path.is_file():
        if path.name == "params.npz" or path.suffix == ".npz":
            return _load_gemma_scope(path)
        if path.suffix in (".pt", ".pth"):
            return _load_dictionary_learning(path.parent, path)
        if path.suffix == ".safetensors":
            path = path.parent
        else:
            raise GradsaeError(f"{path} is not a known SAE file: expected params.npz, ae.pt or a folder")
    names = {p.name for p in path.iterdir()}
    if "cfg.json" in names and "sae_weights.safetensors" in names:
        return _load_saelens(path)
    if "cfg.json" in names and "sae.safetensors" in names:
        return _load_sparsify(path)
    if "ae.pt" in names:
        return _load_dictionary_learning(path, path / "ae.pt")
    if "params.npz" in names:
        return _load_gemma_scope(path / "params.npz")
    subs = sorted(p.name for p in path.iterdir() if p.is_dir() and
                  ({"cfg.json", "params.npz", "ae.pt"} & {q.name for q in p.iterdir()}))
    if subs:
        raise GradsaeError(f"{path} holds several SAEs ({', '.join(subs[:6])}{', ...' if len(subs) > 6 else ''}): "
                           "point at one of these sub-folders")
    raise GradsaeError(
        f"{path} is not a known SAE folder (found: {', '.join(sorted(names)[:8]) or 'nothing'}): expected "
        "cfg.json+sae_weights.safetensors (SAELens), params.npz (Gemma Scope), cfg.json+sae.safetensors "
        "(sparsify) or ae.pt+config.json (dictionary_learning)"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GradsaeError(f"malformed JSON in {path} (line {e.lineno}: {e.msg}): fix or regenerate the file") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several error types for truncated files
        raise GradsaeError(f"cannot read {path} ({e}): the file is truncated or not safetensors") from None


# ---------------------------------------------------------------------------------------------
# Orientation and building
# ---------------------------------------------------------------------------------------------

def _orient(t: torch.Tensor, rows: int, cols: int, name: str, where: Path) -> torch.Tensor:
    """Return t as [rows, cols], transposing if it is stored the other way round."""
    if tuple(t.shape) == (rows, cols):
        return t
    if tuple(t.shape) == (cols, rows):
        return t.T
    raise GradsaeError(f"{name} in {where} has shape {tuple(t.shape)}, expected ({rows}, {cols}) or "
                       f"({cols}, {rows}): the file does not belong to a d_in={rows if name == 'W_enc' else cols} SAE")


def _build(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, where: Path, threshold=None) -> SAE:
    D, C = cfg.d_in, cfg.d_sae
    for name, t, shape in (("b_enc", b_enc, (C,)), ("b_dec", b_dec, (D,))):
        if tuple(t.shape) != shape:
            raise GradsaeError(f"{name} in {where} has shape {tuple(t.shape)}, expected {shape}: "
                               f"config says d_in={D}, d_sae={C}")
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(_orient(W_enc, D, C, "W_enc", where))
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(_orient(W_dec, C, D, "W_dec", where))
        sae.b_dec.copy_(b_dec)
        if threshold is not None and hasattr(sae, "threshold"):
            if threshold.numel() == 1:
                threshold = threshold.reshape(()).expand(C)
            sae.threshold.copy_(threshold)
    return sae


def _validate(sae: SAE, spec: str) -> None:
    for name, p in sae.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            bad = (~torch.isfinite(p)).sum().item()
            raise GradsaeError(f"SAE {spec!r} has {bad} NaN/Inf values in {name}: the file is corrupt, re-export it")


def _dims(b_enc: torch.Tensor, b_dec: torch.Tensor) -> tuple[int, int]:
    return int(b_dec.shape[-1]), int(b_enc.shape[-1])


# ---------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------

_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk",
                 "batchtopk": "batchtopk", "gsae": "gsae", "e2e": "e2e"}


def _load_saelens(path: Path) -> SAE:
    raw = _read_json(path / "cfg.json")
    w = _read_safetensors(path / "sae_weights.safetensors")
    meta = raw.get("metadata") or {}
    flat = {**raw, **meta}  # v6 nests model/hook info under metadata; older versions are flat
    ours = meta.get("gradsae", {}) if isinstance(meta, dict) else {}
    arch = ours.get("architecture") or raw.get("architecture")
    if arch is None:  # pre-v6: activation_fn_str
        fn = raw.get("activation_fn_str", "relu")
        arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}.get(fn, fn)
    if arch in ("gated", "jumprelu_transcoder", "transcoder", "skip_transcoder") or arch not in _SAELENS_ARCH:
        raise GradsaeError(f"SAELens architecture {arch!r} in {path} is not supported: gradsae reads "
                           "standard, jumprelu, topk and batchtopk SAEs")
    arch = _SAELENS_ARCH[arch]
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if key not in w:
            raise GradsaeError(f"{path}/sae_weights.safetensors has no {key}: not a SAELens SAE file")
    D, C = _dims(w["b_enc"], w["b_dec"])
    for key, expect in (("d_in", D), ("d_sae", C)):
        if key in raw and int(raw[key]) != expect:
            raise GradsaeError(f"{path}/cfg.json says {key}={raw[key]} but the weights have {expect}: "
                               "the config and weights do not belong together")
    hook = flat.get("hook_name") or flat.get("hook_point") or ""
    nsf = ours.get("norm_scaling_factor")
    if raw.get("normalize_activations") not in (None, "none") and nsf is None:
        nsf = flat.get("norm_scaling_factor")
        if nsf is None:
            raise GradsaeError(f"{path} normalises activations ({raw['normalize_activations']}) but stores no "
                               "norm_scaling_factor: add it to cfg.json")
    extra = {k_: v for k_, v in ours.items() if k_ not in ("architecture", "beta", "beta_mode", "norm_scaling_factor")}
    cfg = SAEConfig(
        d_in=D, d_sae=C, architecture=arch, k=int(k) if k else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        hook_name=hook, model_name=flat.get("model_name", ""),
        norm_scaling_factor=nsf, beta=float(ours.get("beta", 0.0)), beta_mode=ours.get("beta_mode", "rms"),
        context_size=flat.get("context_size"), prepend_bos=bool(flat.get("prepend_bos", True)),
        dataset_path=flat.get("dataset_path") or "", metadata={**extra, "format": "saelens", "source": str(path)},
    )
    sae = _build(cfg, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], path, w.get("threshold"))
    if "grad_scale" in w and hasattr(sae, "grad_scale"):
        sae.grad_scale.copy_(w["grad_scale"].float().reshape(()))
    return sae


def _load_gemma_scope(path: Path) -> SAE:
    try:
        with np.load(path) as z:
            w = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    except Exception as e:
        raise GradsaeError(f"cannot read {path} ({e}): not a valid .npz file") from None
    missing = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"} - set(w)
    if missing:
        raise GradsaeError(f"{path} lacks {', '.join(sorted(missing))}: not a Gemma Scope params.npz")
    D, C = _dims(w["b_enc"], w["b_dec"])
    layer = None
    for part in path.parts:
        m = re.match(r"layer_(\d+)$", part)
        if m:
            layer = int(m.group(1))
    cfg = SAEConfig(d_in=D, d_sae=C, architecture="jumprelu", apply_b_dec_to_input=False,
                    hook_name=hook_name_for(layer) if layer is not None else "",
                    metadata={"format": "gemma_scope", "source": str(path)})
    return _build(cfg, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], path, w["threshold"])


def _load_sparsify(path: Path) -> SAE:
    raw = _read_json(path / "cfg.json")
    w = _read_safetensors(path / "sae.safetensors")
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(w)
    if missing:
        raise GradsaeError(f"{path}/sae.safetensors lacks {', '.join(sorted(missing))}: not a sparsify SAE")
    if raw.get("transcode") or raw.get("skip_connection") or "W_skip" in w:
        raise GradsaeError(f"{path} is a sparsify transcoder/skip SAE: gradsae reads plain residual SAEs only")
    act = raw.get("activation", "topk")
    if act != "topk":
        raise GradsaeError(f"sparsify activation {act!r} in {path} is not supported: only topk")
    D, C = _dims(w["encoder.bias"], w["b_dec"])
    if raw.get("d_in") and int(raw["d_in"]) != D:
        raise GradsaeError(f"{path}/cfg.json says d_in={raw['d_in']} but b_dec has {D}: config and weights differ")
    hook = path.name if re.match(r"^(?:model\.)?layers\.\d+$|^h\.\d+$", path.name) else raw.get("hook", "")
    cfg = SAEConfig(d_in=D, d_sae=C, architecture="topk", k=int(raw.get("k", 32)), apply_b_dec_to_input=True,
                    hook_name=hook_name_for(parse_hook_name(hook)) if hook else "",
                    metadata={"format": "sparsify", "source": str(path)})
    return _build(cfg, w["encoder.weight"], w["encoder.bias"], w["W_dec"], w["b_dec"], path)


_DL_ARCH = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "StandardTrainer": "relu",
            "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu",
            "MatryoshkaBatchTopKSAE": "batchtopk"}


def _load_dictionary_learning(folder: Path, weights: Path) -> SAE:
    cfg_path = folder / "config.json"
    raw = _read_json(cfg_path) if cfg_path.exists() else {}
    tr = raw.get("trainer", {})
    cls_name = tr.get("dict_class", "AutoEncoder")
    if cls_name not in _DL_ARCH:
        raise GradsaeError(f"dictionary_learning class {cls_name!r} in {cfg_path} is not supported: gradsae reads "
                           f"{', '.join(_DL_ARCH)}")
    try:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GradsaeError(f"cannot read {weights} with weights_only=True ({type(e).__name__}): "
                           "it is not a plain state dict; re-save it with torch.save(ae.state_dict(), ...)") from None
    arch = _DL_ARCH[cls_name]
    if arch == "jumprelu":
        W_enc, b_enc, W_dec, b_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"], sd["b_dec"]
        apply = bool(tr.get("apply_b_dec_to_input", False))
    else:
        try:
            W_enc, b_enc, W_dec = sd["encoder.weight"], sd["encoder.bias"], sd["decoder.weight"]
            b_dec = sd["bias"] if "bias" in sd else sd["b_dec"]
        except KeyError as e:
            raise GradsaeError(f"{weights} lacks {e.args[0]}: not a {cls_name} state dict") from None
        apply = True
    D, C = _dims(b_enc, b_dec)
    if tr.get("activation_dim") and int(tr["activation_dim"]) != D:
        raise GradsaeError(f"{cfg_path} says activation_dim={tr['activation_dim']} but the weights have {D}")
    k = tr.get("k") or (int(sd["k"]) if "k" in sd else None)
    layer = tr.get("layer")
    cfg = SAEConfig(d_in=D, d_sae=C, architecture=arch, k=int(k) if k and arch in ("topk", "batchtopk") else None,
                    apply_b_dec_to_input=apply, hook_name=hook_name_for(int(layer)) if layer is not None else "",
                    model_name=tr.get("lm_name", ""), metadata={"format": "dictionary_learning", "source": str(weights)})
    thr = sd.get("threshold")
    if arch == "batchtopk" and (thr is None or float(thr.reshape(-1)[0]) < 0):
        raise GradsaeError(f"{weights} is a BatchTopK SAE without a learned threshold: it cannot run as JumpReLU")
    return _build(cfg, W_enc, b_enc, W_dec, b_dec, weights, thr)


def _load_from_saelens_registry(spec: str, device: str) -> SAE:
    release, _, sae_id = spec.partition("/")
    if not sae_id:
        raise GradsaeError(f"'saelens:{spec}' needs the form saelens:<release>/<sae_id>, "
                           "e.g. saelens:gemma-scope-9b-it-res-canonical/layer_9/width_131k/canonical")
    try:
        from sae_lens import SAE as LensSAE  # type: ignore
    except ImportError:
        raise GradsaeError("loading 'saelens:' names needs sae-lens: pip install 'gradsae[saelens]'") from None
    try:
        loaded = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:
        raise GradsaeError(f"sae-lens could not load {release}/{sae_id} ({type(e).__name__}: {e}); "
                           "check the names and that its hub is reachable") from None
    lens = loaded[0] if isinstance(loaded, tuple) else loaded
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lens.save_model(tmp)
        return _load_saelens(Path(tmp))
