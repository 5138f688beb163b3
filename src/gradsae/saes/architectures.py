"""The one registry of SAE architectures: how each encodes, whether and how it trains, how sae-lens runs it.

Every other module asks this registry (``get(name)``) instead of naming architectures: ``sae.SAE`` (parameters,
encode), ``formats`` (the sae-lens export name, whether k is required), ``training`` (which step an architecture
takes and what the step needs). Adding one is one module that calls ``register(Architecture(...))`` and is
imported once (see ARCHITECTURE.md); ``tests/test_architectures.py`` adds a toy one that way and trains it.

Built in:

==========  ======  =====================================  =========================  ==================
name        family  inference                              training (gradsae train)   sae-lens runs it as
==========  ======  =====================================  =========================  ==================
relu        dense   relu(pre)                              -                          standard
jumprelu    dense   relu(pre) where pre > threshold        -                          jumprelu
batchtopk   dense   as jumprelu (its inference threshold)  -                          jumprelu
topk        topk    the k largest pre, relu                MSE (+ AuxK)               topk
gsae        topk    the k largest of the g-SAE score       MSE (+ AuxK), needs ∇ₓL    topk
e2e         topk    as topk                                KL of the model's output   topk
==========  ======  =====================================  =========================  ==================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import GradsaeError

# (pre-activations [..., C], the gradient in latent space W_dec ∇ₓL [..., C], beta, scale) -> score [..., C]
ScoreFn = Callable[[torch.Tensor, torch.Tensor | None, float, "float | torch.Tensor"], torch.Tensor]


@dataclass(frozen=True)
class Training:
    """How ``gradsae train`` trains an architecture."""

    loss: str = "mse"
    """``mse``: reconstruct x from the captured activations (+ AuxK); ``kl``: match the model's next-token
    distribution with x̂ spliced in (E2E; needs the model's blocks above the layer every step)."""
    needs_grad: bool = False
    """The step needs ∇ₓL at the layer (the model's backward pass every step)."""
    uses_beta: bool = False
    """Trained once per ``--beta`` value (named ``<arch>_k<k>_b<beta>``)."""


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    """``topk``: encodes by selecting k latents (a sparse code); ``dense``: an activation function of pre."""
    saelens: str
    """The sae-lens architecture that runs it at inference (what ``save_saelens`` writes)."""
    needs_k: bool = False
    params: tuple[str, ...] = ()
    """Parameters [C] beyond W_enc, b_enc, W_dec, b_dec (``threshold``)."""
    buffers: tuple[str, ...] = ()
    """Scalar buffers (the g-SAE's ``grad_scale``)."""
    score: ScoreFn | None = None
    """TopK family: the selection score from the pre-activations and the latent-space gradient (None when the
    step or the caller has no gradient); None: select by pre."""
    training: Training | None = None
    """None: inference only."""
    doc: str = ""

    @property
    def sparse(self) -> bool:
        return self.family == "topk"


REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add an architecture (a name registered twice with different fields is refused)."""
    if arch.family not in ("topk", "dense"):
        raise ValueError(f"architecture {arch.name!r}: family must be 'topk' or 'dense', not {arch.family!r}")
    if arch.family == "dense" and arch.training is not None:
        raise ValueError(f"architecture {arch.name!r}: gradsae trains TopK-family SAEs only")
    old = REGISTRY.get(arch.name)
    if old is not None and old != arch:
        raise ValueError(f"architecture {arch.name!r} is registered already")
    REGISTRY[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    """The registered architecture ``name``; one line naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise GradsaeError(f"unknown SAE architecture {name!r}: use one of {', '.join(REGISTRY)}") from None


def trainable() -> list[str]:
    return [a.name for a in REGISTRY.values() if a.training is not None]


# ---------------------------------------------------------------------------------------------
# The built-in architectures' math
# ---------------------------------------------------------------------------------------------


def gsae_selection_score(
    z: torch.Tensor, grad_latent: torch.Tensor | None, beta: float, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """The g-SAE selection score ``z + (beta / scale) * z * |grad_latent|``.

    Args:
        z: pre-activations [N, C].
        grad_latent: the model-loss gradient projected into latent space, ``grad_x @ W_dec.T`` [N, C];
            None gives plain TopK (score = z).
        beta: weight of the gradient term (0 gives plain TopK).
        scale: divides the gradient term (1 in the paper's raw form; a running RMS in the scale-free form).
    """
    if grad_latent is None or beta == 0:
        return z
    return z + (beta / scale) * z * grad_latent.abs()


register(Architecture("relu", "dense", "standard", doc="relu(pre)"))
register(Architecture("jumprelu", "dense", "jumprelu", params=("threshold",), doc="relu(pre) where pre > threshold"))
register(
    Architecture(
        "batchtopk",
        "dense",
        "jumprelu",
        needs_k=True,
        params=("threshold",),
        doc="BatchTopK at inference: JumpReLU with its learned global threshold",
    )
)
register(Architecture("topk", "topk", "topk", needs_k=True, training=Training(), doc="the k largest pre-activations"))
register(
    Architecture(
        "gsae",
        "topk",
        "topk",
        needs_k=True,
        buffers=("grad_scale",),
        score=gsae_selection_score,
        training=Training(needs_grad=True, uses_beta=True),
        doc="g-SAE (Olmo et al.): selection by z + β/σ · z ∘ |W_dec ∇ₓL|; plain TopK without a gradient",
    )
)
register(
    Architecture(
        "e2e", "topk", "topk", needs_k=True, training=Training(loss="kl"), doc="E2E (Braun et al.): TopK trained on KL"
    )
)

BUILT_IN = tuple(REGISTRY)  # the names above; REGISTRY also holds any registered later
