"""``TrainConfig`` (the one config of ``gradsae train``: CLI, saved config.json and docs), its checks, what a resumed
run must share with the run it continues (the fingerprint, the data's digest), and ``--init-from``."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import opt
from ..errors import GradsaeError
from ..io import dumps
from ..options import ModelOptions
from ..saes import architectures as arch_registry
from ..saes.sae import SAE
from .grid import SAESpec


DEFAULT_LAYER = 9  # the layer trained when --layers is not given (SmolLM2 has 30 blocks)
TRAIN_SITES = ("hook_resid_post", "hook_attn_out", "hook_mlp_out")  # where `gradsae train --site` reads


@dataclass(kw_only=True)
class TrainConfig(ModelOptions):
    """Train TopK / g-SAE / E2E SAEs (a grid of them from one model pass per step) straight from a corpus,
    or from a `gradsae cache` folder."""

    data: list[str] = opt(
        ["sample"],
        "corpus: .txt/.jsonl/.json files (optionally .gz) or folders, 'sample' "
        "(bundled text) or hf:NAME; comma-separated",
    )
    text_field: str = opt("text", "field holding the text in .jsonl files and HF datasets")
    cache: str = opt(
        "",
        "train from this `gradsae cache` folder instead of a corpus (TopK / g-SAE only); "
        "'default': the folder `gradsae cache` writes with its defaults",
    )
    layers: list[int] = opt(
        [], "blocks whose output the SAEs read, e.g. 6,14,22 (default: 9; from a cache: its first layer)", low=0
    )
    site: str = opt(
        "hook_resid_post",
        "where in each block the SAEs read and write: hook_resid_post (the block's output), hook_attn_out (the "
        "attention output) or hook_mlp_out (the MLP output); TransformerLens names, placed as hooks.site_point says",
        choices=TRAIN_SITES,
    )
    out: str = opt("", "results folder (default: <gradsae cache>/runs/<model or cache>-L<layers>-<architectures>)")
    architectures: list[str] = opt(
        ["topk", "gsae"],
        "comma-separated: topk, gsae, e2e, or any trainable architecture registered in gradsae.saes.architectures",
    )
    k: list[int] = opt([32], "active latents per token; several values train several SAEs", low=1)
    beta: list[float] = opt(
        [0.5],
        "g-SAE gradient weight(s) (default 0.5: best L_added of 0.5/1/2 on SmolLM2 "
        "layer 9, see docs/training.md); several values train several g-SAEs",
        low=0,
    )
    beta_mode: str = opt(
        "rms", "g-SAE: 'rms' (beta relative to a running RMS of |W_dec grad|) or 'raw' (paper)", choices=("rms", "raw")
    )
    d_sae: list[int] = opt([4096], "latents C; several values train several SAEs", low=1)
    seeds: list[int] = opt([0], "initialisation seeds; several values train several SAEs")
    e2e_recon_coef: float = opt(0.0, "E2E: weight of a normalised reconstruction term added to the KL loss", low=0)
    e2e_balance: bool = opt(
        False,
        "E2E: fix the reconstruction term's weight at the first step so that the term is --e2e-recon-coef times the "
        "KL term then (KL + MSE fine-tune, Karvonen 2025: with --init-from a TopK SAE and --e2e-recon-coef 1)",
    )
    context_length: int = opt(128, "tokens per row T (rows are packed from the corpus)")
    prepend_bos: bool = opt(True, "start every row with the BOS token")
    drop_first: int = opt(1, "first positions of each row the SAEs do not train on (attention sink)")
    batch_size: int = opt(
        8,
        "rows per step (global under torchrun); each SAE trains on batch_size x "
        "(context_length - drop_first) tokens per step",
    )
    batch_tokens: int = opt(1024, "tokens per step when training from a cache")
    shuffle_batches: int = opt(16, "shuffle buffer: tokens of this many steps are pooled and permuted")
    max_tokens: int = opt(
        0,
        "stop after this many model tokens (rows x T); 0: --epochs passes over the corpus. A "
        "rerun may lengthen or shorten a run until its learning-rate decay begins",
    )
    epochs: float = opt(1.0, "passes over the corpus (or cache) when --max-tokens is 0")
    dtype: str = opt(
        "bfloat16",
        "model pass: bfloat16 (autocast; SAEs stay float32) or float32; bfloat16 left "
        "NMSE and L_added unchanged and ran 1.6x faster in benchmarks/bench_bf16.py",
        choices=("float32", "bfloat16"),
    )
    lr: float = opt(5e-4, "Adam learning rate")
    warmup_steps: int = opt(50, "linear learning-rate warm-up")
    decay_frac: float = opt(0.2, "linear decay to 0 over this final fraction of steps")
    auxk_coef: float = opt(1 / 32, "AuxK loss weight (0 disables AuxK)")
    auxk_k: int = opt(256, "latents the AuxK loss uses among the dead ones")
    dead_tokens: int = opt(
        200_000,
        "dead-latent rule 1: no activation in this many training tokens "
        "(rule 2, the g-SAE paper's: none in 5 consecutive batches, is also recorded)",
    )
    holdout_shards: int = opt(1, "cache source: last shards kept out of training (for `gradsae eval`)")
    grad_ema: float = opt(0.99, "EMA decay of the running RMS of |W_dec grad| (beta-mode rms)")
    decoder: str = opt(
        "sparse", "decoder: 'sparse' (embedding-bag over the K active rows) or 'dense'", choices=("sparse", "dense")
    )
    seed: int = opt(0, "seed of the initialisation, the shuffle buffer and the batch order")
    checkpoint_every: int = opt(200, "steps between checkpoints (taken at the next shuffle-buffer boundary)")
    log_every: int = opt(50, "steps between metric records in train_log.jsonl")
    max_steps: int = opt(0, "stop this invocation after about this many steps (0: run to the end); for tests")
    init_from: str = opt(
        "",
        "start every SAE of the grid from this trained SAE instead of a random initialisation (a fine-tune; any "
        "format gradsae reads, or a bundled name): same d_in, d_sae and layer; its own input scaling is kept",
    )
    snapshot_tokens: list[int] = opt(
        [],
        "also export every SAE to <out>/snapshots/<tokens>/ when the run passes "
        "these model-token counts (at the next checkpoint), e.g. 1000000,3000000: "
        "a curve over training tokens from one run",
    )

    def __post_init__(self):
        super().__post_init__()
        check_config(self)


# Fields that may differ between a run and its resume.
_RESUME_FREE = (
    "max_steps",
    "checkpoint_every",
    "log_every",
    "threads",
    "device",
    "out",
    "progress",
    "memory_limit_gb",
    "snapshot_tokens",
)


def check_config(cfg: TrainConfig) -> None:
    """One clear line for every value that cannot work (before anything is loaded)."""

    def bad(cond, msg):
        if cond:
            raise GradsaeError(msg)

    bad(not (cfg.lr > 0 and math.isfinite(cfg.lr)), f"--lr {cfg.lr} must be a positive number, e.g. 5e-4")
    bad(
        not (cfg.epochs > 0 and math.isfinite(cfg.epochs)),
        f"--epochs {cfg.epochs} trains nothing: give a positive number of passes (e.g. 1 or 0.5), or --max-tokens",
    )
    for name in ("batch_size", "batch_tokens", "checkpoint_every", "log_every", "shuffle_batches", "context_length"):
        bad(getattr(cfg, name) < 1, f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1")
    bad(
        any(n <= 0 for n in cfg.snapshot_tokens),
        f"--snapshot-tokens {','.join(map(str, cfg.snapshot_tokens))} must be positive token counts, e.g. 1000000",
    )
    late = [n for n in cfg.snapshot_tokens if cfg.max_tokens and n >= cfg.max_tokens]
    bad(
        bool(late),
        f"--snapshot-tokens {late[0] if late else ''} is not before --max-tokens {cfg.max_tokens}: the run ends there "
        "(its final SAEs are that point); give counts below it",
    )
    for name in ("max_tokens", "max_steps", "warmup_steps", "dead_tokens", "drop_first", "auxk_k"):
        bad(getattr(cfg, name) < 0, f"--{name.replace('_', '-')} {getattr(cfg, name)} must not be negative")
    bad(not 0 <= cfg.decay_frac < 1, f"--decay-frac {cfg.decay_frac} must be in [0, 1)")
    bad(not 0 <= cfg.grad_ema < 1, f"--grad-ema {cfg.grad_ema} must be in [0, 1)")
    bad(not (cfg.auxk_coef >= 0 and cfg.e2e_recon_coef >= 0), "--auxk-coef and --e2e-recon-coef must be >= 0")
    bad(
        cfg.e2e_balance and cfg.e2e_recon_coef <= 0,
        "--e2e-balance needs --e2e-recon-coef > 0: the ratio of the reconstruction term to the KL term, e.g. 1",
    )
    bad(
        cfg.e2e_balance and "e2e" not in cfg.architectures,
        "--e2e-balance weighs the E2E loss's terms: add e2e to --architectures",
    )
    bad(
        cfg.drop_first >= cfg.context_length - 1,
        f"--drop-first {cfg.drop_first} leaves no tokens of a {cfg.context_length}-token row: lower it",
    )
    bad(cfg.dtype not in ("float32", "bfloat16"), f"unknown --dtype {cfg.dtype!r}: use float32 or bfloat16")
    bad(cfg.device == "mps", "--device mps: training needs CUDA or the CPU (use --device auto)")
    bad(any(d < 1 for d in cfg.d_sae) or any(k < 1 for k in cfg.k), "--d-sae and --k must be at least 1")
    for a in cfg.architectures:
        bad(
            a not in arch_registry.trainable(),
            f"cannot train architecture {a!r}: use {', '.join(arch_registry.trainable())}",
        )
    kl = [a for a in cfg.architectures if arch_registry.get(a).training.loss == "kl"]
    bad(
        cfg.cache and kl,
        f"{', '.join(kl)} SAEs need the model's output, which a cache does not hold: train them from a corpus (--data)",
    )
    bad(cfg.site not in TRAIN_SITES, f"--site {cfg.site!r}: use one of {', '.join(TRAIN_SITES)}")
    bad(
        cfg.site != "hook_resid_post" and bool(kl),
        f"{', '.join(kl)} SAEs are trained at the residual stream (their loss runs the blocks above it): "
        "drop --site, or train topk / gsae there",
    )
    bad(
        cfg.site != "hook_resid_post" and bool(cfg.cache),
        f"a cache holds the residual stream: train at --site {cfg.site} from a corpus (--data)",
    )


def needs(cfg: TrainConfig) -> tuple[bool, bool]:
    """(some SAE of the grid needs ∇ₓL, some needs the model's output) — what the model pass must give."""
    trains = [arch_registry.get(a).training for a in cfg.architectures]
    return any(t.needs_grad for t in trains), any(t.loss == "kl" for t in trains)


def fingerprint(cfg: TrainConfig) -> dict:
    import json

    fp = json.loads(dumps({k: v for k, v in asdict(cfg).items() if k not in _RESUME_FREE}))
    if fp.get("site") == "hook_resid_post":  # runs from before --site existed resume as they were
        del fp["site"]
    if fp.get("e2e_balance") is False:  # ... and from before --e2e-balance
        del fp["e2e_balance"]
    if cfg.init_from:  # the starting SAE's content, not only its path: a changed file is another run
        fp["init_from_sha256"] = init_sae(cfg.init_from)[1]
    if not cfg.cache:  # the corpus's content, not only its path (a cache checks its own)
        fp["data_sha256"] = _data_digest(tuple(cfg.data), _stamp(cfg.data))
    return fp


def _stamp(paths) -> tuple:
    """(size, mtime) of every local file below ``paths``: part of the memo keys, so a file changed between two
    runs in one process is read again."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        out += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _data_digest(sources: tuple[str, ...], stamp: tuple) -> str:
    from ..corpus import content_digest

    return content_digest(list(sources))


def init_sae(spec: str) -> tuple[SAE, str]:
    """The --init-from SAE (float32, CPU) and the sha256 of its tensors."""
    return _load_init(spec, _stamp([spec]))


@functools.lru_cache(maxsize=4)
def _load_init(spec: str, stamp: tuple) -> tuple[SAE, str]:
    from ..saes import load_sae

    sae = load_sae(spec, device="cpu", dtype="float32")
    return sae, sae.digest()


def check_init_from(
    init: SAE, spec_name: str, specs: list[SAESpec], d_model: int, site: str = "hook_resid_post"
) -> None:
    """One line for an --init-from SAE that cannot start this grid."""
    from ..hooks import site_of

    own = site_of(init.cfg.hook_name)
    if own is not None and own[1] != site:
        raise GradsaeError(
            f"--init-from {spec_name} reads {own[1]}, but the grid trains at {site}: use --site {own[1]}"
        )
    if not init.arch.sparse:
        raise GradsaeError(
            f"--init-from {spec_name} is a {init.cfg.architecture} SAE: a fine-tune starts from a TopK-family SAE "
            "(topk, gsae, e2e)"
        )
    if init.d_in != d_model:
        raise GradsaeError(f"--init-from {spec_name} reads d_in {init.d_in}, but the model's hidden size is {d_model}")
    widths = sorted({s.d_sae for s in specs} - {init.d_sae})
    if widths:
        raise GradsaeError(
            f"--init-from {spec_name} has d_sae {init.d_sae}, but the grid trains d_sae {widths[0]}: "
            f"use --d-sae {init.d_sae}"
        )
    layers = sorted({s.layer for s in specs} - {init.layer}) if init.layer is not None else []
    if layers:
        raise GradsaeError(
            f"--init-from {spec_name} reads layer {init.layer}, but the grid trains layer {layers[0]}: "
            f"use --layers {init.layer}"
        )


def init_weights(init: SAE, s: float) -> dict[str, torch.Tensor]:
    """The weights of ``init`` for a trainer that feeds it s·x: the init SAE computes on s0·x (s0 its own
    scaling factor, 1 without one), so with r = s0 / s the encoder gets r·W_enc, the decoder W_dec / r and
    b_dec / r (``fold_input_scaling``); then decoder rows are made unit norm (the trainer's invariant) and
    each latent's encoder column and bias scaled to keep x̂ — exact when all rows had one norm (TopK
    selection unchanged), as for SAEs gradsae trained."""
    from ..saes import fold_input_scaling

    r = (init.cfg.norm_scaling_factor or 1.0) / s
    W_enc, W_dec, b_dec = fold_input_scaling(init.W_enc.float(), init.W_dec.float(), init.b_dec.float(), r)
    n = W_dec.norm(dim=-1).clamp_min(1e-12)  # [C]
    out = {"W_enc": W_enc * n, "b_enc": init.b_enc.float() * n, "W_dec": W_dec / n[:, None], "b_dec": b_dec}
    if hasattr(init, "grad_scale"):
        out["grad_scale"] = init.grad_scale.float().clone()
    return out
