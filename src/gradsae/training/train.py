"""``gradsae train``: train a grid of TopK / g-SAE / E2E SAEs straight from a corpus (or from a cache).

    gradsae train                                               # SmolLM2 layer 9, bundled sample text
    gradsae train --data wiki/ --layers 6,14,22 --architectures topk,gsae,e2e --k 32 --beta 0.5 --max-tokens 20M
    gradsae train --cache DIR                                   # from a `gradsae cache` folder
    torchrun --nproc_per_node=4 -m gradsae train ...            # DDP: gloo on CPU, nccl on GPU

One model pass per step feeds every SAE of the grid (``grid.py``); where tokens come from and how they
are shuffled is ``stream.py``; the E2E loss is ``e2e.py``; checkpoints are ``state.py``. A rerun of the
same command after a kill (``kill -9`` included) resumes from the last checkpoint and ends with
bit-identical weights; ``train_log.jsonl`` is cut back to the checkpoint so no step is logged twice.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import GradsaeError
from ..distributed import Dist, all_reduce, average_grads, broadcast, global_mean, rank_world
from ..io import JsonlLog, atomic_write_text, dumps, output_lock, refuse_foreign, write_json
from .. import memory
from ..options import Runtime, start
from ..saes.sae import SAE, SAEConfig
from .grid import (
    SAESpec,
    build_grid,
    estimate_bytes,
    geometric_median,
    init_seed,
    local_loss,
    lr_at,
    remove_parallel_grad,
)
from .config import (
    DEFAULT_LAYER,
    TrainConfig,
    check_init_from,
    fingerprint,
    init_sae,
    needs,
    init_weights,
)
from .state import DeadLatents, TrainState

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s).rstrip("/").split("/")[-1]).lower()


def resolve_out(cfg: TrainConfig, layers: list[int]) -> Path:
    if cfg.out.strip():
        return Path(cfg.out).expanduser()
    if cfg.out:
        raise GradsaeError("--out is blank: give a folder name or leave it out")
    from ..model import cache_dir

    src = _slug(cfg.cache) if cfg.cache else _slug(cfg.model)
    return cache_dir() / "runs" / f"{src}-L{'-'.join(map(str, layers))}-{'-'.join(cfg.architectures)}"


@dataclass
class _Setup:
    source: object
    layers: list[int]
    D: int
    total: int
    model: object
    meta: dict


def _setup_cache(cfg: TrainConfig, device: str, rank: int, world: int) -> _Setup:
    from .cache import ActivationCache, default_cache
    from .stream import CacheSource

    cache = ActivationCache(default_cache() if cfg.cache == "default" else cfg.cache)
    layers = cfg.layers or cache.layers[:1]
    need_grad, _ = needs(cfg)
    if need_grad and not cache.has_grads:
        raise GradsaeError(f"g-SAE training needs gradients but the cache {cache.path} has none: re-cache with --grad")
    n_train = len(cache.shards) - cfg.holdout_shards
    if n_train < 1:
        raise GradsaeError(
            f"the cache has {len(cache.shards)} shard(s) and --holdout-shards is "
            f"{cfg.holdout_shards}: cache more data or lower --holdout-shards"
        )
    X, G = {}, {}
    for l in layers:
        X[l], g = cache.load(l, list(range(n_train)), grads=need_grad)
        if g is not None:
            G[l] = g
    src = CacheSource(X, G, cfg.batch_tokens, cfg.seed, rank, world, device)
    total = int(src.steps_per_epoch * cfg.epochs) if not cfg.max_tokens else cfg.max_tokens // cfg.batch_tokens
    m = cache.manifest
    meta = {
        "model_name": m["model"],
        "context_size": m["context_length"],
        "prepend_bos": m["prepend_bos"],
        "dataset_path": ",".join(m["data"]),
        "source": {"cache": str(cache.path), "train_tokens": src.N, "train_shards": list(range(n_train))},
    }
    return _Setup(src, layers, cache.d_model, total, None, meta)


def _setup_corpus(cfg: TrainConfig, device: str, rank: int, world: int) -> _Setup:
    from ..hooks import hidden_size, n_layers, resolve_layer
    from ..model import check_context_length, load_model, model_name
    from .stream import CorpusSource, RowReader, count_rows

    model, tok = load_model(cfg.model, device=device, dtype="float32")
    check_context_length(model, cfg.context_length)
    if cfg.layers:
        layers = sorted({resolve_layer(model, l) for l in cfg.layers})
    elif n_layers(model) > DEFAULT_LAYER:
        layers = [DEFAULT_LAYER]
    else:
        raise GradsaeError(f"this model has {n_layers(model)} blocks: choose the SAE layer(s) with --layers")
    reader = RowReader(cfg.data, cfg.text_field, tok, cfg.context_length, cfg.prepend_bos)
    need_grad, need_output = needs(cfg)
    grad_layers = sorted(layers) if need_grad else []
    seq_layers = layers if need_output else []
    src = CorpusSource(
        model,
        reader,
        layers,
        grad_layers,
        seq_layers,
        cfg.batch_size,
        cfg.shuffle_batches,
        cfg.drop_first,
        cfg.seed,
        rank,
        world,
        device,
        cfg.dtype,
        cfg.site,
    )
    if cfg.max_tokens:
        total = cfg.max_tokens // src.tokens_per_step
        if total < 1:
            raise GradsaeError(
                f"--max-tokens {cfg.max_tokens} is less than one step of {src.tokens_per_step} "
                "tokens (--batch-size x --context-length): raise it"
            )
    else:
        rows = count_rows(cfg.data, cfg.text_field, tok, cfg.context_length, cfg.prepend_bos)
        total = int(rows * cfg.epochs) // cfg.batch_size
        if total < 1:
            raise GradsaeError(
                f"the corpus gives {rows} rows of {cfg.context_length} tokens, less than one step "
                f"of --batch-size {cfg.batch_size}: lower --batch-size or use more data"
            )
    meta = {
        "model_name": model_name(model),
        "context_size": cfg.context_length,
        "prepend_bos": cfg.prepend_bos,
        "dataset_path": ",".join(cfg.data),
        "source": {"data": list(cfg.data)},
    }
    return _Setup(src, layers, hidden_size(model), total, model, meta)


def run(cfg: TrainConfig) -> Path:
    """Train the grid; returns the results folder (one SAELens folder per SAE + logs + checkpoint)."""
    if cfg.out.strip():  # before the model loads: a wrong --out is one line at once
        _refuse_foreign(Path(cfg.out).expanduser())
    rt = start(cfg, "train")
    # a named --out is locked before the model loads (rank 0): a second writer is refused at once
    early = bool(cfg.out.strip()) and int(os.environ.get("RANK", "0")) == 0
    with output_lock(Path(cfg.out).expanduser()) if early else contextlib.nullcontext():
        # the process group (torchrun) is destroyed on the way out: a live gloo group at exit aborts the process
        with Dist(rt.device):
            return _run(cfg, rt, locked=early)


def _refuse_foreign(out: Path) -> None:
    ours = {"config.json": lambda d: isinstance(d, dict) and "saes" in d and "world_size" in d}
    refuse_foreign(out, ours, "gradsae train")


def _run(cfg: TrainConfig, rt: Runtime, locked: bool = False) -> Path:
    device = rt.device
    rank, world = rank_world()
    setup = (_setup_cache if cfg.cache else _setup_corpus)(cfg, device, rank, world)
    specs = build_grid(setup.layers, cfg.architectures, cfg.k, cfg.beta, cfg.d_sae, cfg.seeds)
    if cfg.init_from:
        check_init_from(init_sae(cfg.init_from)[0], cfg.init_from, specs, setup.D, cfg.site)
    src = setup.source
    tokens_local = src.sae_tokens_per_step // world
    V = 0 if setup.model is None else setup.model.get_output_embeddings().weight.shape[0]
    n_e2e = sum(s.arch.training.loss == "kl" for s in specs)
    # the model is already loaded, so the free memory measured now excludes it
    need = estimate_bytes(
        specs,
        setup.D,
        tokens_local,
        tokens_local * src.fill_steps,
        len({s.layer for s in specs if s.needs_grad}),
        len(setup.layers),
        (cfg.batch_size // world) * cfg.context_length * V if n_e2e else 0,
        host=not device.startswith("cuda"),
    )
    memory.check(
        f"the grid of {len(specs)} SAE(s)",
        need,
        device,
        "train fewer SAEs at once (--k/--beta/--d-sae/--seeds/--layers), lower --d-sae, --batch-size or "
        "--shuffle-batches",
    )
    out = resolve_out(cfg, setup.layers)
    lock = output_lock(out) if rank == 0 and not locked else contextlib.nullcontext()
    with lock:
        if rank == 0:
            from .cache import clean_temp

            _refuse_foreign(out)
            clean_temp(out)
        return _train(cfg, setup, specs, out, device, rank, world, rt)


def _new_sae(cfg: TrainConfig, spec: SAESpec, D: int, meta: dict, device: str) -> SAE:
    from ..hooks import hook_name_for

    scfg = SAEConfig(
        d_in=D,
        d_sae=spec.d_sae,
        architecture=spec.architecture,
        k=spec.k,
        beta=spec.beta,
        beta_mode=cfg.beta_mode,
        hook_name=hook_name_for(spec.layer, cfg.site),
        model_name=meta["model_name"],
        context_size=meta["context_size"],
        prepend_bos=meta["prepend_bos"],
        dataset_path=meta["dataset_path"],
    )
    return SAE.init_random(scfg, seed=init_seed(cfg.seed, spec)).to(device).train()


def _train(
    cfg: TrainConfig, setup: _Setup, specs: list[SAESpec], out: Path, device: str, rank: int, world: int, rt: Runtime
) -> Path:
    from tqdm import tqdm

    src, total, M = setup.source, setup.total, setup.source.fill_steps
    t0 = time.time()  # the throughput counts every model pass of this invocation, the first fill's included
    saes = [_new_sae(cfg, s, setup.D, setup.meta, device) for s in specs]
    broadcast([p for s in saes for p in s.parameters()])
    opts = [torch.optim.Adam(s.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=6.25e-10) for s in saes]
    ckpt = out / "checkpoint.safetensors"
    first = None
    if ckpt.exists():
        state = TrainState.load(ckpt, saes, opts)
        fp = fingerprint(cfg)
        # a key the saved run does not have was added by a later gradsae: not a difference of this run
        changed = sorted(k for k in state.config.keys() & fp.keys() if state.config[k] != fp[k])
        changed += sorted(k for k in state.config.keys() - fp.keys())
        if changed:
            if not _can_change_length(changed, state, cfg, src.tokens_per_step, total):
                raise GradsaeError(
                    f"{out} holds a run with a different config ({', '.join(changed)}): "
                    "use another --out or delete that folder"
                )
            if rank == 0 and cfg.progress:
                print(
                    f"train: --max-tokens {state.config['max_tokens']} -> {cfg.max_tokens} at step {state.step} "
                    "(before the learning-rate decay: the same weights as a run started with the new length)"
                )
            state.config = fingerprint(cfg)
        src.restore(state.reader, state.reader_pending)
        if rank == 0 and cfg.progress:
            print(f"train: resuming from step {state.step} of {total}")
    else:
        state = TrainState(
            grad_rms=[0.0] * len(specs),
            grad_ema_n=[0] * len(specs),
            dead=[DeadLatents.fresh(s.d_sae) for s in specs],
            config=fingerprint(cfg),
        )
        first = src.fill(0, min(M, total))
        for layer in setup.layers:  # scalar s with E||s x||^2 = D, and b_dec at the median of s x
            sample = src.sample(first, layer)
            mean_norm = float(global_mean(sample.norm(dim=-1).mean().to(device)))
            state.norm[str(layer)] = math.sqrt(setup.D) / mean_norm
            if cfg.init_from:  # a fine-tune: every SAE starts as the given one, in this run's scaling
                init = init_weights(init_sae(cfg.init_from)[0], state.norm[str(layer)])
                for sae, spec in zip(saes, specs):
                    if spec.layer == layer:
                        with torch.no_grad():
                            for name, t in init.items():
                                if hasattr(sae, name):
                                    getattr(sae, name).copy_(t.to(device))
                continue
            b_dec0 = geometric_median(sample * state.norm[str(layer)]).to(device)
            broadcast([b_dec0])
            for sae, spec in zip(saes, specs):
                if spec.layer == layer:
                    with torch.no_grad():
                        sae.b_dec.copy_(b_dec0)
    if rank == 0:
        write_json(
            out / "config.json",
            {
                **asdict(cfg),
                "layers": setup.layers,
                "steps": total,
                "world_size": world,
                "source": setup.meta["source"],
                "saes": [asdict(s) for s in specs],
                "norm_scaling_factor": state.norm,
                "runtime": rt.as_config(),
            },
        )
        _truncate_log(out / "train_log.jsonl", state.step)
    logf = JsonlLog(out / "train_log.jsonl") if rank == 0 else None
    rt.announce("train")
    bar = tqdm(
        total=total * src.tokens_per_step,
        initial=state.step * src.tokens_per_step,
        unit="tok",
        unit_scale=True,
        desc="train",
        disable=rank != 0 or not cfg.progress,
        dynamic_ncols=True,
        mininterval=2,
    )
    tok0, run_steps, last_ckpt = state.tokens, 0, state.step
    fill_idx = state.step // M
    while state.step < total:
        n = min(M, total - state.step)
        batch = first if first is not None else src.fill(fill_idx, n)
        first = None
        for data in batch:
            stats, lr = _step(cfg, saes, specs, opts, state, data, setup.model, total)
            state.step += 1
            state.tokens += src.tokens_per_step
            state.sae_tokens += src.sae_tokens_per_step
            for j, st in enumerate(stats):
                state.dead[j].update(all_reduce(st.fired, mean=False), state.sae_tokens)
            run_steps += 1
            bar.update(src.tokens_per_step)
            if rank == 0 and (state.step % cfg.log_every == 0 or state.step == total):
                logf.append(
                    _log_record(cfg, specs, state, stats, lr, (state.tokens - tok0) / max(1e-9, time.time() - t0))
                )
        fill_idx += 1
        stop = cfg.max_steps and run_steps >= cfg.max_steps and state.step < total
        if state.step - last_ckpt >= cfg.checkpoint_every or state.step == total or stop:
            state.reader, state.reader_pending = src.state()
            if rank == 0:
                # snapshots first: a kill between the two leaves the previous checkpoint, so the rerun trains
                # to this same step and exports these same weights
                _snapshot(cfg, saes, specs, state, setup.meta, out, total)
                state.save(ckpt, saes, opts)
            last_ckpt = state.step
        if stop:
            break
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0 and state.step >= total:
        for j, (sae, spec) in enumerate(zip(saes, specs)):
            _finalise(sae, spec, state, j, cfg, setup.meta).save(out / spec.name)
        dt = time.time() - t0
        if cfg.progress:
            print(
                f"train: {len(saes)} SAE(s), {state.tokens} tokens in {out} "
                f"({(state.tokens - tok0) / max(dt, 1e-9):.0f} tokens/s this invocation)"
            )
    if world > 1:
        torch.distributed.barrier()
    return out


def _balance(cfg: TrainConfig, state: TrainState, j: int, n: int):
    """``e2e_loss``'s ``balance`` for SAE j: at its first step the weight that makes the reconstruction term
    ``--e2e-recon-coef`` times the KL term (means over every rank), kept in the state (a resume reuses it)."""

    def weight(kl: torch.Tensor, nmse: torch.Tensor) -> float:
        if len(state.e2e_coef) != n:
            state.e2e_coef = [0.0] * n
        if state.e2e_coef[j] == 0.0:
            kl_, nmse_ = float(global_mean(kl)), float(global_mean(nmse))
            state.e2e_coef[j] = cfg.e2e_recon_coef * kl_ / nmse_ if nmse_ > 0 else cfg.e2e_recon_coef
        return state.e2e_coef[j]

    return weight


def _step(cfg: TrainConfig, saes, specs, opts, state: TrainState, data, model, total: int):
    """One optimisation step of every SAE on ``data`` (a ``stream.StepData``). -> (stats per SAE, lr)."""
    from .e2e import clean_logprobs, e2e_loss

    lr = lr_at(state.step, total, cfg.lr, cfg.warmup_steps, cfg.decay_frac)
    xs = {l: t.x * state.norm[str(l)] for l, t in data.tokens.items()}
    logp_clean: dict[int, torch.Tensor] = {}
    stats = []
    for j, (sae, spec, opt_) in enumerate(zip(saes, specs, opts)):
        opt_.zero_grad(set_to_none=True)
        dead = state.dead[j].dead_by_tokens(state.sae_tokens, cfg.dead_tokens).to(sae.W_dec.device)
        if spec.arch.training.loss == "kl":
            l = spec.layer
            if l not in logp_clean:
                logp_clean[l] = clean_logprobs(model, l, data.ids, data.seq[l], cfg.drop_first, cfg.dtype)
            loss, st = e2e_loss(
                model,
                sae,
                spec,
                data.ids,
                data.seq[l],
                state.norm[str(l)],
                logp_clean[l],
                cfg.drop_first,
                cfg.e2e_recon_coef,
                dead,
                cfg.auxk_coef,
                cfg.auxk_k,
                cfg.dtype,
                global_mean,
                balance=_balance(cfg, state, j, len(saes)) if cfg.e2e_balance else None,
            )
        else:
            g = data.tokens[spec.layer].g if spec.needs_grad else None
            scale = 1.0
            if spec.needs_grad and cfg.beta_mode == "rms":
                if state.grad_ema_n[j] == 0:  # first step: initialise the RMS from this batch before selecting
                    with torch.no_grad():
                        state.grad_rms[j] = float(global_mean((g @ sae.W_dec.T).pow(2).mean()))
                    state.grad_ema_n[j] = 1
                scale = math.sqrt(state.grad_rms[j]) if state.grad_rms[j] > 0 else 1.0
            loss, st = local_loss(
                sae, spec, xs[spec.layer], g, dead, scale, cfg.auxk_coef, cfg.auxk_k, cfg.decoder, global_mean
            )
        loss.backward()  # per SAE: its graph is freed before the next SAE's step
        average_grads(list(sae.parameters()))
        with torch.no_grad():
            sae.W_dec.grad = remove_parallel_grad(sae.W_dec, sae.W_dec.grad)
        for group in opt_.param_groups:
            group["lr"] = lr
        opt_.step()
        sae.set_decoder_norm_to_unit_norm()
        if st.glat_ms is not None:
            ms = float(global_mean(st.glat_ms))
            state.grad_rms[j] = cfg.grad_ema * state.grad_rms[j] + (1 - cfg.grad_ema) * ms
            state.grad_ema_n[j] += 1
        stats.append(st)
    return stats, lr


def _log_record(cfg, specs, state: TrainState, stats, lr: float, tokens_per_s: float) -> dict:
    rec = {"step": state.step, "tokens": state.tokens, "lr": lr, "tokens_per_s": tokens_per_s}
    for j, spec in enumerate(specs):
        st = stats[j]
        r = {
            "nmse": float(st.mse / st.x2),
            "auxk": float(st.aux),
            "l0": float(st.l0),
            "dead_frac": float(state.dead[j].dead_by_tokens(state.sae_tokens, cfg.dead_tokens).float().mean()),
            "dead_frac_5batches": float(state.dead[j].dead_by_batches(5).float().mean()),
            "grad_rms": math.sqrt(state.grad_rms[j]) if state.grad_rms[j] else None,
        }
        if st.kl is not None:
            r["kl"] = float(st.kl)
        rec[spec.name] = r
    return rec


def _truncate_log(path: Path, step: int) -> None:
    """Drop records of steps after the checkpoint (they will be run and logged again)."""
    if not path.exists():
        return
    recs = [r for r in JsonlLog(path).records()]
    keep = [r for r in recs if r.get("step", 0) <= step]
    if len(keep) != len(recs):
        atomic_write_text(path, "".join(dumps(r, indent=None) + "\n" for r in keep))


def _can_change_length(
    changed: list[str], state: TrainState, cfg: TrainConfig, tokens_per_step: int, total: int
) -> bool:
    """A resumed run may get another --max-tokens while neither schedule has begun its learning-rate decay:
    every step so far had the same learning rate under both lengths, so the result equals a run started
    with the new length."""
    if changed != ["max_tokens"] or not (state.config.get("max_tokens") and cfg.max_tokens):
        return False
    old_total = int(state.config["max_tokens"]) // tokens_per_step
    return state.step <= min(int(t * (1 - cfg.decay_frac)) for t in (old_total, total))


def _snapshot(cfg: TrainConfig, saes, specs, state: TrainState, meta: dict, out: Path, total: int) -> None:
    """Export every SAE to ``out/snapshots/<n>/`` for each ``--snapshot-tokens`` count n the run has passed
    and not exported yet (mid-schedule weights: the learning rate has not decayed)."""
    for n in sorted(cfg.snapshot_tokens):
        folder = out / "snapshots" / str(n)
        if state.tokens < n or state.step >= total or (folder / "done").exists():
            continue
        for j, (sae, spec) in enumerate(zip(saes, specs)):
            _finalise(sae, spec, state, j, cfg, meta).save(folder / spec.name)
        atomic_write_text(folder / "done", f"{state.tokens}\n")


def _finalise(sae: SAE, spec: SAESpec, state: TrainState, j: int, cfg: TrainConfig, meta: dict) -> SAE:
    """A copy of a trained SAE as it ships: eval mode, norm scaling factor and provenance in its config."""
    final = copy.deepcopy(sae).cpu().eval()
    final.cfg.norm_scaling_factor = state.norm[str(spec.layer)]
    if "grad_scale" in spec.arch.buffers:
        rms = state.grad_rms[j]
        final.grad_scale.fill_(math.sqrt(rms) if cfg.beta_mode == "rms" and rms > 0 else 1.0)
    dead = state.dead[j]
    final.cfg.metadata = {
        "trained_by": "gradsae train",
        "train_steps": state.step,
        "tokens_seen": state.sae_tokens,
        "model_tokens": state.tokens,
        "layer": spec.layer,
        "seed": spec.seed,
        **meta["source"],
        "dead_frac_train": float(dead.dead_by_tokens(state.sae_tokens, cfg.dead_tokens).float().mean()),
        "dead_tokens": cfg.dead_tokens,
        "dead_frac_train_5batches": float(dead.dead_by_batches(5).float().mean()),
        "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "cache")},
    }
    return final
