"""``gradsae sensitivity``: the g-SAE paper's sensitivity analyses (Olmo et al. §2.3, §2.4, §4.4).

Three measurements of how the model's loss responds to directions in the residual stream, all with
L = the summed next-token cross-entropy of a sequence and ∇ₓL its gradient at one position:

* **Directional derivatives (Fig. 2).** At every requested layer, |∇ₓL(x_i) · u| for unit directions u of three
  kinds: towards another real activation (x_j − x_i, another position of the corpus), isotropic random
  directions, and covariance-adjusted random directions (Σ^½ z with Σ the activations' covariance, after
  Lee & Heimersheim 2024). The paper's claim: activation differences have larger derivatives from the early
  layers on.
* **First-order vs norm (Fig. 3).** Isotropic perturbations δ of one position's activation, with norms drawn
  uniformly with mean m and standard deviation m/2 (the paper's rule), for several m given as fractions of
  the median activation norm at that layer. Spearman correlation over perturbations of the true |ΔL| with
  the first-order estimate |∇ₓL · δ| and with ‖δ‖. The paper's claim: the first-order estimate correlates
  better, most at small perturbations.
* **Decoder-similarity tails (Table 2).** For each SAE, every decoder column's cosine with its nearest other
  column; latents sampled from the left tail (below the 5th percentile), the middle (47.5–52.5th) and the
  right tail (above the 95th), and the average |∇ₓL · W_dec[c]/‖W_dec[c]‖| over all positions of the
  sequences. The paper reports a larger right-tail value for g-SAE and E2E than for TopK.

Results: ``sensitivity.json`` (written part by part, so a rerun with the same config skips finished parts),
``summary.md`` and the figures ``fig2_directional.png``, ``fig3_spearman.png``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import opt
from .errors import GradsaeError
from .io import atomic_write_bytes, atomic_write_text, output_lock, read_json, write_json
from .options import ModelOptions, start

log = logging.getLogger(__name__)

KINDS = ("activation difference", "covariance-adjusted", "isotropic")
TAILS = ("left tail", "middle", "right tail")


@dataclass(kw_only=True)
class SensitivityConfig(ModelOptions):
    """The g-SAE paper's sensitivity analyses: directional derivatives (Fig. 2), first-order vs norm (Fig. 3),
    derivatives along decoder directions by nearest-neighbour similarity (Table 2)."""

    layers: list[int] = opt([3, 6, 9, 12, 15, 18, 21, 24, 27], "blocks whose output is analysed (Fig. 2)", low=0)
    fig3_layers: list[int] = opt(
        [6, 9, 22], "blocks for the perturbation analysis (Fig. 3; one forward per perturbation, so fewer)", low=0
    )
    sae: list[str] = opt([], "SAEs for the decoder-similarity analysis (Table 2), comma-separated; empty = skip")
    data: list[str] = opt(["sample"], "corpus (see gradsae.corpus): files, folders, 'sample' or hf:NAME")
    text_field: str = opt("text", "field holding the text in .jsonl files and HF datasets")
    context_length: int = opt(128, "tokens per sequence")
    sequences: int = opt(32, "token sequences for Fig. 2 and Table 2 (the paper's Table 2 uses 300)")
    positions: int = opt(2048, "positions sampled per layer for Fig. 2 (pairs, random directions)")
    scales: list[float] = opt(
        [0.01, 0.03, 0.1, 0.3, 1.0],
        "Fig. 3 mean perturbation norms, as fractions of the median activation norm at the layer",
    )
    perturbations: int = opt(256, "Fig. 3 perturbations per layer and scale")
    per_position: int = opt(32, "Fig. 3 perturbations that share one sequence position (one batch)")
    latents_per_tail: int = opt(30, "Table 2 latents sampled from each part of the similarity histogram")
    seed: int = opt(0, "seed of the corpus sample, positions, directions and latents")
    out: str = opt("results/sensitivity", "results folder")

    def __post_init__(self):
        super().__post_init__()
        for name in ("sequences", "positions", "perturbations", "per_position", "latents_per_tail"):
            if getattr(self, name) < 1:
                raise GradsaeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.context_length < 3:
            raise GradsaeError(f"--context-length must be at least 3, got {self.context_length}")
        if not self.layers and not self.fig3_layers and not self.sae:
            raise GradsaeError("nothing to do: give --layers, --fig3-layers or --sae")
        bad = [s for s in self.scales if not (math.isfinite(s) and s > 0)]
        if bad:
            raise GradsaeError(f"--scales must be positive numbers, got {bad}")
        if not self.out.strip():
            raise GradsaeError("--out is empty: name a results folder")


# ---------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------


def unit(v: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm. [N, D] -> [N, D]."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def random_directions(acts: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Positions i and unit directions of the three kinds. acts [N, D] (real activations) -> (i [n], {kind: [n, D]}).

    activation difference: x_j − x_i towards another real activation j ≠ i (Heimersheim & Mendel's
    perturbation from x_i towards x_j); isotropic: N(0, I); covariance-adjusted: N(0, Σ) with Σ the
    covariance of ``acts`` (its spectrum, not its mean, is matched). Every kind is paired with the same
    positions i, so the kinds are compared on the same gradients.
    """
    N, D = acts.shape
    i = torch.randint(0, N, (n,), generator=gen)
    j = (i + torch.randint(1, N, (n,), generator=gen)) % N  # j ≠ i
    diffs = acts[j] - acts[i]
    iso = torch.randn(n, D, generator=gen, dtype=acts.dtype)
    centred = acts - acts.mean(0)
    cov = centred.T @ centred / max(1, N - 1)
    evals, evecs = torch.linalg.eigh(cov.double())
    root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    cov_dirs = torch.randn(n, D, generator=gen, dtype=torch.float64) @ root
    return i, {
        "activation difference": unit(diffs),
        "isotropic": unit(iso),
        "covariance-adjusted": unit(cov_dirs.to(acts.dtype)),
    }


def uniform_norms(mean: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n norms uniform with the given mean and standard deviation mean/2 (the paper's Fig. 3 rule). -> [n]."""
    half = mean * math.sqrt(3) / 2  # a uniform on [m − a, m + a] has sd a/√3
    return mean - half + 2 * half * torch.rand(n, generator=gen)


def nearest_cosine(W_dec: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Each decoder row's cosine with its most similar other row. W_dec [C, D] -> [C]."""
    W = unit(W_dec.float())
    out = torch.empty(W.shape[0])
    for s in range(0, W.shape[0], chunk):
        sims = W[s : s + chunk] @ W.T
        idx = torch.arange(s, min(s + chunk, W.shape[0]))
        sims[idx - s, idx] = -2.0
        out[s : s + chunk] = sims.max(dim=1).values
    return out


def tail_latents(sim: torch.Tensor, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Up to n latents from the left tail (< 5th percentile), middle (47.5–52.5th) and right tail (> 95th)."""
    q = torch.quantile(sim, torch.tensor([0.05, 0.475, 0.525, 0.95]))
    parts = {"left tail": sim < q[0], "middle": (sim >= q[1]) & (sim <= q[2]), "right tail": sim > q[3]}
    out = {}
    for name, mask in parts.items():
        idx = mask.nonzero().flatten()
        out[name] = idx[torch.randperm(len(idx), generator=gen)[:n]]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% Student-t interval (``gradsae.stats``); the mean three times for one value."""
    from .stats import t_interval

    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    lo, hi = t_interval(x.tolist()) or (m, m)
    return m, lo, hi


# ---------------------------------------------------------------------------------------------
# Model plumbing
# ---------------------------------------------------------------------------------------------


def capture_with_grads(model, rows: torch.Tensor, layers: list[int], batch_size: int = 8):
    """Activations and ∇ₓL (L = the summed next-token CE) at every layer, ``capture.capture`` in batches.
    rows [S, T] -> ({layer: x [S, T, D]}, {layer: g [S, T, D]}), float32 on the CPU."""
    from .capture import capture

    acts: dict[int, list] = {l: [] for l in layers}
    grads: dict[int, list] = {l: [] for l in layers}
    dev = next(model.parameters()).device
    for s in range(0, len(rows), batch_size):
        a, g = capture(model, rows[s : s + batch_size].to(dev), layers, grad=True)
        for l in layers:
            acts[l].append(a[l].cpu())
            grads[l].append(g[l].cpu())
    return {l: torch.cat(v) for l, v in acts.items()}, {l: torch.cat(v) for l, v in grads.items()}


def perturbation_effects(model, ids: torch.Tensor, layer: int, pos: int, deltas: torch.Tensor) -> torch.Tensor:
    """ΔL of one sequence for each δ_p added to the activation after ``layer`` at ``pos``.
    ids [T], deltas [P, D] -> [P].

    An unperturbed copy rides in the same batch, and only the predictions at positions ≥ pos (the ones δ can
    reach) are differenced, so ΔL keeps its precision when it is far smaller than the summed loss.
    """
    from .splice import AddAt

    d = torch.cat([torch.zeros_like(deltas[:1]), deltas])
    rows = ids.unsqueeze(0).expand(d.shape[0], -1)
    with torch.no_grad(), AddAt(model, layer, pos, d):
        logits = model(input_ids=rows).logits[:, pos:-1].float()
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), rows[:, pos + 1 :], reduction="none").double()
    return (ce[1:] - ce[:1]).sum(1)


# ---------------------------------------------------------------------------------------------
# The three analyses
# ---------------------------------------------------------------------------------------------


@dataclass
class DirectionalRow:
    """Fig. 2: mean |∇ₓL · u| at one layer for one kind of direction, with its 95% interval."""

    layer: int
    kind: str
    mean: float
    lo: float
    hi: float
    n: int


@dataclass
class Fig3Row:
    """Fig. 3: Spearman correlations of |ΔL| at one layer and perturbation scale."""

    layer: int
    scale: float
    mean_norm: float
    rho_first_order: float
    rho_norm: float
    n: int
    first_order_rel_error: float  # median |ΔL − ∇ₓL·δ| / |ΔL|


@dataclass
class TailRow:
    """Table 2: mean |∇ₓL · ŵ_c| over positions, averaged over latents of one part of the similarity histogram."""

    sae: str
    layer: int
    part: str
    mean: float
    lo: float
    hi: float
    n_latents: int
    sim_lo: float
    sim_hi: float


def directional(
    acts: torch.Tensor, grads: torch.Tensor, n: int, gen: torch.Generator, layer: int
) -> list[DirectionalRow]:
    """acts, grads [N, D] at one layer (positions pooled) -> one row per kind of direction."""
    at, dirs = random_directions(acts, n, gen)
    rows = []
    for kind in KINDS:
        vals = (grads[at] * dirs[kind]).sum(-1).abs().numpy()
        rows.append(DirectionalRow(layer, kind, *mean_ci(vals), n=n))
    return rows


def fig3(
    model,
    rows: torch.Tensor,
    acts: torch.Tensor,
    grads: torch.Tensor,
    layer: int,
    cfg: SensitivityConfig,
    gen: torch.Generator,
    bar=None,
) -> list[Fig3Row]:
    """rows [S, T]; acts, grads [S, T, D] at ``layer`` -> one row per scale."""
    S, T, D = acts.shape
    med = float(acts[:, 1:].norm(dim=-1).median())
    out = []
    for scale in cfg.scales:
        true, first, norms = [], [], []
        left = cfg.perturbations
        while left > 0:
            P = min(cfg.per_position, left)
            s = int(torch.randint(0, S, (1,), generator=gen))
            t = int(torch.randint(1, T - 1, (1,), generator=gen))  # not the attention sink, not the last token
            r = uniform_norms(scale * med, P, gen)
            delta = unit(torch.randn(P, D, generator=gen)) * r[:, None]
            dev = next(model.parameters()).device
            true.append(perturbation_effects(model, rows[s].to(dev), layer, t, delta.to(dev)).abs().cpu())
            first.append((delta @ grads[s, t]))
            norms.append(r)
            left -= P
            if bar is not None:
                bar.update(P)
        dl, fo, nm = torch.cat(true).numpy(), torch.cat(first).numpy(), torch.cat(norms).numpy()
        rel = float(np.median(np.abs(dl - np.abs(fo)) / np.maximum(dl, 1e-12)))
        out.append(Fig3Row(layer, scale, float(scale * med), spearman(dl, np.abs(fo)), spearman(dl, nm), len(dl), rel))
    return out


def decoder_tails(sae, name: str, grads: torch.Tensor, n: int, gen: torch.Generator) -> list[TailRow]:
    """grads [N, D] at the SAE's layer -> one row per part of the nearest-neighbour similarity histogram."""
    W = sae.W_dec.detach().float().cpu()
    sim = nearest_cosine(W)
    parts = tail_latents(sim, n, gen)
    out = []
    for part in TAILS:
        idx = parts[part]
        if len(idx) == 0:
            continue
        per_latent = (grads @ unit(W[idx]).T).abs().mean(0).numpy()  # [K]
        m, lo, hi = mean_ci(per_latent)
        out.append(TailRow(name, sae.layer, part, m, lo, hi, len(idx), float(sim[idx].min()), float(sim[idx].max())))
    return out


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass
class SensitivityResults:
    """What ``sensitivity.json`` holds; each part is filled when it finishes."""

    config: dict
    directional: list[DirectionalRow] = field(default_factory=list)
    fig3: list[Fig3Row] = field(default_factory=list)
    tails: list[TailRow] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "SensitivityResults":
        d = read_json(path)
        try:
            return cls(
                d["config"],
                [DirectionalRow(**r) for r in d["directional"]],
                [Fig3Row(**r) for r in d["fig3"]],
                [TailRow(**r) for r in d["tails"]],
                d["done"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise GradsaeError(
                f"{path} was not written by gradsae sensitivity ({type(e).__name__}: {str(e)[:60]}): use another "
                "--out or delete the file"
            ) from None


def _corpus_rows(tok, cfg: SensitivityConfig) -> torch.Tensor:
    from .corpus import iter_documents, iter_token_rows

    rows = []
    for r in iter_token_rows(iter_documents(cfg.data, cfg.text_field), tok, cfg.context_length, prepend_bos=True):
        rows.append(torch.from_numpy(r).long())
        if len(rows) >= cfg.sequences * 4:
            break
    if len(rows) < 2:
        raise GradsaeError(
            f"the corpus gives {len(rows)} sequence(s) of {cfg.context_length} tokens, fewer than 2: "
            "add data or lower --context-length"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(rows), generator=g)[: cfg.sequences]
    return torch.stack([rows[i] for i in pick.tolist()])


def run(cfg: SensitivityConfig) -> SensitivityResults:
    from tqdm.auto import tqdm

    from .saes import load_sae
    from .hooks import n_layers
    from .model import load_model

    out = Path(cfg.out)
    with output_lock(out):
        rt = start(cfg, "sensitivity")
        conf = asdict(cfg)
        for key in ("progress", "threads", "device"):  # how it runs, not what it computes
            conf.pop(key)
        path = out / "sensitivity.json"
        res = SensitivityResults(conf)
        if path.exists():
            old = SensitivityResults.load(path)
            if old.config != conf:
                raise GradsaeError(f"{path} was written with other settings: use another --out or delete it")
            res = old
        model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
        model.requires_grad_(False)
        L = n_layers(model)
        saes = [(s, load_sae(s, device=str(next(model.parameters()).device))) for s in cfg.sae]
        for name, s in saes:
            if s.layer is None:
                raise GradsaeError(f"SAE {name} has no layer in its hook name: it cannot be placed in the model")
        layers = sorted(set(cfg.layers) | set(cfg.fig3_layers) | {s.layer for _, s in saes})
        bad = [l for l in layers if not 0 <= l < L]
        if bad:
            raise GradsaeError(f"layer(s) {bad} do not exist: the model has blocks 0..{L - 1}")
        rows = _corpus_rows(tok, cfg)
        rt.announce("sensitivity")
        acts, grads = capture_with_grads(model, rows, layers)
        # position 0 (the attention sink) and the last position (no next token: ∇ₓL = 0) are left out
        flat = {
            l: (acts[l][:, 1:-1].reshape(-1, acts[l].shape[-1]), grads[l][:, 1:-1].reshape(-1, grads[l].shape[-1]))
            for l in layers
        }

        def save(part: str):
            res.done.append(part)
            write_json(path, res)

        for l in cfg.layers:
            part = f"fig2/L{l}"
            if part not in res.done:
                res.directional += directional(*flat[l], cfg.positions, torch.Generator().manual_seed(cfg.seed + l), l)
                save(part)
        todo = [l for l in cfg.fig3_layers if f"fig3/L{l}" not in res.done]
        bar = tqdm(
            total=len(todo) * len(cfg.scales) * cfg.perturbations,
            desc="fig. 3 perturbations",
            unit="pert",
            disable=not cfg.progress,
        )
        for l in todo:
            res.fig3 += fig3(
                model, rows, acts[l], grads[l], l, cfg, torch.Generator().manual_seed(cfg.seed + 1000 + l), bar
            )
            save(f"fig3/L{l}")
        bar.close()
        for name, sae in saes:
            part = f"table2/{name}"
            if part not in res.done:
                res.tails += decoder_tails(
                    sae, name, flat[sae.layer][1], cfg.latents_per_tail, torch.Generator().manual_seed(cfg.seed)
                )
                save(part)
        atomic_write_text(out / "summary.md", summary_markdown(res))
        for fname, png in figures(res).items():
            atomic_write_bytes(out / fname, png)
        write_json(out / "config.json", {**conf, "runtime": rt.as_config()})
        print(summary_markdown(res))
        print(f"results: {out}/")
        return res


# ---------------------------------------------------------------------------------------------
# Tables and figures
# ---------------------------------------------------------------------------------------------


def summary_markdown(res: SensitivityResults) -> str:
    lines = ["# Sensitivity analyses (g-SAE §2.3, §2.4, §4.4)", ""]
    if res.directional:
        lines += [
            "## Directional derivatives |∇ₓL · u| (Fig. 2)",
            "",
            "| layer | " + " | ".join(KINDS) + " | act. diff / isotropic | act. diff above isotropic "
            "(95% intervals separate) | act. diff above covariance-adjusted |",
            "|---|" + "---|" * (len(KINDS) + 3),
        ]
        for l in sorted({r.layer for r in res.directional}):
            by = {r.kind: r for r in res.directional if r.layer == l}
            cells = [f"{by[k].mean:.3g} [{by[k].lo:.3g}, {by[k].hi:.3g}]" for k in KINDS]
            a, c, i = by["activation difference"], by["covariance-adjusted"], by["isotropic"]

            def above(b):
                return "yes" if a.lo > b.hi else "below" if a.hi < b.lo else "no (overlap)"

            lines.append(f"| {l} | " + " | ".join(cells) + f" | {a.mean / i.mean:.2f} | {above(i)} | {above(c)} |")
        lines.append("")
    if res.fig3:
        lines += [
            "## Spearman correlation of |ΔL| with the first-order estimate and with ‖δ‖ (Fig. 3)",
            "",
            "| layer | scale (× median ‖x‖) | mean ‖δ‖ | ρ(|ΔL|, |∇ₓL·δ|) | ρ(|ΔL|, ‖δ‖) "
            "| median rel. error of first order | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res.fig3:
            lines.append(
                f"| {r.layer} | {r.scale:g} | {r.mean_norm:.3g} | {r.rho_first_order:.3f} | {r.rho_norm:.3f} "
                f"| {r.first_order_rel_error:.2f} | {r.n} |"
            )
        lines.append("")
    if res.tails:
        lines += [
            "## |∇ₓL · ŵ| along decoder directions by nearest-neighbour cosine (Table 2)",
            "",
            "| SAE | layer | part | cosine range | mean |∇ₓL·ŵ| [95% CI] | latents |",
            "|---|---|---|---|---|---|",
        ]
        for r in res.tails:
            lines.append(
                f"| {r.sae} | {r.layer} | {r.part} | {r.sim_lo:.2f}–{r.sim_hi:.2f} | {r.mean:.3g} "
                f"[{r.lo:.3g}, {r.hi:.3g}] | {r.n_latents} |"
            )
        lines.append("")
    lines.append("L is the summed next-token cross-entropy of a sequence; ∇ₓL its gradient at one position.")
    return "\n".join(lines) + "\n"


def figures(res: SensitivityResults) -> dict[str, bytes]:
    from .viz.plots import figure_png, pyplot

    plt = pyplot()

    def png(fig) -> bytes:
        return figure_png(fig, dpi=110, tight=True)

    figs = {}
    if res.directional:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for kind in KINDS:
            rs = sorted((r for r in res.directional if r.kind == kind), key=lambda r: r.layer)
            x = [r.layer for r in rs]
            ax.errorbar(
                x,
                [r.mean for r in rs],
                yerr=[[r.mean - r.lo for r in rs], [r.hi - r.mean for r in rs]],
                marker="o",
                capsize=3,
                label=kind,
            )
        ax.set_xlabel("layer (block output)")
        ax.set_ylabel("mean |∇ₓL · u|")
        ax.set_yscale("log")
        ax.set_title("Directional derivatives (g-SAE Fig. 2)")
        ax.legend()
        figs["fig2_directional.png"] = png(fig)
    if res.fig3:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for l in sorted({r.layer for r in res.fig3}):
            rs = [r for r in res.fig3 if r.layer == l]
            axes[0].plot([r.scale for r in rs], [r.rho_first_order for r in rs], marker="o", label=f"layer {l}")
            axes[1].plot([r.scale for r in rs], [r.rho_norm for r in rs], marker="o", label=f"layer {l}")
        for ax, title in zip(axes, ["ρ(|ΔL|, |∇ₓL·δ|)", "ρ(|ΔL|, ‖δ‖)"]):
            ax.set_xscale("log")
            ax.set_xlabel("mean ‖δ‖ / median ‖x‖")
            ax.set_title(title)
            ax.axhline(0, color="grey", lw=0.5)
        axes[0].set_ylabel("Spearman ρ")
        axes[0].legend()
        figs["fig3_spearman.png"] = png(fig)
    return figs
