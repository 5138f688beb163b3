"""The ``gradsae dashboard`` options (``DashboardConfig``)."""

from __future__ import annotations

from dataclasses import dataclass


from ..config import opt
from ..errors import GradsaeError
from ..saes import DEFAULT_SAE
from ..options import SAE_HELP, ModelOptions


@dataclass(kw_only=True)
class DashboardConfig(ModelOptions):
    """Build a dashboard for an SAE: per latent its top-activating contexts, random contexts from lower
    activation bands, top-influence contexts (grad x act on the next-token loss), density and histogram,
    promoted/suppressed tokens and decoder neighbours; writes dashboard.json and a self-contained
    dashboard.html. Resumable (rerun the same command), mergeable across torchrun ranks."""

    sae: str = opt(DEFAULT_SAE, SAE_HELP)
    data: list[str] = opt(
        ["sample"],
        "corpus: files/folders (.txt, .jsonl, .json, optionally .gz), hf:NAME, or 'sample' (the bundled sample text)",
    )
    text_field: str = opt("text", "field holding the text in .jsonl/.json records")
    out: str = opt("dashboard", "output folder (dashboard.json, dashboard.html, state/)")
    max_tokens: int = opt(200_000, "corpus tokens read (whole rows of --context-length)")
    influence_tokens: int = opt(
        20_000,
        "tokens (the first rows) that also get the influence pass (whole model + "
        "one backward, several times the activation-only cost on a CPU); -1 = all, "
        "0 = none",
        low=-1,
    )
    context_length: int = opt(128, "tokens per row (BOS included)")
    batch_size: int = opt(
        8, "rows per forward pass; auto (or 0): the most that fit the device memory (estimated)", low=0, auto=True
    )
    skip_first: int = opt(
        1,
        "positions at the start of each row left out of every statistic (BOS / "
        "attention sink, which SAEs are usually not trained on)",
    )
    n_top: int = opt(8, "top-activating contexts kept per latent")
    n_band: int = opt(1, "random contexts kept per latent and half-decade activation band")
    n_influence: int = opt(5, "top-influence contexts kept per latent")
    left: int = opt(10, "window: tokens before the maximum")
    right: int = opt(4, "window: tokens after the maximum")
    n_predictions: int = opt(5, "model's top next-token predictions kept at each influence maximum")
    n_promoted: int = opt(8, "promoted and suppressed tokens per latent")
    n_neighbours: int = opt(6, "decoder neighbours per latent")
    error: str = opt(
        "keep",
        "splice error term in the influence pass: keep (the model's own output; "
        "gradients through the reconstruction) or none (the model sees the reconstruction)",
        choices=("keep", "none"),
    )
    layer: str = opt("", "block index or hook name; default: the SAE's own hook")
    checkpoint_every: int = opt(25, "batches between state checkpoints")
    html_latents: int = opt(0, "cards in dashboard.html: 0 = every latent that fired, N = the N most frequent")
    seed: int = opt(0, "seed of the random band samples")
    render: str = opt(
        "",
        "only (re)write OUT/dashboard.html from this dashboard.json(.gz) or SAE name (no model, "
        "no corpus), e.g. for the dashboards shipped with the bundled SAEs",
    )

    def __post_init__(self):
        super().__post_init__()
        if not str(self.out).strip():
            raise GradsaeError("--out is empty: name the dashboard's folder, e.g. --out dashboard")
        for name in (
            "max_tokens",
            "context_length",
            "n_top",
            "n_influence",
            "n_band",
            "n_predictions",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise GradsaeError(f"--{name.replace('_', '-')} {getattr(self, name)}: give at least 1")
        for name in ("batch_size", "left", "right", "skip_first", "n_promoted", "n_neighbours", "html_latents"):
            if getattr(self, name) < 0:
                raise GradsaeError(f"--{name.replace('_', '-')} {getattr(self, name)}: give 0 or more")
        if self.skip_first >= self.context_length - 1:
            raise GradsaeError(
                f"--skip-first {self.skip_first} leaves no tokens in rows of {self.context_length}: lower it"
            )
