"""``gradsae train``: train TopK and g-SAE sparse autoencoders from an activation cache.

One pass over the cache trains a grid of SAEs from the same batches (``--architectures topk,gsae
--k 16,32,64 --beta 0.5,1``: every topk x k and every gsae x k x beta). Per SAE and step:

1. normalise x by one scalar s (so E‖s·x‖² = D, SAELens "expected_average_only_in"; stored in the SAE);
2. z = (s·x - b_dec) @ W_enc + b_enc; select K latents: TopK(z) for ``topk``, for ``gsae``
   TopK(z + β/σ · z ∘ |W_dec ∇ₓL|) where σ is 1 (``--beta-mode raw``, the paper's form) or a running RMS of
   |W_dec ∇ₓL| over training tokens (``rms``, default: β becomes scale-free: the gradient term is β times
   z in units of its typical size, whatever the model, layer or loss convention);
3. decode only the K active rows (embedding-bag gather) and minimise ‖s·x - x̂‖² (+ AuxK on dead latents);
4. remove the part of W_dec's gradient parallel to its rows, take an Adam step, renormalise rows to 1.

Everything that changes during training (weights, Adam moments, step, dead-latent counters, grad-RMS
EMA, the data position) is in one checkpoint file written atomically; a rerun of the same command
resumes from it and ends with bit-identical weights. Under ``torchrun --nproc_per_node=N`` each step's
batch is split across processes and gradients are averaged by DistributedDataParallel.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import opt
from .errors import GradsaeError
from .io import JsonlLog, write_json
from .sae import SAE, SAEConfig, SparseCode, gsae_selection_score, topk_code

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Train TopK / g-SAE SAEs (a grid of them in one pass) from a `gradsae cache` folder."""

    cache: str = opt("", "cache folder (default: the folder `gradsae cache` writes with its defaults)")
    layer: int = opt(-1, "which cached layer (-1: the cache's first layer)")
    out: str = opt("", "results folder (default: <gradsae cache>/runs/<cache name>-<architectures>)")
    architectures: list[str] = opt(["topk", "gsae"], "comma-separated: topk, gsae")
    k: list[int] = opt([32], "active latents per token; several values train several SAEs")
    beta: list[float] = opt([0.5], "g-SAE gradient weight(s) (default 0.5: best L_added of 0.5/1/2 on SmolLM2 "
                            "layer 9, see docs/training.md); several values train several g-SAEs")
    beta_mode: str = opt("rms", "g-SAE: 'rms' (beta relative to a running RMS of |W_dec grad|) or 'raw' (paper)",
                         choices=("rms", "raw"))
    d_sae: int = opt(4096, "latents C")
    batch_size: int = opt(512, "tokens per step (the global batch when run under torchrun)")
    epochs: float = opt(2.0, "passes over the training tokens")
    lr: float = opt(5e-4, "Adam learning rate")
    warmup_steps: int = opt(50, "linear learning-rate warm-up")
    decay_frac: float = opt(0.2, "linear decay to 0 over this final fraction of steps")
    auxk_coef: float = opt(1 / 32, "AuxK loss weight (0 disables AuxK)")
    auxk_k: int = opt(256, "latents the AuxK loss uses among the dead ones")
    dead_tokens: int = opt(200_000, "a latent is dead when it has not fired in this many training tokens")
    holdout_shards: int = opt(1, "last cache shards kept out of training (for `gradsae eval`)")
    grad_ema: float = opt(0.99, "EMA decay of the running RMS of |W_dec grad| (beta-mode rms)")
    decoder: str = opt("sparse", "decoder: 'sparse' (embedding-bag over the K active rows) or 'dense' "
                       "(C-wide matrix product)",
                       choices=("sparse", "dense"))
    seed: int = opt(0, "seed for the initialisation and the batch order")
    checkpoint_every: int = opt(200, "steps between checkpoints")
    log_every: int = opt(50, "steps between metric records in train_log.jsonl")
    max_steps: int = opt(0, "stop after this many steps in this invocation (0: run to the end); for tests")
    threads: int = opt(2, "torch CPU threads per process")
    device: str = opt("cpu", "cpu or cuda (cuda:LOCAL_RANK under torchrun)")


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------

def grid(cfg: TrainConfig) -> list[dict]:
    """The SAEs of a run: [{'name', 'architecture', 'k', 'beta'}] in a fixed order."""
    out = []
    for arch in cfg.architectures:
        if arch not in ("topk", "gsae"):
            raise GradsaeError(f"cannot train architecture {arch!r}: use topk or gsae")
        for k in cfg.k:
            if arch == "topk":
                out.append({"name": f"topk_k{k}", "architecture": "topk", "k": k, "beta": 0.0})
            else:
                for b in cfg.beta:
                    out.append({"name": f"gsae_k{k}_b{b:g}", "architecture": "gsae", "k": k, "beta": float(b)})
    if not out:
        raise GradsaeError("nothing to train: give --architectures and --k")
    return out


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm. x [N, D] -> [D]."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-6)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def lr_at(step: int, total: int, lr: float, warmup: int, decay_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, constant, linear decay to 0 over the last ``decay_frac``."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    d0 = int(total * (1 - decay_frac))
    if decay_frac > 0 and step >= d0:
        f *= max(0.0, (total - step) / max(1, total - d0))
    return lr * f


def remove_parallel_grad(W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Project out of G [C, D] the component along each (unit) row of W [C, D] (Gao et al.)."""
    return G - (G * W).sum(-1, keepdim=True) * W


def decode_sparse(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """x̂ = Σ_k values[n,k] W_dec[indices[n,k]] + b_dec via embedding_bag. [N, K] -> [N, D]."""
    return F.embedding_bag(code.indices, W_dec, per_sample_weights=code.values, mode="sum") + b_dec


def decode_dense(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """Same as ``decode_sparse`` through a dense [N, C] @ [C, D] product."""
    h = code.values.new_zeros(code.values.shape[0], W_dec.shape[0]).scatter(-1, code.indices, code.values)
    return h @ W_dec + b_dec


# ---------------------------------------------------------------------------------------------
# The trained module: all SAEs of the grid in one nn.Module (one DDP wrapper, one backward)
# ---------------------------------------------------------------------------------------------

class SAEGrid(nn.Module):
    """Holds the SAEs; ``forward(x, g, dead)`` returns the summed loss and per-SAE detached stats.

    x [N, D] normalised activations, g [N, D] dL/dx (or None), dead [S, C] bool masks for AuxK.
    """

    def __init__(self, saes: list[SAE], specs: list[dict], decoder: str, auxk_coef: float, auxk_k: int):
        super().__init__()
        self.saes = nn.ModuleList(saes)
        self.specs = specs
        self.sparse = decoder == "sparse"
        self.decode = decode_sparse if self.sparse else decode_dense
        self.auxk_coef, self.auxk_k = auxk_coef, auxk_k

    def forward(self, x: torch.Tensor, g: torch.Tensor | None, dead: torch.Tensor,
                grad_scales: list[float]):
        total = x.new_zeros(())
        stats = []
        for j, (sae, spec) in enumerate(zip(self.saes, self.specs)):
            z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [N, C]
            with torch.no_grad():
                score, glat = z.detach(), None
                if spec["architecture"] == "gsae" and g is not None:
                    glat = g @ sae.W_dec.T  # [N, C]
                    score = gsae_selection_score(score, glat, spec["beta"], grad_scales[j])
            code = topk_code(score, z, spec["k"])  # values: relu(z) at the selected latents
            x_hat = self.decode(code, sae.W_dec, sae.b_dec)
            err = x - x_hat
            mse = err.pow(2).sum(-1).mean()
            loss = mse
            aux = x.new_zeros(())
            if self.auxk_coef > 0 and dead[j].any():
                kk = min(self.auxk_k, int(dead[j].sum()))
                aidx = z.masked_fill(~dead[j], float("-inf")).topk(kk, dim=-1).indices
                acode = SparseCode(z.gather(-1, aidx).relu(), aidx)
                e_hat = self.decode(acode, sae.W_dec, torch.zeros_like(sae.b_dec))
                e = err.detach()
                denom = _global_mean(e.pow(2).sum(-1).mean())
                aux = (e_hat - e).pow(2).sum(-1).mean() / denom.clamp_min(1e-12)
                loss = loss + self.auxk_coef * aux
            total = total + loss
            fired = torch.zeros(sae.W_dec.shape[0], dtype=torch.long, device=x.device)
            fired.scatter_add_(0, code.indices.flatten(), (code.values.flatten() > 0).long())
            stats.append({"mse": mse.detach(), "aux": aux.detach(), "x2": x.pow(2).sum(-1).mean(),
                          "fired": fired, "l0": (code.values > 0).sum(-1).float().mean(),
                          "glat_ms": None if glat is None else glat.pow(2).mean()})
        return total, stats


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a detached scalar (itself in a single process)."""
    rank, world = _dist()
    t = t.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(t)
        t /= world
    return t


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    rank, world = _dist()
    t = t.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(t)
    return t


class Adam:
    """Plain Adam with explicit state tensors (so checkpoints are safetensors, no pickle)."""

    def __init__(self, params: list[nn.Parameter], betas=(0.9, 0.999), eps=6.25e-10):
        self.params = params
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-lr)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def _default_cache() -> Path:
    from .cache import CacheConfig, default_out

    return default_out(CacheConfig())


def resolve_out(cfg: TrainConfig, cache_path: Path) -> Path:
    if cfg.out:
        return Path(cfg.out).expanduser()
    from .model import cache_dir

    return cache_dir() / "runs" / f"{cache_path.name}-{'-'.join(cfg.architectures)}"


def _init_distributed(cfg: TrainConfig) -> str:
    """Start the process group under torchrun (gloo on CPU, nccl on GPU); returns the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = cfg.device
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    return device


def run(cfg: TrainConfig) -> Path:
    """Train the grid; returns the results folder (one SAELens folder per SAE + logs + checkpoint)."""
    from .cache import ActivationCache

    torch.set_num_threads(max(1, cfg.threads))
    device = _init_distributed(cfg)
    rank, world = _dist()
    cache = ActivationCache(cfg.cache or _default_cache())
    layer = cache.layers[0] if cfg.layer == -1 else cfg.layer
    specs = grid(cfg)
    need_grads = any(s["architecture"] == "gsae" for s in specs)
    if need_grads and not cache.has_grads:
        raise GradsaeError(f"g-SAE training needs gradients but the cache {cache.path} has none: "
                           "re-cache with --grad")
    if cfg.batch_size % world:
        raise GradsaeError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes: change it")
    n_train_shards = len(cache.shards) - cfg.holdout_shards
    if n_train_shards < 1:
        raise GradsaeError(f"the cache has {len(cache.shards)} shard(s) and --holdout-shards is "
                           f"{cfg.holdout_shards}: cache more data or lower --holdout-shards")
    X, G = cache.load(layer, list(range(n_train_shards)), grads=need_grads)
    N, D = X.shape
    steps_per_epoch = N // cfg.batch_size
    total = int(steps_per_epoch * cfg.epochs)
    if total < 1:
        raise GradsaeError(f"{N} training tokens are less than one batch of {cfg.batch_size}: lower --batch-size")

    # Scalar normalisation s with E||s x||^2 = D (from a seeded sample).
    gen = torch.Generator().manual_seed(cfg.seed)
    sample = X[torch.randperm(N, generator=gen)[:8192]].float()
    norm_s = float(math.sqrt(D) / sample.norm(dim=-1).mean())
    b_dec0 = geometric_median(sample * norm_s)

    saes = []
    for j, spec in enumerate(specs):
        scfg = SAEConfig(d_in=D, d_sae=cfg.d_sae, architecture=spec["architecture"], k=spec["k"],
                         beta=spec["beta"], beta_mode=cfg.beta_mode, hook_name=f"blocks.{layer}.hook_resid_post",
                         model_name=cache.manifest["model"], context_size=cache.manifest["context_length"],
                         prepend_bos=cache.manifest["prepend_bos"], dataset_path=",".join(cache.manifest["data"]))
        sae = SAE.init_random(scfg, seed=cfg.seed + j)
        with torch.no_grad():
            sae.b_dec.copy_(b_dec0)
        saes.append(sae.to(device).train())
    model = SAEGrid(saes, specs, cfg.decoder, cfg.auxk_coef, cfg.auxk_k).to(device)
    opts = [Adam(list(s.parameters())) for s in saes]
    C = cfg.d_sae
    state = {"step": 0, "tokens": 0, "train_tokens": N}
    last_fired = torch.zeros(len(saes), C, dtype=torch.long)  # tokens seen when each latent last fired
    grad_rms = [0.0] * len(saes)  # EMA of the mean square of W_dec g (initialised from the first batch)
    grad_ema_n = [0] * len(saes)

    out = resolve_out(cfg, cache.path)
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists():
        loaded = _load_checkpoint(ckpt, saes, opts)
        if loaded["config"] != _ckpt_config(cfg):
            raise GradsaeError(f"{out} holds a run with a different config: use another --out or delete it")
        if loaded["state"].get("train_tokens", N) != N:
            raise GradsaeError(f"{out} was trained on {loaded['state']['train_tokens']} cached tokens but the cache "
                               f"now has {N} training tokens: use another --out or the same cache")
        state = loaded["state"]
        last_fired = loaded["last_fired"]
        grad_rms, grad_ema_n = loaded["grad_rms"], loaded["grad_ema_n"]
        if rank == 0:
            print(f"train: resuming from step {state['step']} of {total}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {**asdict(cfg), "layer": layer, "cache_path": str(cache.path),
                                         "train_tokens": N, "steps": total, "world_size": world,
                                         "norm_scaling_factor": norm_s, "saes": specs})
    logf = JsonlLog(out / "train_log.jsonl") if rank == 0 else None
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=state["step"], unit="step", desc="train", disable=rank != 0,
               dynamic_ncols=True, mininterval=5)
    local = cfg.batch_size // world
    perm, perm_epoch = None, -1
    t0, tok0 = time.time(), state["tokens"]
    stopped_early = False
    run_steps = 0
    while state["step"] < total:
        step = state["step"]
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed * 1000003 + epoch))
            perm_epoch = epoch
        idx = perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size][rank * local:(rank + 1) * local]
        x = (X[idx].float() * norm_s).to(device)
        g = G[idx].to(device) if G is not None else None
        dead = (state["tokens"] - last_fired) >= cfg.dead_tokens
        if state["tokens"] < cfg.dead_tokens:
            dead[:] = False
        scales = [math.sqrt(grad_rms[j]) if grad_rms[j] > 0 else 1.0 for j in range(len(saes))]
        if cfg.beta_mode == "raw":
            scales = [1.0] * len(saes)
        elif any(s["architecture"] == "gsae" for s in specs) and g is not None:
            # first step: initialise the RMS from this batch before selecting with it
            for j, sae in enumerate(saes):
                if specs[j]["architecture"] == "gsae" and grad_ema_n[j] == 0:
                    with torch.no_grad():
                        ms = _global_mean((g @ sae.W_dec.T).pow(2).mean())
                    grad_rms[j], grad_ema_n[j] = float(ms), 1
                    scales[j] = math.sqrt(grad_rms[j])
        lr = lr_at(step, total, cfg.lr, cfg.warmup_steps, cfg.decay_frac)
        for s in saes:
            for p in s.parameters():
                p.grad = None
        loss, stats = ddp(x, g, dead.to(device), scales)
        loss.backward()
        for j, (sae, opt_) in enumerate(zip(saes, opts)):
            with torch.no_grad():
                sae.W_dec.grad = remove_parallel_grad(sae.W_dec, sae.W_dec.grad)
            opt_.step(lr)
            sae.set_decoder_norm_to_unit_norm()
            fired = _global_sum(stats[j]["fired"]).cpu()
            last_fired[j][fired > 0] = state["tokens"] + cfg.batch_size
            if stats[j]["glat_ms"] is not None:
                ms = float(_global_mean(stats[j]["glat_ms"]))
                grad_rms[j] = cfg.grad_ema * grad_rms[j] + (1 - cfg.grad_ema) * ms
                grad_ema_n[j] += 1
        state["step"] += 1
        state["tokens"] += cfg.batch_size
        run_steps += 1
        bar.update(1)
        if rank == 0 and (state["step"] % cfg.log_every == 0 or state["step"] == total):
            rec = {"step": state["step"], "tokens": state["tokens"], "lr": lr,
                   "tokens_per_s": (state["tokens"] - tok0) / max(1e-9, time.time() - t0)}
            for j, spec in enumerate(specs):
                st = stats[j]
                dead_now = ((state["tokens"] - last_fired[j]) >= cfg.dead_tokens).float().mean()
                rec[spec["name"]] = {"nmse": float(st["mse"] / st["x2"]), "auxk": float(st["aux"]),
                                     "l0": float(st["l0"]), "dead_frac": float(dead_now),
                                     "grad_rms": math.sqrt(grad_rms[j]) if grad_rms[j] else None}
            logf.append(rec)
            bar.set_postfix({s["name"][:10]: f"{rec[s['name']]['nmse']:.3f}" for s in specs[:3]})
        if rank == 0 and (state["step"] % cfg.checkpoint_every == 0 or state["step"] == total):
            _save_checkpoint(ckpt, saes, opts, cfg, state, last_fired, grad_rms, grad_ema_n)
        if cfg.max_steps and run_steps >= cfg.max_steps and state["step"] < total:
            stopped_early = True
            if rank == 0:
                _save_checkpoint(ckpt, saes, opts, cfg, state, last_fired, grad_rms, grad_ema_n)
            break
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0 and not stopped_early:
        for j, (sae, spec) in enumerate(zip(saes, specs)):
            final = _finalise(sae, spec, norm_s, grad_rms[j], cfg, cache, layer, N, state,
                              last_fired[j])
            final.save(out / spec["name"])
        dt = time.time() - t0
        print(f"train: {len(saes)} SAE(s), {state['tokens']} tokens in {out} "
              f"({(state['tokens'] - tok0) / max(dt, 1e-9):.0f} tokens/s this invocation)")
    if world > 1:
        torch.distributed.barrier()
    return out


def _finalise(sae: SAE, spec: dict, norm_s: float, grad_ms: float, cfg: TrainConfig, cache, layer: int,
              n_train: int, state: dict, last_fired: torch.Tensor) -> SAE:
    """A copy of a trained SAE as it ships: eval mode, norm scaling factor and provenance in its config."""
    import copy

    final = copy.deepcopy(sae).cpu().eval()
    final.cfg.norm_scaling_factor = norm_s
    if spec["architecture"] == "gsae":
        final.grad_scale.fill_(math.sqrt(grad_ms) if cfg.beta_mode == "rms" and grad_ms > 0 else 1.0)
    dead = float(((state["tokens"] - last_fired) >= cfg.dead_tokens).float().mean())
    final.cfg.metadata = {"trained_by": "gradsae train", "train_tokens": n_train, "train_steps": state["step"],
                          "tokens_seen": state["tokens"], "cache_layer": layer,
                          "dead_frac_train": dead, "dead_tokens": cfg.dead_tokens,
                          "train_shards": [sh["index"] for sh in cache.shards[:len(cache.shards) - cfg.holdout_shards]],
                          "holdout_shards": [sh["index"] for sh in cache.shards[len(cache.shards) - cfg.holdout_shards:]],
                          "cache": {k: cache.manifest.get(k) for k in (
                              "model", "context_length", "prepend_bos", "drop_first", "shuffle", "seed",
                              "seqs_per_shard", "data", "data_fingerprint", "max_tokens")},
                          "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "cache")}}
    return final


# ---------------------------------------------------------------------------------------------
# Checkpoints: one safetensors file, scalars in its metadata, replaced atomically
# ---------------------------------------------------------------------------------------------

def _ckpt_config(cfg: TrainConfig) -> dict:
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("max_steps", "checkpoint_every", "log_every",
                                                                "threads", "device", "out", "cache")}
    return json.loads(json.dumps(keep))


def _save_checkpoint(path: Path, saes, opts, cfg, state, last_fired, grad_rms, grad_ema_n) -> None:
    from safetensors.torch import save_file

    tensors = {"last_fired": last_fired.contiguous()}
    for j, (sae, o) in enumerate(zip(saes, opts)):
        for name, t in sae.state_dict().items():
            tensors[f"{j}.sae.{name}"] = t.detach().cpu().contiguous()
        for i, (m, v) in enumerate(zip(o.m, o.v)):
            tensors[f"{j}.adam.m.{i}"] = m.cpu().contiguous()
            tensors[f"{j}.adam.v.{i}"] = v.cpu().contiguous()
    meta = {"state": json.dumps(state), "config": json.dumps(_ckpt_config(cfg)),
            "adam_t": json.dumps([o.t for o in opts]), "grad_rms": json.dumps(grad_rms),
            "grad_ema_n": json.dumps(grad_ema_n)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, saes, opts) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    with torch.no_grad():
        for j, (sae, o) in enumerate(zip(saes, opts)):
            dev = sae.W_dec.device
            sae.load_state_dict({n[len(f"{j}.sae."):]: v.to(dev) for n, v in t.items() if n.startswith(f"{j}.sae.")})
            for i in range(len(o.m)):
                o.m[i].copy_(t[f"{j}.adam.m.{i}"])
                o.v[i].copy_(t[f"{j}.adam.v.{i}"])
            o.t = json.loads(meta["adam_t"])[j]
    return {"state": json.loads(meta["state"]), "config": json.loads(meta["config"]),
            "last_fired": t["last_fired"], "grad_rms": json.loads(meta["grad_rms"]),
            "grad_ema_n": json.loads(meta["grad_ema_n"])}
