"""Recording activations without an SAE: the residual stream after given blocks (or another site of each), and
∇ₓL of the summed next-token loss there.

- ``ResidualCapture(model, layers, ...)`` records Z at one or several layers (optionally as gradient leaves, for
  dL/dx), and can stop the forward pass after the last layer it needs;
- ``capture`` / ``capture_with_loss`` is the one pass that returns activations (and ∇ₓL) at several layers, for the
  trainer, the cache and the sensitivity analysis.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .hooks import join_output, resolve_layer, site_point, split_output


class StopForward(Exception):
    pass


class ResidualCapture:
    """Record the residual stream after the given blocks (or another site of each: ``site``).

    Args:
        layers: block indices (or hook names).
        site: where in each block (``hooks.site_point``): ``hook_resid_post`` (the block's output),
            ``hook_attn_out``, ``hook_mlp_out`` or ``attn.hook_z``.
        grad: make the lowest captured activation a gradient leaf (graph below it is cut) and retain
            gradients of the others; after ``loss.backward()`` read ``self.grads[layer]``.
        stop: raise after the highest layer so the rest of the model is skipped (no logits; use
            ``run(...)``), only when ``grad`` is False.

    Attributes:
        acts: {layer: Z [B, T, D]}; grads: {layer: dL/dZ [B, T, D]} after backward.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[int | str],
        grad: bool = False,
        stop: bool = False,
        site: str = "hook_resid_post",
    ):
        self.model = model
        self.layers = sorted({resolve_layer(model, l) for l in layers})
        self.grad, self.stop, self.site = grad, stop and not grad, site
        self.acts: dict[int, torch.Tensor] = {}
        self._handles = []

    def _record(self, layer: int, Z: torch.Tensor) -> torch.Tensor | None:
        """Keep Z (a gradient leaf at the lowest layer with ``grad``); the tensor to pass on, or None."""
        if self.grad:
            if layer == self.layers[0]:
                Z = Z.detach().requires_grad_(True)
            else:
                Z.retain_grad()
            self.acts[layer] = Z
            return Z
        self.acts[layer] = Z.detach()
        if self.stop and layer == self.layers[-1]:
            raise StopForward
        return None

    def _make_hook(self, layer: int, where: str):
        if where == "input":

            def pre_hook(module, args):
                Z = self._record(layer, args[0])
                return None if Z is None else (Z, *args[1:])

            return pre_hook

        def hook(module, args, out):
            Z, rest = split_output(out)
            Z = self._record(layer, Z)
            return None if Z is None else join_output(Z, rest)

        return hook

    @property
    def grads(self) -> dict[int, torch.Tensor]:
        return {l: z.grad for l, z in self.acts.items() if z.grad is not None}

    def run(self, **inputs):
        """Call the model; returns its output, or None when the forward was stopped early."""
        try:
            return self.model(**inputs)
        except StopForward:
            return None

    def __enter__(self) -> "ResidualCapture":
        self.acts = {}
        self._handles = []
        for l in self.layers:
            module, where = site_point(self.model, l, self.site)
            register = module.register_forward_pre_hook if where == "input" else module.register_forward_hook
            self._handles.append(register(self._make_hook(l, where)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def summed_next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Sum over all sequences and positions of -log p(token[t+1] | ...). logits [B, T, V], ids [B, T] -> []."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="sum"
    )


def autocast(device: str, dtype: str):
    """The model pass's autocast context (``dtype`` bfloat16), or nothing for float32."""
    import contextlib

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def capture_with_loss(
    model: nn.Module,
    ids: torch.Tensor,
    layers: list[int],
    grad: bool,
    dtype: str = "float32",
    site: str = "hook_resid_post",
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], float]:
    """The one activation (+ ∇ₓL) capture: the residual stream after each block of ``layers`` (or ``site`` of
    each) for ids [B, T] in one pass; without ``grad`` the forward stops after the highest, with it the graph is
    cut below the lowest and one backward of L = ``summed_next_token_ce`` gives every layer's gradient (a token's
    gradient does not depend on the batch).

    -> ({L: Z [B, T, D] float32}, {L: dL/dZ [B, T, D] float32} or {} without ``grad``, L or nan)."""
    attn = torch.ones_like(ids)
    with ResidualCapture(model, layers, grad=grad, stop=not grad, site=site) as cap, autocast(str(ids.device), dtype):
        if grad:
            with torch.enable_grad():
                out = cap.run(input_ids=ids, attention_mask=attn)
                loss = summed_next_token_ce(out.logits, ids)
                loss.backward()
            grads = {l: g.detach().float() for l, g in cap.grads.items()}
            loss_v = float(loss.detach())
        else:
            with torch.no_grad():
                cap.run(input_ids=ids, attention_mask=attn)
            grads, loss_v = {}, float("nan")
        acts = {l: a.detach().float() for l, a in cap.acts.items()}
    return acts, grads, loss_v


def capture(
    model: nn.Module,
    ids: torch.Tensor,
    layers: list[int],
    grad: bool,
    dtype: str = "float32",
    site: str = "hook_resid_post",
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``capture_with_loss`` without the loss: ({L: Z [B, T, D]}, {L: dL/dZ [B, T, D]} or {})."""
    acts, grads, _ = capture_with_loss(model, ids, layers, grad, dtype, site)
    return acts, grads
