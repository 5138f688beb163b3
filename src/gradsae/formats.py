"""Read every SAE format people have on disk; write one folder that sae-lens and gradsae both run.

``load_sae(path_or_name)`` detects the format from the files present:

==========================  ===============================================  ===========================
format                      files                                            notes
==========================  ===============================================  ===========================
SAELens (v6 and older)      cfg.json + sae_weights.safetensors               incl. training checkpoints
Gemma Scope                 params.npz                                       JumpReLU, no b_dec on input
EleutherAI sparsify         cfg.json + sae.safetensors                       TopK, encoder.weight [C, D]
dictionary_learning         ae.pt (+ config.json, or ../config.json)         torch.load(weights_only=True)
bundled                     ``smollm2/topk/L<layer>`` etc.                   shipped in the package
sae-lens registry           ``saelens:<release>/<sae_id>``                   needs sae-lens + its hub
==========================  ===============================================  ===========================

Orientation is inferred from shapes (d_in from b_dec, d_sae from b_enc), never from key names alone.
What cannot run identically in gradsae (per-token normalisation, gated, transcoders, ...) is refused with
one line; docs/formats.md lists every case. ``save_saelens`` writes what sae-lens runs (input scaling
folded into the weights, g-SAE/e2e as topk, BatchTopK as jumprelu) and keeps gradsae's own metadata beside.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from . import architectures
from .errors import GradsaeError
from .hooks import canonical_hook_name, dictionary_learning_hook, gemma_scope_hook
from .io import atomic_write_bytes, atomic_write_text
from .sae import SAE, SAEConfig

BUNDLED_DIR = Path(__file__).parent / "bundled" / "saes"
# The bundled SAEs every command defaults to (one place; see bundled/saes/*/README.md for their cards).
DEFAULT_SAE = "smollm2/topk/L6"
DEFAULT_GSAE = "smollm2/gsae/L14"


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_sae(path_or_name: str | Path, device: str = "cpu", dtype: str | None = None) -> SAE:
    """Load an SAE from a folder/file of any supported format, a bundled name, or ``saelens:release/id``."""
    from .model import resolve_device

    device = resolve_device(device)  # "auto" -> cuda/cpu; an unknown device is one line, not a torch error
    spec = str(path_or_name)
    if spec.startswith("saelens:"):
        sae = _load_from_saelens_registry(spec[len("saelens:") :], device)
    else:
        path = _resolve_path(spec)
        sae = _load_path(path)
    _validate(sae, spec)
    if dtype is not None:
        if str(dtype).replace("torch.", "") not in SAVE_DTYPES:
            raise GradsaeError(f"unknown SAE dtype {dtype!r}: use one of {', '.join(SAVE_DTYPES)}")
        sae.cfg.dtype = str(dtype).replace("torch.", "")
        sae = sae.to(getattr(torch, sae.cfg.dtype))
    sae.cfg.device = str(device)
    return sae.to(device).eval().requires_grad_(False)


def bundled_saes() -> dict[str, Path]:
    """Short name -> folder for every SAE shipped inside the package (e.g. ``smollm2/topk/L6``)."""
    out = {}
    if BUNDLED_DIR.is_dir():
        for cfg in sorted(BUNDLED_DIR.glob("**/cfg.json")):
            out[cfg.parent.relative_to(BUNDLED_DIR).as_posix()] = cfg.parent
    return out


_LENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
EXTRA_FILE = "gradsae_extra.safetensors"


def fold_input_scaling(W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, s: float):
    """Fold ``x -> x * s`` before encoding and ``x_hat -> x_hat / s`` after decoding into the weights.

    ``pre = (s x - b_dec) @ W_enc + b_enc = (x - b_dec / s) @ (s W_enc) + b_enc`` and
    ``(h @ W_dec + b_dec) / s = h @ (W_dec / s) + b_dec / s``: returns ``(s W_enc, W_dec / s, b_dec / s)``
    (W_enc [D, C], W_dec [C, D], b_dec [D]); b_enc and a JumpReLU threshold are unchanged.
    """
    return W_enc * s, W_dec / s, b_dec / s


def fold_decoder_norm(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor):
    """Turn a TopK SAE with ``rescale_acts_by_decoder_norm`` into a plain one with identical encode/decode.

    sae-lens computes ``pre * |W_dec_c|``, selects, and decodes ``h / |W_dec_c| @ W_dec``; scaling encoder
    column c by n_c and decoder row c by 1/n_c gives the same h and x_hat. Returns (W_enc, b_enc, W_dec).
    """
    n = W_dec.norm(dim=-1)  # [C]
    return W_enc * n, b_enc * n, W_dec / n[:, None]


def save_saelens(sae: SAE, path: str | Path, dtype: str | None = None) -> Path:
    """Write a folder that both sae-lens (``SAE.load_from_disk``) and gradsae read with identical results.

    ``cfg.json`` (SAELens v6 layout) + ``sae_weights.safetensors`` hold what sae-lens runs: the input scaling
    folded into the weights, a g-SAE / e2e SAE as ``topk``, BatchTopK as ``jumprelu``. ``metadata.gradsae``
    keeps the original architecture, beta and scaling factor, and ``gradsae_extra.safetensors`` any other
    tensor (the g-SAE ``grad_scale``), so ``load_sae`` gives back the SAE that was saved.
    """
    if dtype is not None and dtype not in SAVE_DTYPES:
        raise GradsaeError(f"cannot save as dtype {dtype!r}: use one of {', '.join(SAVE_DTYPES)}")
    c = sae.cfg
    # what sae-lens runs at inference (it has no g-SAE / e2e / BatchTopK inference class): the registry's
    # ``saelens`` name, e.g. a g-SAE or e2e SAE without a gradient is plain TopK, BatchTopK runs as JumpReLU
    arch = architectures.get(c.architecture).saelens
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GradsaeError(f"{path} is a file, not a folder: give a folder to save the SAE in")
    path.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in sae.state_dict().items()
    }
    s = c.norm_scaling_factor
    if s is not None:
        state["W_enc"], state["W_dec"], state["b_dec"] = fold_input_scaling(
            state["W_enc"], state["W_dec"], state["b_dec"], float(s)
        )
    out_dtype = dtype or c.dtype
    lens = {k: state[k].to(getattr(torch, out_dtype)).contiguous() for k in _LENS_KEYS if k in state}
    extra = {k: v.contiguous() for k, v in state.items() if k not in _LENS_KEYS}
    if arch == "jumprelu" and "threshold" not in lens:
        raise GradsaeError(f"{sae.describe()} has no threshold: it cannot be written as a JumpReLU SAE")
    ours = {
        **c.metadata,
        "architecture": c.architecture,
        "k": c.k,
        "beta": c.beta,
        "beta_mode": c.beta_mode,
        "norm_scaling_factor": None,
        "folded_norm_scaling_factor": s,
    }
    ours.pop("format", None)
    ours.pop("source", None)
    cfg = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": out_dtype,
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",  # the scaling factor is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "model_name": c.model_name,
            "hook_name": c.hook_name,
            "hook_head_index": None,
            "prepend_bos": c.prepend_bos,
            "context_size": c.context_size,
            "dataset_path": c.dataset_path,
            "sae_lens_version": "6.0.0",
            "gradsae": ours,
        },
    }
    if arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    _atomic_safetensors(lens, path / "sae_weights.safetensors")
    if extra:
        _atomic_safetensors(extra, path / EXTRA_FILE)
    else:
        (path / EXTRA_FILE).unlink(missing_ok=True)
    atomic_write_text(path / "cfg.json", json.dumps(cfg, indent=2))  # last: a folder with cfg.json is whole
    return path


def _atomic_safetensors(tensors: dict[str, torch.Tensor], target: Path) -> None:
    from safetensors.torch import save

    atomic_write_bytes(target, save(tensors))


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
    raise GradsaeError(
        f"no SAE at {spec!r}: give a folder or file of a supported format, a bundled name, "
        f"or 'saelens:<release>/<sae_id>'.{hint}"
    )


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
    pts = sorted(p.name for p in path.iterdir() if re.match(r"ae_\d+\.pt$", p.name))
    if pts:
        raise GradsaeError(
            f"{path} holds dictionary_learning checkpoints ({', '.join(pts[:4])}"
            f"{', ...' if len(pts) > 4 else ''}): point at one .pt file"
        )
    if "params.npz" in names:
        return _load_gemma_scope(path / "params.npz")
    subs = sorted(
        p.name
        for p in path.iterdir()
        if p.is_dir() and ({"cfg.json", "params.npz", "ae.pt"} & {q.name for q in p.iterdir()})
    )
    if subs:
        raise GradsaeError(
            f"{path} holds several SAEs ({', '.join(subs[:6])}{', ...' if len(subs) > 6 else ''}): "
            "point at one of these sub-folders"
        )
    raise GradsaeError(
        f"{path} is not a known SAE folder (found: {', '.join(sorted(names)[:8]) or 'nothing'}): expected "
        "cfg.json+sae_weights.safetensors (SAELens), params.npz (Gemma Scope), cfg.json+sae.safetensors "
        "(sparsify) or ae.pt+config.json (dictionary_learning)"
    )


def _read_json(path: Path) -> dict:
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several error types for truncated files
        raise GradsaeError(f"cannot read {path} ({e}): the file is truncated or not safetensors") from None


def _whole(value, key: str, where) -> int:
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


def _flag(raw: dict, key: str, default: bool, where) -> bool:
    """A config switch: JSON true/false (a string such as "no" is one line, not silently True)."""
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise GradsaeError(f"{where} has {key}={value!r}: set it to true or false")
    return value


def _real(value, key: str, where) -> float:
    """A finite JSON number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GradsaeError(f"{where} has {key}={value!r}: give a finite number")
    return float(value)


def _scaling_factor(value, where: Path) -> float | None:
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


# ---------------------------------------------------------------------------------------------
# Orientation and building
# ---------------------------------------------------------------------------------------------


def _orient(t: torch.Tensor, rows: int, cols: int, name: str, where: Path) -> torch.Tensor:
    """Return t as [rows, cols], transposing if it is stored the other way round."""
    if tuple(t.shape) == (rows, cols):
        return t
    if tuple(t.shape) == (cols, rows):
        return t.T
    raise GradsaeError(
        f"{name} in {where} has shape {tuple(t.shape)}, expected ({rows}, {cols}) or "
        f"({cols}, {rows}): the file does not belong to a d_in={rows if name == 'W_enc' else cols} SAE"
    )


def _build(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, where: Path, threshold=None) -> SAE:
    D, C = cfg.d_in, cfg.d_sae
    for name, t, shape in (("b_enc", b_enc, (C,)), ("b_dec", b_dec, (D,))):
        if tuple(t.shape) != shape:
            raise GradsaeError(
                f"{name} in {where} has shape {tuple(t.shape)}, expected {shape}: config says d_in={D}, d_sae={C}"
            )
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(_orient(W_enc, D, C, "W_enc", where))
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(_orient(W_dec, C, D, "W_dec", where))
        sae.b_dec.copy_(b_dec)
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

# sae-lens architecture -> (gradsae architecture, weight keys beyond W_enc/b_enc/W_dec/b_dec it must have).
# "batchtopk" / "matryoshka_batchtopk" are sae-lens *training* checkpoints: at inference sae-lens turns them
# into JumpReLU with threshold = topk_threshold (save_inference_model), so gradsae does the same.
_SAELENS_ARCH = {
    "standard": ("relu", ()),
    "relu": ("relu", ()),
    "jumprelu": ("jumprelu", ("threshold",)),
    "topk": ("topk", ()),
    "batchtopk": ("jumprelu", ("topk_threshold",)),
    "matryoshka_batchtopk": ("jumprelu", ("topk_threshold",)),
}
_SAELENS_REFUSED = {
    "gated": "gated SAEs (b_gate, b_mag, r_mag) have no gradsae equivalent",
    "abstopk": "AbsTopK keeps negative latents, which gradsae's TopK does not",
    "transcoder": "a transcoder maps one hook to another; gradsae splices SAEs that reconstruct their input",
    "skip_transcoder": "a transcoder maps one hook to another; gradsae splices SAEs that reconstruct their input",
    "jumprelu_transcoder": "a transcoder maps one hook to another; gradsae splices SAEs that reconstruct their input",
    "jumprelu_skip_transcoder": "a transcoder maps one hook to another; gradsae splices SAEs that reconstruct "
    "their input",
    "temporal": "temporal SAEs attend over earlier tokens, which gradsae's per-token splice cannot run",
    "matching_pursuit": "matching pursuit encodes iteratively, which gradsae does not implement",
}
_PER_TOKEN_NORM = {
    "layer_norm": "normalises each token by its own mean and standard deviation",
    "constant_norm_rescale": "rescales each token to norm sqrt(d_in) by its own norm",
    "covariance_whitening": "whitens activations with a matrix kept outside cfg.json",
}


def _load_saelens(path: Path) -> SAE:
    raw = _read_json(path / "cfg.json")
    w = _read_safetensors(path / "sae_weights.safetensors")
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    flat = {**raw, **meta}  # v6 nests model/hook info under metadata; older versions are flat
    ours = meta.get("gradsae") if isinstance(meta.get("gradsae"), dict) else {}
    lens_arch = raw.get("architecture")
    if lens_arch is None:  # pre-v6: activation_fn_str
        lens_arch = {"relu": "standard"}.get(raw.get("activation_fn_str", "relu"), raw.get("activation_fn_str"))
    if ours.get("architecture"):  # written by gradsae
        lens_arch = ours["architecture"]
    if not isinstance(lens_arch, str):
        raise GradsaeError(f'{path}/cfg.json names the architecture {lens_arch!r}: give its name, e.g. "topk"')
    if lens_arch in _SAELENS_REFUSED:
        raise GradsaeError(
            f"{path} is a sae-lens {lens_arch!r} SAE, which gradsae cannot run: {_SAELENS_REFUSED[lens_arch]}"
        )
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if key not in w:
            raise GradsaeError(f"{path}/sae_weights.safetensors has no {key}: not a SAELens SAE file")
    D, C = _dims(w["b_enc"], w["b_dec"])
    for key, expect in (("d_in", D), ("d_sae", C)):
        if raw.get(key) is not None and _whole(raw[key], key, path / "cfg.json") != expect:
            raise GradsaeError(
                f"{path}/cfg.json says {key}={raw[key]} but the weights have {expect}: "
                "the config and weights do not belong together"
            )
    hook = canonical_hook_name(str(flat.get("hook_name") or flat.get("hook_point") or ""))
    common = dict(
        hook_name=hook,
        model_name=str(flat.get("model_name") or ""),
        context_size=flat.get("context_size"),
        prepend_bos=bool(flat.get("prepend_bos", True)),
        dataset_path=str(flat.get("dataset_path") or ""),
        apply_b_dec_to_input=_flag(raw, "apply_b_dec_to_input", True, path / "cfg.json"),
    )
    if ours.get("architecture") and "folded_norm_scaling_factor" in ours:
        return _load_gradsae_folder(path, raw, ours, w, D, C, common)

    # from here on: a sae-lens file, or one gradsae wrote before folding the scaling factor (runtime factor)
    gradsae_own = {"gsae": ("gsae", ()), "batchtopk": ("batchtopk", ("threshold",))} if ours else {}
    table = {**_SAELENS_ARCH, **gradsae_own}
    if lens_arch not in table:
        raise GradsaeError(
            f"SAELens architecture {lens_arch!r} in {path} is not supported: gradsae reads "
            f"{', '.join(sorted(set(_SAELENS_ARCH) - {'relu'}))}"
        )
    arch, needs = table[lens_arch]
    if lens_arch == "batchtopk" and not ours and "threshold" in w and "topk_threshold" not in w:
        needs = ("threshold",)
    if "log_threshold" in w and "threshold" not in w:  # older sae-lens JumpReLU training checkpoints
        w = {**{k_: v for k_, v in w.items() if k_ != "log_threshold"}, "threshold": w["log_threshold"].float().exp()}
    known = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "topk_threshold", "grad_scale"}
    missing = [k_ for k_ in needs if k_ not in w]
    foreign = sorted(set(w) - known)
    if missing or foreign or ("threshold" in w and arch in ("relu", "topk")):
        held = ", ".join(foreign) or ", ".join(k_ for k_ in ("threshold", "topk_threshold") if k_ in w) or "no "
        raise GradsaeError(
            f"{path}/cfg.json names a {lens_arch!r} SAE but the weights hold {held.strip()}"
            f"{' and lack ' + ', '.join(missing) if missing else ''}: the config and the weights "
            "belong to different SAE classes"
        )
    if raw.get("finetuning_scaling_factor"):
        raise GradsaeError(
            f"{path} uses finetuning_scaling_factor, which gradsae does not implement: "
            "fold it into W_dec with sae-lens and save again"
        )
    norm = raw.get("normalize_activations")
    nsf = _scaling_factor(ours.get("norm_scaling_factor"), path / "cfg.json")
    if norm in _PER_TOKEN_NORM:
        raise GradsaeError(
            f"{path} {_PER_TOKEN_NORM[norm]} (normalize_activations={norm!r}); gradsae's SAEs apply "
            "no per-token normalisation, so it cannot run this SAE as trained"
        )
    if norm not in (None, "none", "expected_average_only_in"):
        raise GradsaeError(
            f"{path} has normalize_activations={norm!r}, which gradsae does not know: "
            "use none or expected_average_only_in"
        )
    if norm == "expected_average_only_in" and nsf is None:
        nsf = _scaling_factor(flat.get("norm_scaling_factor"), path / "cfg.json")
        if nsf is None:
            raise GradsaeError(
                f"{path} expects activations scaled by a dataset-wide constant "
                "(normalize_activations=expected_average_only_in) but stores no norm_scaling_factor: "
                'add the factor it was trained with to cfg.json as "norm_scaling_factor"'
            )
    k_raw = raw.get("k")
    if k_raw is None:
        kwargs = raw.get("activation_fn_kwargs")
        k_raw = kwargs.get("k") if isinstance(kwargs, dict) else None
    needs_k = architectures.get(arch).needs_k
    k = _whole(k_raw, "k", path / "cfg.json") if k_raw is not None and needs_k else None
    if needs_k and k is None:
        raise GradsaeError(
            f'{path}/cfg.json names a {lens_arch!r} SAE but has no k: add "k" (active latents per token)'
        )
    W_enc, b_enc, W_dec = w["W_enc"].float(), w["b_enc"].float(), w["W_dec"].float()
    W_dec = _orient(W_dec, C, D, "W_dec", path)
    W_enc = _orient(W_enc, D, C, "W_enc", path)
    if raw.get("rescale_acts_by_decoder_norm"):
        if lens_arch not in ("topk", "batchtopk", "matryoshka_batchtopk"):
            raise GradsaeError(
                f"{path} sets rescale_acts_by_decoder_norm for a {lens_arch!r} SAE, which sae-lens "
                "only defines for TopK: fix the config"
            )
        W_enc, b_enc, W_dec = fold_decoder_norm(W_enc, b_enc, W_dec)
    thr = w.get("threshold")
    if lens_arch in ("batchtopk", "matryoshka_batchtopk") and "topk_threshold" in w:
        thr = w["topk_threshold"].float().reshape(-1)
        if thr.numel() != 1:
            raise GradsaeError(f"topk_threshold in {path} has {thr.numel()} values, expected one: the file is corrupt")
    extra = {k_: v for k_, v in ours.items() if k_ not in ("architecture", "beta", "beta_mode", "norm_scaling_factor")}
    source = {"format": "saelens", "source": str(path)}
    if lens_arch in ("batchtopk", "matryoshka_batchtopk") and "topk_threshold" in w:
        source["saelens_training_architecture"] = lens_arch
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture=arch,
        k=k,
        norm_scaling_factor=nsf,
        beta=_real(ours.get("beta", 0.0), "metadata.gradsae.beta", path / "cfg.json"),
        beta_mode=ours.get("beta_mode", "rms"),
        metadata={**extra, **source},
        **common,
    )
    sae = _build(cfg, W_enc, b_enc, W_dec, w["b_dec"].float(), path, thr)
    if "grad_scale" in w and hasattr(sae, "grad_scale"):
        sae.grad_scale.copy_(w["grad_scale"].float().reshape(()))
    return sae


def _load_gradsae_folder(path: Path, raw: dict, ours: dict, w: dict, D: int, C: int, common: dict) -> SAE:
    """A folder ``save_saelens`` wrote: undo the folding so the SAE is the one that was saved. The top-level
    fields (what sae-lens runs) must agree with gradsae's metadata, so both tools read the same SAE."""
    where = path / "cfg.json"
    arch = ours["architecture"]
    if not isinstance(arch, str):
        raise GradsaeError(f"{where} has metadata.gradsae.architecture={arch!r}: the file is damaged")
    k = _whole(ours["k"], "k", where) if ours.get("k") is not None else None
    lens = architectures.get(arch).saelens
    if raw.get("architecture") != lens:
        raise GradsaeError(
            f"{where} says architecture={raw.get('architecture')!r} (what sae-lens runs) but gradsae's metadata says "
            f"{arch!r}, which sae-lens runs as {lens!r}: the file was edited; make them agree or save the SAE again"
        )
    if lens == "topk" and (raw.get("k") is None or _whole(raw["k"], "k", where) != k):
        raise GradsaeError(
            f"{where} says k={raw.get('k')!r} (what sae-lens runs) but gradsae's metadata says k={k}: the file was "
            "edited; make them agree or save the SAE again"
        )
    s = _scaling_factor(ours.get("folded_norm_scaling_factor"), path / "cfg.json")
    W_enc, W_dec, b_dec = w["W_enc"].float(), w["W_dec"].float(), w["b_dec"].float()
    W_enc, W_dec = _orient(W_enc, D, C, "W_enc", path), _orient(W_dec, C, D, "W_dec", path)
    if s is not None:  # inverse of fold_input_scaling
        W_enc, W_dec, b_dec = fold_input_scaling(W_enc, W_dec, b_dec, 1.0 / s)
    meta = {
        k_: v
        for k_, v in ours.items()
        if k_ not in ("architecture", "k", "beta", "beta_mode", "norm_scaling_factor", "folded_norm_scaling_factor")
    }
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture=arch,
        k=k,
        norm_scaling_factor=s,
        beta=_real(ours.get("beta", 0.0), "metadata.gradsae.beta", where),
        beta_mode=ours.get("beta_mode", "rms"),
        metadata={**meta, "format": "saelens", "source": str(path)},
        **common,
    )
    sae = _build(cfg, W_enc, w["b_enc"].float(), W_dec, b_dec, path, w.get("threshold"))
    extra_path = path / EXTRA_FILE
    if extra_path.exists():
        extra = _read_safetensors(extra_path)
        own = sae.state_dict()
        for name, t in extra.items():
            if name not in own or own[name].shape != t.shape:
                raise GradsaeError(
                    f"{extra_path} holds {name} {tuple(t.shape)}, which a {arch} SAE does not have: "
                    "the folder mixes files of two SAEs; save it again"
                )
        sae.load_state_dict({**own, **extra})
    return sae


def _load_gemma_scope(path: Path) -> SAE:
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
    D, C = _dims(w["b_enc"], w["b_dec"])
    # absolute, not resolve: hub caches symlink params.npz into blobs/, which would lose layer_L/
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name=gemma_scope_hook(path.absolute().parts),
        metadata={"format": "gemma_scope", "source": str(path)},
    )
    return _build(cfg, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], path, w["threshold"])


def _load_sparsify(path: Path) -> SAE:
    raw = _read_json(path / "cfg.json")
    w = _read_safetensors(path / "sae.safetensors")
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(w)
    if missing:
        raise GradsaeError(f"{path}/sae.safetensors lacks {', '.join(sorted(missing))}: not a sparsify SAE")
    if raw.get("transcode") or raw.get("skip_connection") or "W_skip" in w:
        raise GradsaeError(f"{path} is a sparsify transcoder/skip SAE: gradsae reads SAEs that reconstruct their input")
    act = raw.get("activation", "topk")
    if act != "topk":
        raise GradsaeError(f"sparsify activation {act!r} in {path} is not supported: gradsae reads topk")
    D, C = _dims(w["encoder.bias"], w["b_dec"])
    if raw.get("d_in") is not None and _whole(raw["d_in"], "d_in", path / "cfg.json") != D:
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
        k=_whole(raw.get("k", 32), "k", path / "cfg.json"),
        apply_b_dec_to_input=True,
        hook_name=hook,
        metadata={"format": "sparsify", "source": str(path)},
    )
    return _build(cfg, w["encoder.weight"], w["encoder.bias"], w["W_dec"], w["b_dec"], path)


# dictionary_learning class -> (gradsae architecture, the state-dict keys that class saves)
_DL_CLASSES = {
    "AutoEncoder": ("relu", {"encoder.weight", "encoder.bias", "decoder.weight", "bias"}),
    "AutoEncoderNew": ("relu", {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}),
    "AutoEncoderTopK": ("topk", {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"}),
    "BatchTopKSAE": ("batchtopk", {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"}),
    "JumpReluAutoEncoder": ("jumprelu", {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}),
    "MatryoshkaBatchTopKSAE": ("batchtopk", {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"}),
}
_DL_TRAINER_CLASS = {
    "StandardTrainer": "AutoEncoder",
    "StandardTrainerAprilUpdate": "AutoEncoder",
    "TopKTrainer": "AutoEncoderTopK",
    "BatchTopKTrainer": "BatchTopKSAE",
    "JumpReluTrainer": "JumpReluAutoEncoder",
    "MatryoshkaBatchTopKTrainer": "MatryoshkaBatchTopKSAE",
}
_DL_REFUSED = {
    "GatedAutoEncoder": "gated SAEs have no gradsae equivalent",
    "IdentityDict": "an identity dictionary is not an SAE",
}


def _dl_config(folder: Path) -> tuple[dict, Path | None]:
    """config.json beside ae.pt, or one level up for ``checkpoints/ae_<step>.pt`` (trainSAE's layout)."""
    for cand in (folder / "config.json", folder.parent / "config.json" if folder.name == "checkpoints" else None):
        if cand is not None and cand.exists():
            return _read_json(cand), cand
    return {}, None


def _dl_class_from_keys(keys: set[str], weights: Path) -> str:
    """The dictionary_learning class whose state dict has exactly these keys (no config.json to say)."""
    matches = [name for name, (_, want) in _DL_CLASSES.items() if want == keys]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise GradsaeError(
            f"{weights} could be {' or '.join(matches)} (same weights, different encoders) and no "
            "config.json names the class: put trainSAE's config.json beside it (or one level up "
            "for checkpoints/)"
        )
    if {"decoder_bias", "r_mag", "gate_bias", "mag_bias"} <= keys:
        raise GradsaeError(
            f"{weights} is a dictionary_learning GatedAutoEncoder, which gradsae cannot run: "
            f"{_DL_REFUSED['GatedAutoEncoder']}"
        )
    raise GradsaeError(
        f"{weights} holds {', '.join(sorted(keys)[:8])}: not a dictionary_learning SAE gradsae knows "
        f"({', '.join(_DL_CLASSES)})"
    )


def _load_torch_state(weights: Path) -> dict:
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns before raising on pickles it refuses; our line says it all
            warnings.simplefilter("ignore")
            sd = torch.load(weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as e:
        raise GradsaeError(
            f"cannot read {weights} with weights_only=True ({type(e).__name__}): it is not a plain "
            "state dict of tensors; re-save it with torch.save(ae.state_dict(), ...)"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GradsaeError(
            f"{weights} is not a state dict of tensors: re-save it with torch.save(ae.state_dict(), ...)"
        )
    return sd


def _load_dictionary_learning(folder: Path, weights: Path) -> SAE:
    raw, cfg_path = _dl_config(folder)
    tr = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
    sd = _load_torch_state(weights)
    keys = set(sd)
    cls_name = tr.get("dict_class") or _DL_TRAINER_CLASS.get(str(tr.get("trainer_class")))
    if cls_name in _DL_REFUSED:
        raise GradsaeError(
            f"dictionary_learning class {cls_name!r} in {cfg_path} cannot run in gradsae: {_DL_REFUSED[cls_name]}"
        )
    if cls_name is None:
        cls_name = _dl_class_from_keys(keys, weights)
    if cls_name not in _DL_CLASSES:
        raise GradsaeError(
            f"dictionary_learning class {cls_name!r} in {cfg_path} is not supported: gradsae reads "
            f"{', '.join(_DL_CLASSES)}"
        )
    arch, want = _DL_CLASSES[cls_name]
    if keys != want:
        actual = [name for name, (_, w_) in _DL_CLASSES.items() if w_ == keys]
        held = f"{' or '.join(actual)}'s weights" if actual else f"the keys {', '.join(sorted(keys)[:8])}"
        raise GradsaeError(
            f"{cfg_path or 'the config'} names {cls_name} but {weights} holds {held}: "
            "the config and the weights belong to different SAE classes"
        )
    if "W_enc" in sd:
        W_enc, b_enc, W_dec, b_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"], sd["b_dec"]
    else:  # nn.Linear layout: encoder.weight [C, D], decoder.weight [D, C]
        W_enc, b_enc, W_dec = sd["encoder.weight"], sd["encoder.bias"], sd["decoder.weight"]
        b_dec = sd.get("bias", sd.get("b_dec", sd.get("decoder.bias")))
    W_enc, b_enc, W_dec, b_dec = (t.float() for t in (W_enc, b_enc, W_dec, b_dec))
    # AutoEncoderNew adds its decoder bias after decoding but subtracts nothing before encoding;
    # JumpReluAutoEncoder subtracts nothing either (its apply_b_dec_to_input defaults to False)
    apply = cls_name in ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE") or (
        cls_name == "JumpReluAutoEncoder" and bool(tr.get("apply_b_dec_to_input", False))
    )
    D, C = _dims(b_enc, b_dec)
    if tr.get("activation_dim") is not None and _whole(tr["activation_dim"], "activation_dim", cfg_path) != D:
        raise GradsaeError(
            f"{cfg_path} says activation_dim={tr['activation_dim']} but the weights have {D}: "
            "the config and the weights do not belong together"
        )
    k = None
    if arch in ("topk", "batchtopk"):
        k = int(sd["k"].reshape(-1)[0]) if "k" in sd else _whole(tr.get("k"), "k", cfg_path or weights)
    layer = tr.get("layer")
    layer = _whole(layer, "layer", cfg_path) if layer is not None else None
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture=arch,
        k=k,
        apply_b_dec_to_input=apply,
        hook_name=dictionary_learning_hook(tr.get("submodule_name"), layer),
        model_name=str(tr.get("lm_name") or ""),
        metadata={"format": "dictionary_learning", "dict_class": cls_name, "source": str(weights)},
    )
    thr = sd.get("threshold")
    if arch == "batchtopk":
        if thr is None or thr.numel() != 1 or float(thr.reshape(-1)[0]) < 0:
            raise GradsaeError(
                f"{weights} is a {cls_name} without a learned threshold (threshold < 0: training "
                "stopped before it was set), so it has no per-token inference form; train longer"
            )
    elif arch == "topk":
        thr = None  # AutoEncoderTopK encodes with TopK by default; its threshold is an optional alternative
    return _build(cfg, W_enc, b_enc, W_dec, b_dec, weights, thr)


def _load_from_saelens_registry(spec: str, device: str) -> SAE:
    release, _, sae_id = spec.partition("/")
    if not sae_id:
        raise GradsaeError(
            f"'saelens:{spec}' needs the form saelens:<release>/<sae_id>, "
            "e.g. saelens:gemma-scope-9b-it-res-canonical/layer_9/width_131k/canonical"
        )
    try:
        from sae_lens import SAE as LensSAE  # type: ignore
    except ImportError:
        raise GradsaeError("loading 'saelens:' names needs sae-lens: pip install 'gradsae[saelens]'") from None
    try:
        loaded = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:
        raise GradsaeError(
            f"sae-lens could not load {release}/{sae_id} ({type(e).__name__}: {e}); "
            "check the names and that its hub is reachable"
        ) from None
    lens = loaded[0] if isinstance(loaded, tuple) else loaded
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lens.save_model(tmp)
        return _load_saelens(Path(tmp))
