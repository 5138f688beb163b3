"""The registry of SAE file formats: ``load_sae`` finds the one format whose files are present, in an explicit order.

Each format is one module that calls ``register(Format(...))`` when ``gradsae.saes`` is imported:

==========================  ===============================================  ===========================
format (module)             files                                            notes
==========================  ===============================================  ===========================
SAELens (``saelens``)       cfg.json + sae_weights.safetensors               v6 and older, checkpoints;
                                                                             also what gradsae writes
sparsify (``sparsify``)     cfg.json + sae.safetensors                       TopK, encoder.weight [C, D]
dictionary_learning         ae.pt (+ config.json, or ../config.json)         torch.load(weights_only=True)
Gemma Scope (``gemma_scope``) params.npz                                     JumpReLU, no b_dec on input
Gemma Scope 2               <site>/layer_L_width_W_.../params.safetensors    JumpReLU; site from config/path
bundled                     ``smollm2/topk/L<layer>`` etc.                   shipped in the package
sae-lens registry           ``saelens:<release>/<sae_id>``                   needs sae-lens + its hub
==========================  ===============================================  ===========================

``ORDER`` is the detection order (a folder holding the files of two formats is read as the first); formats
registered by other code are tried after it, in the order they were registered. What cannot run identically in
gradsae (per-token normalisation, gated, transcoders, ...) is refused with one line; docs/formats.md lists every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import GradsaeError

if TYPE_CHECKING:
    from .sae import SAE

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled" / "saes"
# The bundled SAEs every command defaults to (one place; see bundled/saes/*/README.md for their cards).
DEFAULT_SAE = "smollm2/topk/L6"
DEFAULT_GSAE = "smollm2/gsae/L14"
SAVE_DTYPES = ("float32", "float16", "bfloat16")

ORDER = ("saelens", "sparsify", "dictionary_learning", "gemma_scope", "gemma_scope_2", "circuit_tracer")


@dataclass(frozen=True)
class Format:
    """One file format gradsae reads."""

    name: str
    files: str
    """What identifies it on disk, for messages: ``cfg.json+sae.safetensors (sparsify)``."""
    find: Callable[[Path], Path | None]
    """A file or folder -> the path ``load`` takes when it holds this format, else None (or one line, when the
    path is this format's but cannot be read as one SAE)."""
    load: Callable[[Path], "SAE"]


REGISTRY: dict[str, Format] = {}
PREFIXES: dict[str, Callable[[str, str], "SAE"]] = {}
"""Name prefixes such as ``saelens:`` -> a loader (the rest of the name, device) -> SAE."""
SAVERS: dict[str, Callable[..., Path]] = {}
"""Formats gradsae writes: name -> (sae, path, dtype=None) -> the folder written (``SAE.save`` uses ``saelens``)."""


def register(fmt: Format) -> Format:
    """Add a format (a name registered twice with different fields is refused)."""
    old = REGISTRY.get(fmt.name)
    if old is not None and old != fmt:
        raise ValueError(f"SAE format {fmt.name!r} is registered already")
    REGISTRY[fmt.name] = fmt
    return fmt


def register_prefix(prefix: str, loader: Callable[[str, str], "SAE"]) -> None:
    PREFIXES[prefix] = loader


def register_saver(name: str, saver: Callable[..., Path]) -> None:
    SAVERS[name] = saver


def detection_order() -> list[Format]:
    """The registered formats in the order ``load_sae`` tries them."""
    first = [REGISTRY[n] for n in ORDER if n in REGISTRY]
    return first + [f for n, f in REGISTRY.items() if n not in ORDER]


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_sae(path_or_name: str | Path, device: str = "cpu", dtype: str | None = None) -> "SAE":
    """Load an SAE from a folder/file of any supported format, a bundled name, or ``saelens:release/id``."""
    from ..model import resolve_device

    device = resolve_device(device)  # "auto" -> cuda/cpu; an unknown device is one line, not a torch error
    spec = str(path_or_name)
    prefix = next((p for p in PREFIXES if spec.startswith(p)), None)
    if prefix is not None:
        sae = PREFIXES[prefix](spec[len(prefix) :], device)
    else:
        sae = load_path(resolve_path(spec))
    _check_finite(sae, spec)
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


def resolve_path(spec: str) -> Path:
    """A path that exists, or the folder of a bundled name; one line naming the bundled SAEs otherwise."""
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


def detect(path: Path) -> tuple[Format, Path] | None:
    """The first format (in detection order) that finds an SAE at ``path``, and the path its reader takes."""
    for fmt in detection_order():
        found = fmt.find(path)
        if found is not None:
            return fmt, found
    return None


def load_path(path: Path) -> "SAE":
    """The SAE at an existing file or folder, read by the format that detects it."""
    hit = detect(path)
    if hit is None and path.is_file() and path.suffix == ".safetensors":
        path = path.parent  # a weights file no format reads alone stands for its folder (its config beside it)
        hit = detect(path)
    if hit is not None:
        fmt, found = hit
        return fmt.load(found)
    expected = "; ".join(f.files for f in detection_order())
    if path.is_file():
        raise GradsaeError(f"{path} is not a known SAE file: give a folder, or a file of one of: {expected}")
    subs = sorted(p.name for p in path.iterdir() if p.is_dir() and _holds_sae(p))
    if subs:
        raise GradsaeError(
            f"{path} holds several SAEs ({', '.join(subs[:6])}{', ...' if len(subs) > 6 else ''}): "
            "point at one of these sub-folders"
        )
    names = sorted(p.name for p in path.iterdir())
    raise GradsaeError(
        f"{path} is not a known SAE folder (found: {', '.join(names[:8]) or 'nothing'}): expected {expected}"
    )


def _holds_sae(folder: Path) -> bool:
    try:
        return detect(folder) is not None
    except GradsaeError:  # a format's files, but not one SAE (e.g. several checkpoints): still an SAE folder
        return True


def _check_finite(sae: "SAE", spec: str) -> None:
    for name, p in sae.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            bad = (~torch.isfinite(p)).sum().item()
            raise GradsaeError(f"SAE {spec!r} has {bad} NaN/Inf values in {name}: the file is corrupt, re-export it")
