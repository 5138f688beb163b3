"""A toy architecture, added the way a new one is: this module and its one registration.

``abstopk_toy`` selects the k latents of largest |pre| and keeps relu(pre) there (so a latent chosen for a
large negative pre-activation stays silent): distinguishable from TopK in a test, trainable by the MSE step."""

import torch

from gradsae.saes.architectures import Architecture, Training, register


def abs_score(z: torch.Tensor, grad_latent, beta: float, scale) -> torch.Tensor:
    return z.abs()


TOY = register(
    Architecture("abstopk_toy", "topk", "topk", needs_k=True, score=abs_score, training=Training(), doc="a test toy")
)
