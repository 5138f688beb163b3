"""SAELens folders (v6 and older, training checkpoints included): read them, and write one that sae-lens and gradsae
both run (``save_saelens``); the folders gradsae writes are this format with gradsae's metadata beside; names from the
sae-lens registry (``saelens:<release>/<sae_id>``, needs sae-lens and its hub).

Files: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``gradsae_extra.safetensors`` for tensors sae-lens has no
place for, such as the g-SAE's ``grad_scale``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import GradsaeError
from ..hooks import canonical_hook_name, hook_name_for, site_of
from ..io import atomic_write_text, write_safetensors
from . import architectures, checks, formats
from .sae import SAE, SAEConfig


_LENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
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
    if dtype is not None and dtype not in formats.SAVE_DTYPES:
        raise GradsaeError(f"cannot save as dtype {dtype!r}: use one of {', '.join(formats.SAVE_DTYPES)}")
    c = sae.cfg
    if c.is_transcoder:
        return _save_transcoder(sae, Path(path), dtype)
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
    write_safetensors(path / "sae_weights.safetensors", lens)
    if extra:
        write_safetensors(path / EXTRA_FILE, extra)
    else:
        (path / EXTRA_FILE).unlink(missing_ok=True)
    atomic_write_text(path / "cfg.json", json.dumps(cfg, indent=2))  # last: a folder with cfg.json is whole
    return path


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
    "temporal": "temporal SAEs attend over earlier tokens, which gradsae's per-token splice cannot run",
    "matching_pursuit": "matching pursuit encodes iteratively, which gradsae does not implement",
}
# sae-lens transcoder classes: (gradsae architecture, skip connection); W_skip is stored [d_out, d_in]
_TRANSCODERS = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
_PER_TOKEN_NORM = {
    "layer_norm": "normalises each token by its own mean and standard deviation",
    "constant_norm_rescale": "rescales each token to norm sqrt(d_in) by its own norm",
    "covariance_whitening": "whitens activations with a matrix kept outside cfg.json",
}


def load(path: Path) -> SAE:
    """The SAE in a SAELens folder (or one gradsae wrote)."""
    raw = checks.read_json(path / "cfg.json")
    w = checks.read_safetensors(path / "sae_weights.safetensors")
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
    if isinstance(raw.get("architecture"), str) and raw["architecture"] in _TRANSCODERS:
        return _load_transcoder(path, raw, flat, w)
    if lens_arch in _SAELENS_REFUSED:
        raise GradsaeError(
            f"{path} is a sae-lens {lens_arch!r} SAE, which gradsae cannot run: {_SAELENS_REFUSED[lens_arch]}"
        )
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if key not in w:
            raise GradsaeError(f"{path}/sae_weights.safetensors has no {key}: not a SAELens SAE file")
    D, C = checks.dims(w["b_enc"], w["b_dec"])
    for key, expect in (("d_in", D), ("d_sae", C)):
        if raw.get(key) is not None and checks.whole(raw[key], key, path / "cfg.json") != expect:
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
        apply_b_dec_to_input=checks.flag(raw, "apply_b_dec_to_input", True, path / "cfg.json"),
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
    nsf = checks.scaling_factor(ours.get("norm_scaling_factor"), path / "cfg.json")
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
        nsf = checks.scaling_factor(flat.get("norm_scaling_factor"), path / "cfg.json")
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
    k = checks.whole(k_raw, "k", path / "cfg.json") if k_raw is not None and needs_k else None
    if needs_k and k is None:
        raise GradsaeError(
            f'{path}/cfg.json names a {lens_arch!r} SAE but has no k: add "k" (active latents per token)'
        )
    W_enc, b_enc, W_dec = w["W_enc"].float(), w["b_enc"].float(), w["W_dec"].float()
    W_dec = checks.orient(W_dec, C, D, "W_dec", path)
    W_enc = checks.orient(W_enc, D, C, "W_enc", path)
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
        beta=checks.real(ours.get("beta", 0.0), "metadata.gradsae.beta", path / "cfg.json"),
        beta_mode=ours.get("beta_mode", "rms"),
        metadata={**extra, **source},
        **common,
    )
    sae = checks.build(cfg, W_enc, b_enc, W_dec, w["b_dec"].float(), path, thr)
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
    k = checks.whole(ours["k"], "k", where) if ours.get("k") is not None else None
    lens = architectures.get(arch).saelens
    if raw.get("architecture") != lens:
        raise GradsaeError(
            f"{where} says architecture={raw.get('architecture')!r} (what sae-lens runs) but gradsae's metadata says "
            f"{arch!r}, which sae-lens runs as {lens!r}: the file was edited; make them agree or save the SAE again"
        )
    if lens == "topk" and (raw.get("k") is None or checks.whole(raw["k"], "k", where) != k):
        raise GradsaeError(
            f"{where} says k={raw.get('k')!r} (what sae-lens runs) but gradsae's metadata says k={k}: the file was "
            "edited; make them agree or save the SAE again"
        )
    s = checks.scaling_factor(ours.get("folded_norm_scaling_factor"), path / "cfg.json")
    W_enc, W_dec, b_dec = w["W_enc"].float(), w["W_dec"].float(), w["b_dec"].float()
    W_enc, W_dec = checks.orient(W_enc, D, C, "W_enc", path), checks.orient(W_dec, C, D, "W_dec", path)
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
        beta=checks.real(ours.get("beta", 0.0), "metadata.gradsae.beta", where),
        beta_mode=ours.get("beta_mode", "rms"),
        metadata={**meta, "format": "saelens", "source": str(path)},
        **common,
    )
    sae = checks.build(cfg, W_enc, w["b_enc"].float(), W_dec, b_dec, path, w.get("threshold"))
    extra_path = path / EXTRA_FILE
    if extra_path.exists():
        extra = checks.read_safetensors(extra_path)
        own = sae.state_dict()
        for name, t in extra.items():
            if name not in own or own[name].shape != t.shape:
                raise GradsaeError(
                    f"{extra_path} holds {name} {tuple(t.shape)}, which a {arch} SAE does not have: "
                    "the folder mixes files of two SAEs; save it again"
                )
        sae.load_state_dict({**own, **extra})
    return sae


def load_from_hub(spec: str, device: str) -> SAE:
    """``saelens:<release>/<sae_id>`` (the part after ``saelens:``), through sae-lens and its hub."""
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
        return load(Path(tmp))


def find(path: Path) -> Path | None:
    if path.is_dir() and (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
        return path
    return None


formats.register(formats.Format("saelens", "cfg.json+sae_weights.safetensors (SAELens)", find, load))
formats.register_prefix("saelens:", load_from_hub)
formats.register_saver("saelens", save_saelens)


def _transcoder_hooks(path: Path, flat: dict) -> tuple[str, str]:
    """(hook_name, hook_name_out) of a sae-lens transcoder: the Hugging Face hook points where the folder names them
    (Gemma Scope 2's ``hf_hook_name``: sae-lens's ``hook_mlp_in`` there is the norm's output), else its TransformerLens
    names; a transcoder without an output hook writes the MLP output of the block it reads."""
    hook_in = canonical_hook_name(str(flat.get("hf_hook_name") or flat.get("hook_name") or ""))
    out = flat.get("hf_hook_name_out") or flat.get("hook_name_out")
    if out:
        return hook_in, canonical_hook_name(str(out))
    site = site_of(hook_in)
    if site is None:
        raise GradsaeError(
            f"{path}/cfg.json names no hook for the transcoder's input (hook_name): add the hook it reads, "
            "e.g. blocks.L.ln2.hook_normalized"
        )
    return hook_in, hook_name_for(site[0], "hook_mlp_out")


def _load_transcoder(path: Path, raw: dict, flat: dict, w: dict) -> SAE:
    """A sae-lens transcoder folder (``transcoder``, ``skip_transcoder``, ``jumprelu_[skip_]transcoder``)."""
    arch, skip = _TRANSCODERS[raw["architecture"]]
    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else []) + (["W_skip"] * skip)
    missing = [k_ for k_ in need if k_ not in w]
    if missing:
        raise GradsaeError(f"{path}/cfg.json names a {raw['architecture']!r} but the weights lack {', '.join(missing)}")
    if checks.flag(raw, "apply_b_dec_to_input", False, path / "cfg.json"):
        raise GradsaeError(f"{path}/cfg.json sets apply_b_dec_to_input for a transcoder, which sae-lens refuses too")
    if raw.get("normalize_activations") not in (None, "none"):
        raise GradsaeError(f"{path}: a transcoder with normalize_activations={raw['normalize_activations']!r}")
    C, D, O = int(w["b_enc"].shape[-1]), int(w["W_enc"].shape[0]), int(w["b_dec"].shape[-1])
    for key, expect in (("d_in", D), ("d_sae", C), ("d_out", O)):
        if raw.get(key) is not None and checks.whole(raw[key], key, path / "cfg.json") != expect:
            raise GradsaeError(f"{path}/cfg.json says {key}={raw[key]} but the weights have {expect}")
    hook_in, hook_out = _transcoder_hooks(path, flat)
    cfg = SAEConfig(
        d_in=D,
        d_sae=C,
        architecture=arch,
        apply_b_dec_to_input=False,
        hook_name=hook_in,
        hook_name_out=hook_out,
        d_out=O,
        skip_connection=skip,
        model_name=str(flat.get("model_name") or ""),
        metadata={"format": "saelens", "source": str(path), "saelens_architecture": raw["architecture"]},
    )
    W_skip = w["W_skip"].float().T if skip else None  # sae-lens: x @ W_skip.T with W_skip [d_out, d_in]
    f = {k_: v.float() for k_, v in w.items()}
    return checks.build(cfg, f["W_enc"], f["b_enc"], f["W_dec"], f["b_dec"], path, f.get("threshold"), W_skip)


def _save_transcoder(sae: SAE, path: Path, dtype: str | None) -> Path:
    """A sae-lens transcoder folder (``[jumprelu_][skip_]transcoder``: W_skip stored [d_out, d_in]); the hooks go
    in the metadata, where sae-lens keeps what it does not model."""
    c = sae.cfg
    lens_arch = {("relu", False): "transcoder", ("relu", True): "skip_transcoder"}
    lens_arch |= {("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder"}
    arch = lens_arch.get((c.architecture, c.skip_connection))
    if arch is None or c.norm_scaling_factor is not None:
        raise GradsaeError(
            f"{sae.describe()} has no sae-lens class (sae-lens has relu and jumprelu transcoders, without an input "
            "scaling factor): it cannot be saved as a sae-lens folder"
        )
    if path.exists() and not path.is_dir():
        raise GradsaeError(f"{path} is a file, not a folder: give a folder to save the SAE in")
    path.mkdir(parents=True, exist_ok=True)
    out_dtype = getattr(torch, dtype or c.dtype)
    state = {k: v.detach().cpu().float() for k, v in sae.state_dict().items()}
    if c.skip_connection:
        state["W_skip"] = state["W_skip"].T
    tensors = {k: state[k].to(out_dtype).contiguous() for k in (*_LENS_KEYS, "W_skip") if k in state}
    cfg = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "d_out": c.out_dim,
        "dtype": dtype or c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": c.model_name,
            "hook_name": c.hook_name,
            "hook_name_out": c.hook_name_out,
            "hook_head_index": None,
            "prepend_bos": c.prepend_bos,
            "context_size": c.context_size,
            "dataset_path": c.dataset_path,
            "sae_lens_version": "6.0.0",
        },
    }
    write_safetensors(path / "sae_weights.safetensors", tensors)
    (path / EXTRA_FILE).unlink(missing_ok=True)
    atomic_write_text(path / "cfg.json", json.dumps(cfg, indent=2))  # last: a folder with cfg.json is whole
    return path
