"""dictionary_learning (Marks et al.): ``ae.pt`` (a state dict, read with ``weights_only=True``) with trainSAE's
``config.json`` beside it, or one level up for ``checkpoints/ae_<step>.pt``; the class is read from the config, else
from the state dict's keys."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import schema
from ..errors import GradsaeError
from ..hooks import dictionary_learning_hook
from . import checks, formats
from .sae import SAE, SAEConfig


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


# the fields of trainSAE's config.json this reader uses (others are free)
CONFIG_SCHEMA = {
    "trainer": {
        "dict_class": str,
        "trainer_class": str,
        "activation_dim": schema.INT,
        "dict_size": schema.INT,
        "k": schema.INT,
        "layer": schema.INT,
        "lm_name": str,
        "submodule_name": str,
        "apply_b_dec_to_input": bool,
    }
}


def _dl_config(folder: Path) -> tuple[dict, Path | None]:
    """config.json beside ae.pt, or one level up for ``checkpoints/ae_<step>.pt`` (trainSAE's layout)."""
    for cand in (folder / "config.json", folder.parent / "config.json" if folder.name == "checkpoints" else None):
        if cand is not None and cand.exists():
            raw = checks.read_json(cand)
            schema.check(raw, CONFIG_SCHEMA, str(cand))
            return raw, cand
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


def load(weights: Path) -> SAE:
    """The SAE in a dictionary_learning ``.pt`` state dict (its config beside it or one level up)."""
    folder = weights.parent
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
    D, C = checks.dims(b_enc, b_dec)
    if tr.get("activation_dim") is not None and checks.whole(tr["activation_dim"], "activation_dim", cfg_path) != D:
        raise GradsaeError(
            f"{cfg_path} says activation_dim={tr['activation_dim']} but the weights have {D}: "
            "the config and the weights do not belong together"
        )
    k = None
    if arch in ("topk", "batchtopk"):
        k = int(sd["k"].reshape(-1)[0]) if "k" in sd else checks.whole(tr.get("k"), "k", cfg_path or weights)
    layer = tr.get("layer")
    layer = checks.whole(layer, "layer", cfg_path) if layer is not None else None
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
    return checks.build(cfg, W_enc, b_enc, W_dec, b_dec, weights, thr)


def find(path: Path) -> Path | None:
    """``ae.pt`` or any ``.pt``/``.pth`` file; a folder of ``ae_<step>.pt`` checkpoints is one line (pick one)."""
    if path.is_file():
        return path if path.suffix in (".pt", ".pth") else None
    if (path / "ae.pt").is_file():
        return path / "ae.pt"
    pts = sorted(p.name for p in path.iterdir() if re.match(r"ae_\d+\.pt$", p.name))
    if pts:
        raise GradsaeError(
            f"{path} holds dictionary_learning checkpoints ({', '.join(pts[:4])}"
            f"{', ...' if len(pts) > 4 else ''}): point at one .pt file"
        )
    return None


formats.register(formats.Format("dictionary_learning", "ae.pt+config.json (dictionary_learning)", find, load))
