"""Device memory a command needs, estimated before it starts; refusal in one line, or ``--batch-size auto``.

A command's peak is its weights (model and SAEs: already on the device when the estimate is made, so the free
memory measured then excludes them) plus what its passes allocate. A pass is one of three kinds:

- ``grad``: a teacher-forced forward and one backward through the SAE(s) (influence, the dashboard's influence
  rows, the experiment's scoring);
- ``forward``: a forward without gradients (exact ablation batches, the dashboard's activation rows, eval);
- ``generate``: greedy decoding with the KV cache (answers, perturbation and steering grids).

The memory of a pass is linear in a few features of its shape (``features``): block activations kept for the
backward (B·T·(D+F) per block), attention scores (B·H·T² per block, only where the model runs eager attention:
SDPA and flash kernels never materialise them), SAE codes (B·T·C), logits (B·M·V) and the KV cache
(B·(T+n)·2·H_kv·d_head per block: exact, not fitted). The coefficients of the other features are fitted per kind
by ``benchmarks/bench_real_widths.py`` on randomly initialised models at the real widths of Gemma-2-9B and
Llama-3-8B (131,072- and 65,536-latent SAEs, few blocks) and of SmolLM2-135M with all its 30 blocks and prompts up
to 1,024 tokens (what tells the per-block terms apart), and read from ``memory_fit.json`` beside this file; the same
benchmark reports how close the estimate comes to each command's measured peak.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .errors import GradsaeError

KINDS = ("grad", "forward", "generate")
FEATURES = ("fixed", "act", "attn", "codes", "sparse_codes", "logits")
FIT_FILE = Path(__file__).with_name("memory_fit.json")
HEADROOM = 0.9  # plan for this fraction of the free memory (allocator fragmentation, other processes)
GiB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: widths D (residual) and F (MLP), vocabulary V, blocks L, attention
    heads H (query) and H_kv (key/value) of width d_head, the bytes per element of its dtype, and whether its
    attention is eager (keeps the [B, H, T, T] scores) rather than SDPA or flash."""

    D: int
    F: int
    V: int
    blocks: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    eager_attention: bool = True  # unknown implementations are planned for as eager (the larger)

    @classmethod
    def of(cls, model) -> "ModelShape":
        from .hooks import decoder_layers, hidden_size, text_config, unembedding

        cfg = text_config(model)
        D = hidden_size(model)
        F = _first(cfg, ("intermediate_size", "n_inner", "ffn_dim"), 4 * D)
        heads = _first(cfg, ("num_attention_heads", "n_head", "num_heads"), 1)
        kv = _first(cfg, ("num_key_value_heads",), heads)
        head_dim = _first(cfg, ("head_dim",), D // max(1, heads))
        param = next(model.parameters())
        return cls(
            D=D,
            F=F,
            V=int(unembedding(model).shape[0]),
            blocks=len(decoder_layers(model)),
            heads=heads,
            kv_heads=kv,
            head_dim=head_dim,
            dtype_bytes=param.element_size(),
            eager_attention=attention_implementation(model) not in FUSED_ATTENTION,
        )


FUSED_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def attention_implementation(model) -> str:
    """The attention kernel transformers chose for ``model`` (``"eager"``, ``"sdpa"``, ...; ``""`` unknown)."""
    from .hooks import text_config

    for cfg in (model.config, text_config(model)):
        impl = getattr(cfg, "_attn_implementation", None)
        if isinstance(impl, str):
            return impl
    return ""


def _first(cfg, keys: Sequence[str], default: int) -> int:
    for key in keys:
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return int(default)


@dataclass(frozen=True)
class Pass:
    """One pass of a command: ``rows`` B of ``tokens`` T (the prompt, for ``generate``), logits materialised
    at ``logits`` M positions per row, activations kept for ``grad_blocks`` blocks (those above the lowest
    spliced SAE), ``latents`` C summed over the spliced SAEs (``latent_bytes`` each), ``new_tokens`` n
    generated (``generate``)."""

    kind: str
    rows: int
    tokens: int
    logits: int
    latents: int
    latent_bytes: int = 4
    grad_blocks: int = 0
    new_tokens: int = 0
    sparse: bool = False  # TopK-family SAEs (fewer [B, T, C] temporaries than a dense encoder)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown pass kind {self.kind!r}: one of {KINDS}")


def features(p: Pass, m: ModelShape) -> dict[str, float]:
    """The fitted features of pass ``p`` on model ``m``, in bytes-like units (their coefficients are copies)."""
    B, T, s = p.rows, p.tokens, m.dtype_bytes
    kept = p.grad_blocks if p.kind == "grad" else 1  # without a backward one block's activations live at a time
    codes = float(B * T * p.latents * p.latent_bytes)
    return {
        "fixed": 1.0,
        "act": float(B * T * (m.D + m.F) * kept * s),
        "attn": float(B * m.heads * T * T * kept * s) if m.eager_attention else 0.0,
        "codes": 0.0 if p.sparse else codes,
        "sparse_codes": codes if p.sparse else 0.0,
        "logits": float(B * p.logits * m.V * 4),
    }


def kv_bytes(p: Pass, m: ModelShape) -> int:
    """The KV cache of a ``generate`` pass: every block's keys and values for the prompt and the new tokens."""
    if p.kind != "generate":
        return 0
    return p.rows * (p.tokens + p.new_tokens) * m.blocks * 2 * m.kv_heads * m.head_dim * m.dtype_bytes


@functools.lru_cache(maxsize=4)
def read_fit(path: str = str(FIT_FILE)) -> dict[str, dict[str, float]]:
    """The fitted coefficients per pass kind (``memory_fit.json``, written by benchmarks/bench_real_widths.py)."""
    from . import schema

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise GradsaeError(f"{p}: cannot read the memory coefficients ({e}): reinstall gradsae") from None
    coef = schema.Required({f: schema.NUM for f in FEATURES})
    schema.check(data, schema.Required({"coefficients": schema.Required(dict.fromkeys(KINDS, coef))}), str(p))
    return {k: {f: float(data["coefficients"][k][f]) for f in FEATURES} for k in KINDS}


def estimate(p: Pass, m: ModelShape, fit: dict | None = None) -> int:
    """Bytes pass ``p`` allocates on top of the weights (the fitted features plus the exact KV cache)."""
    coef = (fit or read_fit())[p.kind]
    x = features(p, m)
    return int(sum(coef[f] * x[f] for f in FEATURES)) + kv_bytes(p, m)


def peak(passes: Sequence[Pass], m: ModelShape, fit: dict | None = None) -> int:
    """A command's dynamic peak: its passes run one after another, so the largest of them."""
    return max((estimate(p, m, fit) for p in passes), default=0)


def size(n: float) -> str:
    """Bytes as a person reads them: GiB with one decimal, or MiB below 1 GiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def free_bytes(device: str) -> int:
    """Memory free now on ``device`` (CUDA: the driver's free memory; CPU: the kernel's MemAvailable)."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


_limit_gb = 0.0  # --memory-limit-gb of the running command (options.start sets it)


def set_limit(gb: float) -> None:
    """Plan for ``gb`` GiB instead of the free memory (``--memory-limit-gb``; 0: the free memory)."""
    global _limit_gb
    _limit_gb = float(gb)


def available(device: str) -> int:
    """The bytes a command may plan for: ``--memory-limit-gb`` when given, else ``HEADROOM`` of the free memory
    (measured after the weights are loaded, so they are excluded)."""
    return int(_limit_gb * GiB) if _limit_gb > 0 else int(HEADROOM * free_bytes(device))


def plan_rows(
    what: str,
    passes_for: Callable[[int], Sequence[Pass]],
    model: ModelShape,
    *,
    requested: int,
    most: int,
    device: str,
    flag: str = "--batch-size",
    fit: dict | None = None,
) -> int:
    """The rows per batch a command runs with: ``requested`` when its estimated peak fits the memory available,
    the most rows (up to ``most``) that fit when ``requested`` is 0 (``--batch-size auto``), else one line with
    the numbers and the batch size that would fit.

    ``passes_for(b)``: the command's passes at ``b`` rows per batch."""
    have = available(device)
    need = functools.lru_cache(maxsize=None)(lambda b: peak(passes_for(b), model, fit))
    most = max(1, most)
    fits = 0
    lo, hi = 1, most  # the largest b in [1, most] with need(b) <= have (need grows with b)
    while lo <= hi:
        mid = (lo + hi) // 2
        if need(mid) <= have:
            fits, lo = mid, mid + 1
        else:
            hi = mid - 1
    where = f"{size(have)} available on {device}"
    if requested == 0:
        if fits == 0:
            raise GradsaeError(
                f"{what} needs about {size(need(1))} (estimated) even at one row per batch but {where}: "
                "use a shorter input, fewer or smaller SAEs, or a larger device"
            )
        return fits
    if need(min(requested, most)) <= have:  # a batch is never larger than the work there is
        return requested
    fix = (
        f"use {flag} {fits} (or {flag} auto)"
        if fits
        else "use a shorter input, fewer or smaller SAEs, or a larger device"
    )
    raise GradsaeError(
        f"{what} with {flag} {requested} needs about {size(need(requested))} (estimated) but {where}: {fix}"
    )


def check(what: str, need: int, device: str, fix: str) -> None:
    """One line when a command whose rows are fixed (a perturbation grid, a training grid) needs ``need`` bytes
    more than are available."""
    have = available(device)
    if need > have:
        raise GradsaeError(
            f"{what} needs about {size(need)} (estimated) but {size(have)} are available on {device}: {fix}"
        )


@dataclass(frozen=True)
class Latents:
    """What the estimate needs of the spliced SAEs: C summed over them, bytes per latent (the widest dtype), and
    whether all are TopK-family (sparse) encoders."""

    C: int
    bytes: int = 4
    sparse: bool = False


def sae_shape(saes) -> Latents:
    """The ``Latents`` of one SAE or a list."""
    saes = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    return Latents(
        sum(s.d_sae for s in saes),
        max(s.W_dec.element_size() for s in saes),
        all(s.arch.sparse for s in saes),
    )


def grad_blocks(model: ModelShape, layers: Sequence[int]) -> int:
    """Blocks whose activations a backward to the lowest spliced layer keeps (that block and those above)."""
    return max(1, model.blocks - min(layers)) if layers else model.blocks


def with_rows(p: Pass, rows: int) -> Pass:
    return replace(p, rows=rows)


# ---------------------------------------------------------------------------------------------
# Each command's passes (the commands and benchmarks/bench_real_widths.py build them here)
# ---------------------------------------------------------------------------------------------


def _lat(lat: Latents) -> dict:
    return dict(latents=lat.C, latent_bytes=lat.bytes, sparse=lat.sparse)


def generation(lat: Latents, rows: int, prompt: int, new: int) -> Pass:
    """Greedy decoding of ``rows`` prompts of ``prompt`` tokens, ``new`` tokens each (KV cache; the prompt's
    last logits only)."""
    return Pass("generate", rows=rows, tokens=prompt, logits=1, new_tokens=new, **_lat(lat))


def scoring(m: ModelShape, lat: Latents, rows: int, tokens: int, outputs: int, layers: Sequence[int]) -> Pass:
    """GradSAE scores of ``rows`` teacher-forced examples of ``tokens`` tokens whose last ``outputs`` are
    scored: one forward and one backward down to the lowest spliced layer."""
    return Pass(
        "grad",
        rows=rows,
        tokens=tokens,
        logits=outputs + 1,
        grad_blocks=grad_blocks(m, layers),
        **_lat(lat),
    )


def exact_ablation(lat: Latents, rows: int, tokens: int, outputs: int) -> Pass:
    """One chunk of ``rows`` single-latent ablations of one example (forward only)."""
    return Pass("forward", rows=rows, tokens=tokens, logits=outputs + 1, **_lat(lat))


def dashboard(m: ModelShape, lat: Latents, rows: int, tokens: int, layer: int, influence: bool) -> list[Pass]:
    """A dashboard batch: latents read up to block ``layer`` (forward), and for influence rows the whole model
    with every position's next-token loss (grad)."""
    out = [Pass("forward", rows=rows, tokens=tokens, logits=0, **_lat(lat))]
    if influence:
        out.append(
            Pass(
                "grad",
                rows=rows,
                tokens=tokens,
                logits=tokens,
                grad_blocks=grad_blocks(m, [layer]),
                **_lat(lat),
            )
        )
    return out
