"""``InfluenceOptions``: the scoring flags every command shares, passed whole to ``influence``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


from ..config import opt
from ..errors import GradsaeError
from .rules import AGGREGATIONS, ERRORS, METHODS, POSITIONS, TARGETS


@dataclass(kw_only=True)
class InfluenceOptions:
    """How influence is computed: the flags every scoring command shares (``gradsae influence``, ``explain``,
    the SQuAD experiments inherit them), passed whole to ``influence``."""

    target: str = opt(
        "logprob",
        "what p(Y|H) means: logprob (log p of the whole output), prob, logit, first "
        "(p of the first output token), bracket (the authors' code: p of the last output token "
        "that contains '[')",
        choices=TARGETS,
    )
    aggregation: str = opt(
        "relu-mean",
        "per-token -> per-latent: relu-mean (authors' code), mean (paper text: signed mean, keep g_c > 0) or signed",
        choices=AGGREGATIONS,
    )
    positions: str = opt("all", "positions scored: all (prompt + output) or prompt", choices=POSITIONS)
    method: str = opt("grad", "grad (grad x act), exact (ablation) or ig (integrated gradients)", choices=METHODS)
    error: str = opt(
        "none", "splice error term: none (paper: the model sees the reconstruction) or keep", choices=ERRORS
    )
    ig_steps: int = opt(16, "integrated-gradient steps (--method ig)", low=1)
    exact_latents: int = opt(
        0,
        "exact: ablate only the top-N by |grad|, top-N by activation and N random "
        "active latents (0 = every active latent)",
        low=0,
    )
    seed: int = opt(0, "seed (random candidates for --method exact)")

    def __post_init__(self):
        if self.exact_latents is None:  # the library's old spelling of "all"
            self.exact_latents = 0
        for name, allowed in (
            ("target", TARGETS),
            ("aggregation", AGGREGATIONS),
            ("positions", POSITIONS),
            ("method", METHODS),
            ("error", ERRORS),
        ):
            if getattr(self, name) not in allowed:
                raise GradsaeError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.ig_steps < 1:
            raise GradsaeError(f"--ig-steps {self.ig_steps}: integrated gradients need at least 1 step")
        if self.exact_latents < 0:
            raise GradsaeError(f"--exact-latents {self.exact_latents}: give 0 (all) or a positive count")

    def influence_options(self) -> "InfluenceOptions":
        """Only these fields (a command config that inherits them carries many more)."""
        return InfluenceOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(InfluenceOptions)})


# ---------------------------------------------------------------------------------------------
