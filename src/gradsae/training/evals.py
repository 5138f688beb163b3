"""``gradsae eval``: core SAE metrics in the SAEBench ``eval_result_metrics`` layout, plus plots.

Data: the held-out shards of an activation cache (the last ``--holdout-shards``, which ``gradsae train``
leaves out by default): their cached activations x and gradients dL/dx for reconstruction metrics, and
their token sequences for the model-level metrics.

Metrics (selection = how the K active latents are chosen; a g-SAE is evaluated both with its
gradient-aware selection, using the cached clean-model dL/dx, and with plain TopK, which is what
generation uses):

- ``l0``: mean active latents per token; ``nmse`` = Σ‖x − x̂‖² / Σ‖x‖²; ``explained_variance`` =
  1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²; ``cossim`` mean cos(x, x̂).
- ``ce_loss_without_sae`` / ``ce_loss_with_sae``: mean next-token CE of the sequences, clean and with the SAE
  spliced (error term dropped) at every position except the first ``drop_first`` (the attention sink,
  which the SAE was not trained on); ``l_added`` = (CE_sae − CE_clean) / CE_clean; ``kl_div_with_sae`` =
  mean KL(p_clean ‖ p_sae) over predicted positions. SAEBench's names beside them: ``ce_loss_with_ablation`` /
  ``kl_div_with_ablation`` with the site zeroed at the same positions, ``ce_loss_score`` = (CE_ablation − CE_sae)
  / (CE_ablation − CE_clean), ``kl_div_score`` = (KL_ablation − KL_sae) / KL_ablation (1 = the SAE keeps
  everything zero ablation loses).
- dead latents by two rules: ``dead_frac``, latents that never fire on the held-out tokens (``n_tokens`` of
  them); ``dead_frac_5batches``, the g-SAE paper's rule, latents that fire in none of the last 5 batches of
  ``--dead-batch-tokens`` held-out tokens. The values recorded at the end of training (``gradsae train``
  keeps both rules' counters) are reported beside them (``dead_frac_train``, ``dead_frac_train_5batches``).
- steering (g-SAE paper §4.2): for a seeded sample of latents alive on the held-out tokens and of
  (sequence, position) contexts, add α·W_dec[i]/‖W_dec[i]‖ to x at that position, and measure the change of
  the next-token distribution: ``assoc`` = Σ_{j∈L_i} Δp_j over the n tokens L_i with the largest W_U·W_dec[i]
  (higher is better), ``other`` = Σ_{j∉L_i} max(Δp_j, 0), the probability added to all other tokens
  (lower is better; the plain sum over other tokens would be −assoc since probabilities sum to one).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import opt
from ..errors import GradsaeError
from ..saes import DEFAULT_GSAE
from ..io import write_json
from ..kvcache import cache_kwargs, returned_cache
from ..options import ModelOptions, start
from ..saes.sae import SAE, densify

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalConfig(ModelOptions):
    """Evaluate an SAE on held-out cached tokens: NMSE, L0, CE/L_added, KL, dead latents, steering effect."""

    sae: str = opt(DEFAULT_GSAE, "SAE folder/file or bundled name")
    cache: str = opt("", "activation cache (default: the folder `gradsae cache` writes with its defaults)")
    holdout_shards: int = opt(1, "evaluate on the last N shards of the cache (kept out of training)", low=1)
    n_seqs: int = opt(64, "held-out sequences for CE / KL (0: all)", low=0)
    batch_size: int = opt(
        8, "sequences per forward pass; auto (or 0): the most that fit the device memory (estimated)", low=0, auto=True
    )
    selection: str = opt("auto", "auto (g-SAE: both), topk, or gradient", choices=("auto", "topk", "gradient"))
    steer_latents: int = opt(64, "latents sampled for the steering effect (0 skips steering)", low=0)
    steer_contexts: int = opt(8, "contexts (sequence, position) per latent", low=1)
    steer_alphas: list[float] = opt(
        [10.0, 25.0, 50.0, 100.0],
        "steering strengths α, the norm of the added vector (for scale: SmolLM2's layer-9 residuals have norm ~140)",
    )
    steer_top_n: int = opt(10, "associated tokens n per latent (largest W_U·W_dec[i])", low=1)
    out: str = opt("", "results folder (default: <gradsae cache>/evals/<sae name>)")
    dead_batch_tokens: int = opt(
        1024, "tokens per batch for the g-SAE paper's dead-latent rule (no activation in 5 consecutive batches)", low=1
    )
    plots: bool = opt(True, "write PNG plots")
    seed: int = opt(0, "seed for the samples of latents and contexts")

    def __post_init__(self):
        super().__post_init__()
        if self.out and Path(self.out).expanduser().is_file():
            raise GradsaeError(f"--out {self.out} is a file: eval writes a folder (eval.json and plots); give a folder")
        if self.steer_latents > 0 and not self.steer_alphas:
            raise GradsaeError("--steer-alphas is empty: give at least one strength, e.g. 10,50, or --steer-latents 0")


# ---------------------------------------------------------------------------------------------
# Pure metrics
# ---------------------------------------------------------------------------------------------


def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """x, x_hat [N, D] -> nmse, explained_variance, mse, cossim."""
    err = (x - x_hat).pow(2).sum()
    return {
        "nmse": float(err / x.pow(2).sum()),
        "explained_variance": float(1 - err / (x - x.mean(0)).pow(2).sum()),
        "mse": float(err / x.numel()),
        "cossim": float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean()),
    }


def max_decoder_cosine(W_dec: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each decoder row the largest cosine to another row (computed on W_dec's device). W_dec [C, D] -> [C]
    on the CPU."""
    W = W_dec.float() / W_dec.float().norm(dim=-1, keepdim=True).clamp_min(1e-8)
    out = torch.empty(W.shape[0])
    for a in range(0, W.shape[0], chunk):
        sim = W[a : a + chunk] @ W.T
        rows = torch.arange(sim.shape[0], device=W.device)
        sim[rows, rows + a] = -2.0
        out[a : a + chunk] = sim.max(-1).values.cpu()
    return out


def steering_deltas(
    p_clean: torch.Tensor, p_steer: torch.Tensor, assoc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """p_clean [V], p_steer [R, V], assoc [R, n] token ids -> (Σ_assoc Δp [R], Σ_other relu(Δp) [R])."""
    d = p_steer - p_clean[None]
    mask = torch.zeros_like(d, dtype=torch.bool).scatter(-1, assoc, True)
    return (d * mask).sum(-1), (d.clamp_min(0) * ~mask).sum(-1)


def next_token_ce_kl(
    logits_clean: torch.Tensor, logits_sae: torch.Tensor, ids: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position CE clean, CE spliced and KL(clean ‖ spliced) for predictions made at positions ≥ start.

    logits [B, T, V], ids [B, T] -> three tensors [B * (T - 1 - start)].
    """
    lc = logits_clean[:, start:-1].float().log_softmax(-1)
    ls = logits_sae[:, start:-1].float().log_softmax(-1)
    tgt = ids[:, start + 1 :]
    ce_c = -lc.gather(-1, tgt[..., None]).squeeze(-1)
    ce_s = -ls.gather(-1, tgt[..., None]).squeeze(-1)
    kl = (lc.exp() * (lc - ls)).sum(-1)
    return ce_c.flatten(), ce_s.flatten(), kl.flatten()


# ---------------------------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------------------------


class GradAwareSAE(torch.nn.Module):
    """An SAE whose ``encode`` uses a fixed dL/dx [B, T, D] for g-SAE selection (for use inside a Splice)."""

    def __init__(self, sae: SAE):
        super().__init__()
        self.inner = sae
        self.grad_x: torch.Tensor | None = None

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def encode(self, x: torch.Tensor, grad_x: torch.Tensor | None = None) -> torch.Tensor:
        g = self.grad_x if grad_x is None else grad_x
        return densify(self.inner.encode_sparse(x, g), self.inner.d_sae)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(h)


class ZeroAblation(GradAwareSAE):
    """The site's activation replaced by zeros (SAEBench's reference for ``ce_loss_score``), as a Splice module."""

    def encode(self, x: torch.Tensor, grad_x: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], 1)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return h.new_zeros(*h.shape[:-1], self.inner.W_dec.shape[-1])


def _encode_batches(sae: SAE, x: torch.Tensor, g: torch.Tensor | None, bs: int = 4096):
    """Yield (x_batch [n, D] float, x_hat [n, D], code) over x [N, D]."""
    from .grid import decode_sparse

    dev = sae.W_dec.device
    for a in range(0, x.shape[0], bs):
        xb = x[a : a + bs].to(dev).float()
        gb = None if g is None else g[a : a + bs].to(dev)
        code = sae.encode_sparse(xb, gb)
        s = sae.cfg.norm_scaling_factor
        x_hat = decode_sparse(code, sae.W_dec, sae.b_dec)
        if s is not None:
            x_hat = x_hat / s
        yield xb, x_hat, code


def activation_metrics(sae: SAE, x: torch.Tensor, g: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """Reconstruction + sparsity on cached tokens. -> (metrics, firing counts [C])."""
    counts = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.W_dec.device)
    err = x2 = 0.0
    xs_sum = torch.zeros(sae.d_in, dtype=torch.float64, device=sae.W_dec.device)
    xx = 0.0
    cos, l0, l1, n = 0.0, 0.0, 0.0, 0
    for xb, xh, code in _encode_batches(sae, x, g):
        active = code.values > 0
        counts.scatter_add_(0, code.indices.flatten(), active.flatten().long())
        err += float((xb - xh).pow(2).sum())
        x2 += float(xb.pow(2).sum())
        xs_sum += xb.double().sum(0)
        xx += float(xb.double().pow(2).sum())
        cos += float(torch.nn.functional.cosine_similarity(xb, xh, dim=-1).sum())
        l0 += float(active.sum())
        l1 += float(code.values.sum())
        n += xb.shape[0]
    var_total = xx - float(xs_sum.pow(2).sum()) / n
    m = {
        "reconstruction_quality": {
            "nmse": err / x2,
            "explained_variance": 1 - err / var_total,
            "mse": err / (n * sae.d_in),
            "cossim": cos / n,
        },
        "sparsity": {"l0": l0 / n, "l1": l1 / n},
        "misc": {"dead_frac": float((counts == 0).float().mean()), "n_tokens": n},
    }
    return m, counts.cpu()


def eval_rows(cfg: EvalConfig, model, sae: SAE, T: int, n_seq: int) -> int:
    """Sequences per CE/KL batch: ``--batch-size`` checked against the memory estimate of a forward pass that
    keeps the clean and the spliced logits of every position (``auto``: the most that fit)."""
    from .. import memory

    shape = memory.ModelShape.of(model)
    lat = memory.sae_shape(sae)

    def passes(b: int) -> list[memory.Pass]:
        return [
            memory.Pass(
                "forward", rows=b, tokens=T, logits=2 * T, latents=lat.C, latent_bytes=lat.bytes, sparse=lat.sparse
            )
        ]

    device = str(next(model.parameters()).device)
    return memory.plan_rows("eval", passes, shape, requested=cfg.batch_size, most=max(1, n_seq), device=device)


def model_metrics(
    model, sae: SAE, ids: torch.Tensor, grads: torch.Tensor | None, drop_first: int, batch_size: int
) -> dict:
    """CE clean vs spliced, L_added, KL, and SAEBench's scores against zero ablation of the site (the same
    positions spliced). ids [S, T]; grads [S, T, D] dL/dx for gradient selection or None."""
    from ..splice import Splice

    enc = GradAwareSAE(sae)
    dev = next(model.parameters()).device
    ce_c, ce_s, kls, ce_z, kl_z = [], [], [], [], []
    for a in range(0, ids.shape[0], batch_size):
        b = ids[a : a + batch_size].to(dev)
        attn = torch.ones_like(b)
        with torch.no_grad():
            clean = model(input_ids=b, attention_mask=attn).logits
            enc.grad_x = None if grads is None else grads[a : a + batch_size].to(dev)
            with Splice(model, enc, error="none", keep_first=drop_first):
                spliced = model(input_ids=b, attention_mask=attn).logits
            with Splice(model, ZeroAblation(sae), error="none", keep_first=drop_first):
                zeroed = model(input_ids=b, attention_mask=attn).logits
        c, s, k = next_token_ce_kl(clean, spliced, b, drop_first)
        _, z, kz = next_token_ce_kl(clean, zeroed, b, drop_first)
        ce_c.append(c.cpu()), ce_s.append(s.cpu()), kls.append(k.cpu()), ce_z.append(z.cpu()), kl_z.append(kz.cpu())
    ce_c, ce_s, kl = torch.cat(ce_c).mean(), torch.cat(ce_s).mean(), torch.cat(kls).mean()
    ce_z, kl_z = torch.cat(ce_z).mean(), torch.cat(kl_z).mean()
    return {
        "model_performance_preservation": {
            "ce_loss_without_sae": float(ce_c),
            "ce_loss_with_sae": float(ce_s),
            "ce_loss_with_ablation": float(ce_z),
            "ce_loss_score": saebench_score(float(ce_z) - float(ce_s), float(ce_z) - float(ce_c)),
            "l_added": float((ce_s - ce_c) / ce_c),
        },
        "model_behavior_preservation": {
            "kl_div_with_sae": float(kl),
            "kl_div_with_ablation": float(kl_z),
            "kl_div_score": saebench_score(float(kl_z) - float(kl), float(kl_z)),
        },
    }


def saebench_score(gained: float, possible: float) -> float | None:
    """SAEBench's ``ce_loss_score`` / ``kl_div_score``: the fraction of what zero ablation loses that the SAE
    keeps, (ablated - with SAE) / (ablated - clean); None where ablating the site changes nothing."""
    return gained / possible if possible != 0 else None


def steering_effect(model, sae: SAE, ids: torch.Tensor, alive: torch.Tensor, cfg: EvalConfig, drop_first: int) -> dict:
    """Paper §4.2 on a seeded sample of alive latents × contexts × α (KV-cached: one extra token per row)."""
    from ..hooks import unembedding
    from ..splice import AddAt

    g = torch.Generator().manual_seed(cfg.seed)
    alive_idx = alive.nonzero().flatten()
    if len(alive_idx) == 0:
        raise GradsaeError("no latent fires on the held-out tokens: the SAE looks broken (check it with NMSE)")
    lat = alive_idx[torch.randperm(len(alive_idx), generator=g)[: cfg.steer_latents]].sort().values
    dev = next(model.parameters()).device
    W = sae.W_dec[lat.to(sae.W_dec.device)].float().to(dev)
    dirs = W / W.norm(dim=-1, keepdim=True)  # [L, D]
    W_U = unembedding(model).float()
    assoc = (dirs @ W_U.T).topk(cfg.steer_top_n, dim=-1).indices  # [L, n]
    alphas = torch.tensor(cfg.steer_alphas, dtype=torch.float32, device=dev)
    A, Lc = len(alphas), len(lat)
    # rows: alpha-major, latent-minor
    delta = (alphas[:, None, None] * dirs[None]).reshape(A * Lc, -1)  # [R, D]
    assoc_r = assoc.repeat(A, 1)
    layer = sae.cfg.layer
    sums_a = torch.zeros(A * Lc)
    sums_o = torch.zeros(A * Lc)
    T = ids.shape[1]
    ctx_seq = torch.randint(0, ids.shape[0], (cfg.steer_contexts,), generator=g)
    ctx_pos = torch.randint(drop_first + 1, T, (cfg.steer_contexts,), generator=g)
    with AddAt(model, layer, -1, None) as probe:  # adds the step's δ rows at the newest position
        for s, p in zip(ctx_seq.tolist(), ctx_pos.tolist()):
            prefix = ids[s : s + 1, :p].to(dev)
            with torch.no_grad():
                probe.deltas = None
                out = model(input_ids=prefix[:, :-1], attention_mask=torch.ones_like(prefix[:, :-1]), use_cache=True)
                pkv = returned_cache(out)
                last = prefix[:, -1:]
                clean = (
                    model(
                        input_ids=last,
                        attention_mask=torch.ones_like(prefix),
                        use_cache=True,
                        **cache_kwargs(model, _copy_cache(pkv, 1)),
                    )
                    .logits[0, -1]
                    .float()
                    .softmax(-1)
                )
                for a in range(0, A * Lc, 64):
                    d = delta[a : a + 64]
                    probe.deltas = d
                    R = d.shape[0]
                    logits = model(
                        input_ids=last.expand(R, 1),
                        attention_mask=torch.ones(R, p, dtype=torch.long, device=dev),
                        use_cache=True,
                        **cache_kwargs(model, _copy_cache(pkv, R)),
                    ).logits[:, -1]
                    pa, po = steering_deltas(clean, logits.float().softmax(-1), assoc_r[a : a + 64])
                    sums_a[a : a + 64] += pa.cpu()
                    sums_o[a : a + 64] += po.cpu()
                    probe.deltas = None
    mean_a = (sums_a / len(ctx_seq)).reshape(A, Lc)  # per latent, averaged over contexts
    mean_o = (sums_o / len(ctx_seq)).reshape(A, Lc)
    return {
        "alphas": alphas.cpu().tolist(),
        "n_latents": Lc,
        "n_contexts": len(ctx_seq),
        "top_n": cfg.steer_top_n,
        "assoc_mean": mean_a.mean(1).tolist(),
        "other_mean": mean_o.mean(1).tolist(),
        "assoc_median": mean_a.median(1).values.tolist(),
        "latents": lat.tolist(),
        "assoc_per_latent": mean_a.tolist(),
    }


def _copy_cache(pkv, repeats: int):
    """A copy of a KV cache with its batch repeated (the original stays untouched)."""
    import copy

    c = copy.deepcopy(pkv)
    if repeats > 1:
        c.batch_repeat_interleave(repeats)
    return c


def _plots(out: Path, counts_by_sel: dict, n_tokens: int, maxcos: torch.Tensor, steer: dict | None, title: str):
    from ..io import atomic_write_bytes
    from ..viz.plots import figure_png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for sel, counts in counts_by_sel.items():
        dens = counts.float() / max(1, n_tokens)
        ax.hist(torch.log10(dens[dens > 0]).numpy(), bins=50, alpha=0.6, label=f"{sel} selection")
    ax.set_xlabel("log10 activation density (alive latents)")
    ax.set_ylabel("latents")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(out / "density_hist.png", figure_png(fig, dpi=110))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(maxcos.numpy(), bins=60)
    ax.set_xlabel("max cosine similarity to another decoder row")
    ax.set_ylabel("latents")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write_bytes(out / "decoder_maxcos_hist.png", figure_png(fig, dpi=110))

    if steer:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        axes[0].plot(steer["alphas"], steer["assoc_mean"], marker="o")
        axes[0].set_title("Δp on associated tokens (higher better)")
        axes[1].plot(steer["alphas"], steer["other_mean"], marker="o", color="C1")
        axes[1].set_title("p added to other tokens (lower better)")
        for a in axes:
            a.set_xlabel("α")
        fig.suptitle(title)
        fig.tight_layout()
        atomic_write_bytes(out / "steering.png", figure_png(fig, dpi=110))


def _sae_slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.strip("/")).strip("_")


def run(cfg: EvalConfig) -> dict:
    """Load the SAE, the model and the cache, evaluate, write eval.json (+ plots), print a summary."""
    from .cache import ActivationCache, default_cache
    from ..saes import load_sae
    from ..model import load_model

    rt = start(cfg, "eval")
    sae = load_sae(cfg.sae, device=rt.device, dtype="float32")  # float16 files are evaluated in float32
    model, _ = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    cache = ActivationCache(cfg.cache or default_cache())
    rt.announce("eval")
    return evaluate(model, sae, cache, cfg, runtime=rt.as_config())


def evaluate(model, sae: SAE, cache, cfg: EvalConfig, runtime: dict | None = None) -> dict:
    """All metrics of the module docstring for ``sae`` on ``model`` and the held-out shards of ``cache``."""
    from ..model import cache_dir, model_name
    from ..splice import check_compatible

    t0 = time.time()
    from ..hooks import site_of

    own = site_of(sae.cfg.hook_name)
    if own is not None and own[1] != cache.site:
        raise GradsaeError(
            f"the SAE reads {own[1]} but the cache {cache.path} holds {cache.site}: "
            f"cache that site with `gradsae cache --site {own[1]}`"
        )
    layer = check_compatible(model, sae, None, sites=(cache.site,))
    if layer not in cache.layers:
        raise GradsaeError(
            f"the SAE reads layer {layer} but the cache {cache.path} has layers {cache.layers}: "
            "cache that layer with `gradsae cache --layers`"
        )
    nsh = len(cache.shards)
    if not 0 < cfg.holdout_shards <= nsh:
        raise GradsaeError(f"--holdout-shards {cfg.holdout_shards} must be between 1 and the cache's {nsh} shards")
    shards = list(range(nsh - cfg.holdout_shards, nsh))
    is_gsae = sae.cfg.architecture == "gsae"
    sels = {"auto": (["gradient", "topk"] if is_gsae else ["topk"]), "topk": ["topk"], "gradient": ["gradient"]}[
        cfg.selection
    ]
    if "gradient" in sels and not is_gsae:
        raise GradsaeError(f"gradient selection needs a g-SAE, not a {sae.cfg.architecture} SAE: use --selection topk")
    if "gradient" in sels and not cache.has_grads:
        raise GradsaeError("gradient selection needs cached gradients: use a cache made with --grad")
    x, g = cache.load(layer, shards, grads="gradient" in sels)
    ids = torch.cat([torch.from_numpy(np.array(cache.tokens(i))).long() for i in shards])
    drop = int(cache.manifest["drop_first"])
    T = ids.shape[1]
    n_seq = ids.shape[0] if cfg.n_seqs <= 0 else min(cfg.n_seqs, ids.shape[0])
    rows = eval_rows(cfg, model, sae, T, n_seq)
    results, counts_by_sel = {}, {}
    for sel in sels:
        gg = g if sel == "gradient" else None
        m, counts = activation_metrics(sae, x, gg)
        tail = min(x.shape[0], 5 * cfg.dead_batch_tokens)
        _, tail_counts = activation_metrics(sae, x[-tail:], None if gg is None else gg[-tail:])
        m["misc"]["dead_frac_5batches"] = float((tail_counts == 0).float().mean())
        for key in ("dead_frac_train", "dead_frac_train_5batches"):
            m["misc"][key] = sae.cfg.metadata.get(key)
        gfull = None
        if gg is not None:  # [S, T, D] with zeros on the dropped positions
            gfull = torch.zeros(ids.shape[0], T, x.shape[1])
            gfull[:, drop:] = gg.reshape(ids.shape[0], T - drop, -1)
            gfull = gfull[:n_seq]
        m.update(model_metrics(model, sae, ids[:n_seq], gfull, drop, rows))
        m["misc"]["n_seqs_model_metrics"] = n_seq
        results[sel] = m
        counts_by_sel[sel] = counts
    main_sel = "topk" if "topk" in results else sels[0]
    alive = counts_by_sel[main_sel] > 0
    steer = None
    if cfg.steer_latents > 0 and cache.site == "hook_resid_post":  # the probe adds to the residual stream
        steer = steering_effect(model, sae, ids, alive, cfg, drop)
    maxcos = max_decoder_cosine(sae.W_dec)
    metrics = dict(results[main_sel])
    metrics["decoder"] = {"max_cos_mean": float(maxcos.mean()), "max_cos_median": float(maxcos.median())}
    density = counts_by_sel[main_sel].double() / max(1, int(x.shape[0]))
    metrics["sparsity"] = {**metrics["sparsity"], "density_median": float(density.median())}
    if steer:
        metrics["steering"] = {k: v for k, v in steer.items() if k not in ("latents", "assoc_per_latent")}
    out = Path(cfg.out).expanduser() if cfg.out else cache_dir() / "evals" / _sae_slug(cfg.sae)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "eval_type_id": "gradsae_core",
        "eval_config": asdict(cfg),
        "runtime": runtime,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "sae_name": cfg.sae,
        "sae_cfg": {
            "architecture": sae.cfg.architecture,
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "k": sae.cfg.k,
            "hook_name": sae.cfg.hook_name,
            "beta": sae.cfg.beta,
            "beta_mode": sae.cfg.beta_mode,
        },
        "model": model_name(model),
        "data": {
            "cache": str(cache.path),
            "shards": shards,
            "n_tokens": int(x.shape[0]),
            "context_length": T,
            "drop_first": drop,
        },
        "selection": main_sel,
        "eval_result_metrics": metrics,
        "eval_result_metrics_by_selection": results,
        "eval_result_details": (
            [{"steering_per_latent": {"latents": steer["latents"], "assoc": steer["assoc_per_latent"]}}]
            if steer
            else []
        )
        + [{"distributions": distributions(density, maxcos)}],
        "seconds": time.time() - t0,
    }
    write_json(out / "eval.json", result)
    if cfg.plots:
        _plots(out, counts_by_sel, int(x.shape[0]), maxcos, steer, f"{cfg.sae}")
    _print_summary(cfg.sae, results, steer, out)
    return result


def distributions(density: torch.Tensor, maxcos: torch.Tensor) -> dict:
    """Histograms for comparisons across SAEs (g-SAE paper §4.3 density CDFs, §4.4 decoder cosines):
    log10 activation density of every latent [C] (dead ones counted apart) in bins of 0.1 from -7 to 0, and
    each decoder row's max cosine to another row [C] in bins of 0.02 from -1 to 1."""
    alive = density > 0
    dens_edges = np.round(np.arange(-7.0, 0.01, 0.1), 2)
    cos_edges = np.round(np.arange(-1.0, 1.001, 0.02), 2)
    dens_hist = np.histogram(np.clip(torch.log10(density[alive]).numpy(), -7, 0), bins=dens_edges)[0]
    cos_hist = np.histogram(maxcos.float().numpy(), bins=cos_edges)[0]
    return {
        "density_log10_edges": dens_edges.tolist(),
        "density_log10_counts": dens_hist.tolist(),
        "dead": int((~alive).sum()),
        "max_cos_edges": cos_edges.tolist(),
        "max_cos_counts": cos_hist.tolist(),
    }


def _print_summary(name: str, results: dict, steer: dict | None, out: Path) -> None:
    print(f"eval {name}  ->  {out / 'eval.json'}")
    print(
        f"{'selection':<10} {'L0':>6} {'NMSE':>7} {'expl.var':>8} {'CE clean':>8} {'CE SAE':>8} "
        f"{'L_added':>8} {'KL':>7} {'dead':>6} {'dead5b':>6}"
    )
    for sel, m in results.items():
        r, p = m["reconstruction_quality"], m["model_performance_preservation"]
        print(
            f"{sel:<10} {m['sparsity']['l0']:6.1f} {r['nmse']:7.4f} {r['explained_variance']:8.4f} "
            f"{p['ce_loss_without_sae']:8.4f} {p['ce_loss_with_sae']:8.4f} {p['l_added']:8.4f} "
            f"{m['model_behavior_preservation']['kl_div_with_sae']:7.4f} {m['misc']['dead_frac']:6.3f} "
            f"{m['misc']['dead_frac_5batches']:6.3f}"
        )
    misc = next(iter(results.values()))["misc"]
    if misc.get("dead_frac_train") is not None:
        print(
            f"dead at the end of training: {misc['dead_frac_train']:.3f} (no activation in the window of tokens), "
            f"{misc.get('dead_frac_train_5batches') or 0:.3f} (none in 5 consecutive batches)"
        )
    if steer:
        print(
            "steering α: "
            + "  ".join(
                f"{a:g}: assoc {sa:.4f} other {so:.4f}"
                for a, sa, so in zip(steer["alphas"], steer["assoc_mean"], steer["other_mean"])
            )
        )
