"""The splice: put an SAE into the model at its site of block L (the residual stream after the block, the
attention or MLP output, or the attention heads' outputs before W_O: ``hooks.SPLICE_SITES``), optionally edit
its latents.

This module and ``capture.py`` register the hooks that read or change activations (``generate.contiguous_lm_head``
only gives the LM head a contiguous copy of its input).

- ``Splice(model, sae, ...)`` replaces Z [B, T, D] by decode(edit(encode(Z))) at every forward call
  (prompt, teacher-forced pass, every step of a KV-cached generation), exposes the latents H [B, T, C]
  (as a leaf with ``requires_grad`` when ``grad=True``), and removes its hook on exit, also on errors.
- ``RowEdit`` / ``LatentEdits``: per-row latent edits at absolute positions.

Recording activations without an SAE (``ResidualCapture``, ``capture``) is ``capture.py``'s business; ``run_trunk``
/ ``skip_trunk`` (blocks 0..L once for rows of one prompt) and ``AddAt`` (a probe) are here.

Error term (``error=``):

- ``"none"`` (paper-faithful): the model sees only the reconstruction x_hat.
- ``"keep"``: x_hat + (Z - x_hat).detach(): the output equals the clean model's until latents are edited,
  and gradients w.r.t. H are those of the reconstruction path.

Positions: the splice counts absolute positions. Our generation loop sets ``splice.offset`` before each
forward call, so an edit "from position p on" reaches the prompt and every generated token.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .capture import StopForward
from .errors import GradsaeError
from .hooks import (
    SPLICE_SITES,
    TRANSCODER_INPUTS,
    block,
    decoder_layers,
    join_output,
    resolve_layer,
    site_of,
    site_point,
    site_width,
    split_output,
)
from .saes.sae import SAE


# ---------------------------------------------------------------------------------------------
# Edits
# ---------------------------------------------------------------------------------------------


@dataclass
class RowEdit:
    """What to do to one row's latents.

    Attributes:
        zero: latent indices set to 0.
        set: {latent index: value} set (after zeroing): clamping.
        add: {latent index: alpha} added (after setting): the reconstruction moves by alpha * W_dec[c] (over
            the SAE's norm scaling factor, if it has one): steering along the latent's decoder direction.
        at: where the edit applies: ``"all"`` positions, ``"last"`` (the last prompt position and every
            generated token), ``"generated"`` (generated tokens only), an int position p (p and later),
            or ``"newest"`` (only the last position of each forward call: with generation *without* KV cache
            this is the authors' steering rule; with a cache it equals ``"last"``).
        until: if given, edits stop before this absolute position (e.g. the prompt end).
    """

    zero: Sequence[int] = ()
    set: dict[int, float] | None = None
    add: dict[int, float] | None = None
    at: str | int = "all"
    until: int | None = None


@dataclass
class LatentEdits:
    """Dense per-row edits for a batch of B rows and C latents.

    Attributes:
        zero: [B, C] bool, latents to zero (or None).
        set_mask: [B, C] bool, latents to overwrite (or None).
        set_values: [B, C] float, their values.
        add_values: [B, C] float, added after zeroing and setting (or None).
        start: [B] long, edits apply at absolute positions >= start[b] ...
        end: [B] long, ... and < end[b].
        only_newest: edits apply only at the last position of each forward call.
    """

    zero: torch.Tensor | None
    set_mask: torch.Tensor | None
    set_values: torch.Tensor | None
    start: torch.Tensor
    end: torch.Tensor | None = None
    only_newest: bool = False
    add_values: torch.Tensor | None = None

    @classmethod
    def from_rows(
        cls, rows: Sequence[RowEdit | None], d_sae: int, prompt_len: int, device: str | torch.device = "cpu"
    ) -> "LatentEdits":
        """Build dense edits; ``prompt_len`` is the (left-padded) prompt length T0 of the batch."""
        B = len(rows)
        zero = torch.zeros(B, d_sae, dtype=torch.bool)
        set_mask = torch.zeros(B, d_sae, dtype=torch.bool)
        set_values = torch.zeros(B, d_sae)
        add_values = torch.zeros(B, d_sae)
        start = torch.zeros(B, dtype=torch.long)
        end = torch.full((B,), 1 << 40, dtype=torch.long)
        newest = {r.at == "newest" for r in rows if r is not None}
        if len(newest) > 1:
            raise GradsaeError("'newest' edits cannot be mixed with other positions in one batch")
        for b, r in enumerate(rows):
            if r is None:
                start[b] = 1 << 40  # never
                continue
            if r.zero is not None and len(r.zero):
                idx = torch.as_tensor(list(r.zero), dtype=torch.long)
                _check_idx(idx, d_sae)
                zero[b, idx] = True
            if r.set:
                idx = torch.as_tensor(list(r.set.keys()), dtype=torch.long)
                _check_idx(idx, d_sae)
                set_mask[b, idx] = True
                set_values[b, idx] = torch.as_tensor(list(r.set.values()), dtype=torch.float32)
            if r.add:
                idx = torch.as_tensor(list(r.add.keys()), dtype=torch.long)
                _check_idx(idx, d_sae)
                add_values[b, idx] = torch.as_tensor(list(r.add.values()), dtype=torch.float32)
            start[b] = _start_position(r.at, prompt_len)
            if r.until is not None:
                end[b] = r.until
        return cls(
            zero.to(device) if zero.any() else None,
            set_mask.to(device) if set_mask.any() else None,
            set_values.to(device) if set_mask.any() else None,
            start.to(device),
            end.to(device),
            only_newest=newest == {True},
            add_values=add_values.to(device) if add_values.any() else None,
        )

    def apply(self, H: torch.Tensor, offset: int) -> torch.Tensor:
        """Edited latents for H [B, T, C] whose first position has absolute index ``offset``."""
        B, T, _ = H.shape
        pos = offset + torch.arange(T, device=H.device)
        if self.start.shape[0] != B:
            lo, hi = offset, offset + T  # a shared-prefix pass (B = 1) is fine if no edit is active in it
            end = self.end if self.end is not None else torch.full_like(self.start, 1 << 40)
            if B == 1 and not ((self.start < hi) & (end > lo)).any():
                return H
            raise GradsaeError(
                f"edits were built for {self.start.shape[0]} rows but the batch has {B} "
                "(or an edit is active inside a shared prefix)"
            )
        active = pos[None, :] >= self.start[:, None]  # [B, T]
        if self.end is not None:
            active = active & (pos[None, :] < self.end[:, None])
        if self.only_newest:
            active = active & (torch.arange(T, device=H.device) == T - 1)[None, :]
        if not active.any():
            return H
        a = active[:, :, None]
        if self.zero is not None:
            H = torch.where(a & self.zero[:, None, :], torch.zeros((), dtype=H.dtype, device=H.device), H)
        if self.set_mask is not None:
            H = torch.where(a & self.set_mask[:, None, :], self.set_values[:, None, :].to(H.dtype), H)
        if self.add_values is not None:
            H = H + a.to(H.dtype) * self.add_values[:, None, :].to(H.dtype)
        return H


def _check_idx(idx: torch.Tensor, d_sae: int) -> None:
    if idx.numel() and (idx.min() < 0 or idx.max() >= d_sae):
        raise GradsaeError(
            f"latent index {int(idx.max() if idx.max() >= d_sae else idx.min())} is out of range "
            f"for an SAE with {d_sae} latents"
        )


def _start_position(at: str | int, prompt_len: int) -> int:
    if isinstance(at, int):
        return at
    if at == "all":
        return 0
    if at in ("last", "newest"):
        return prompt_len - 1
    if at == "generated":
        return prompt_len
    raise GradsaeError(f"unknown edit position {at!r}: use all, last, generated, newest or an integer")


# ---------------------------------------------------------------------------------------------
# The splice
# ---------------------------------------------------------------------------------------------


def splice_point(
    model: nn.Module, sae: SAE, layer: int | str | None = None, sites: Sequence[str] = SPLICE_SITES
) -> tuple[int, str]:
    """(block L, site) where ``sae`` splices: the site is the SAE's own (a transcoder's: where it writes; never
    moved to another); the block is ``layer`` when given (an index, or a hook name, which must name the same site),
    else the SAE's hook's. Checks the site is one of ``sites`` and the widths against the model's there."""
    if sae.cfg.is_transcoder:
        read_site(sae)  # one line for a transcoder gradsae cannot splice
    own = site_of(sae.cfg.hook_name_out or sae.cfg.hook_name)
    site = own[1] if own is not None else "hook_resid_post"  # a name gradsae does not know: the user vouches
    given = site_of(layer) if isinstance(layer, str) and not layer.strip().lstrip("-").isdigit() else None
    if given is not None and given[1] != site:
        raise GradsaeError(
            f"--layer {layer!r} names the site {given[1]}, but the SAE was trained at {site} "
            f"({sae.cfg.hook_name}): give a block index, or an SAE trained at that site"
        )
    if site not in sites:
        raise GradsaeError(
            f"the SAE's hook {sae.cfg.hook_name!r} is at {site}: this command splices only at "
            f"{', '.join(sites)}; use an SAE trained there"
        )
    if layer not in ("", None):
        idx = resolve_layer(model, given[0] if given is not None else layer)
    elif own is not None:
        idx = resolve_layer(model, own[0])
    else:
        idx = resolve_layer(model, sae.cfg.hook_name or None)  # one line: no layer given
    if sae.cfg.metadata.get("writes_mlp_module_output") and hasattr(block(model, idx), "post_feedforward_layernorm"):
        raise GradsaeError(
            f"{sae.describe()} was trained on the MLP module's own output, which this model's blocks normalise "
            "before adding (Gemma 2/3): blocks.L.hook_mlp_out is after that norm, so gradsae refuses to splice it there"
        )
    width = site_width(model, idx, site)
    if sae.d_in != width or sae.cfg.out_dim != width:
        what = "hidden size" if site != "attn.hook_z" else "attention heads' width (n_heads x d_head)"
        dims = f"d_in={sae.d_in}" + (f", d_out={sae.cfg.out_dim}" if sae.cfg.is_transcoder else "")
        raise GradsaeError(f"SAE {dims} does not match the model's {what} {width}: use an SAE trained on this model")
    return idx, site


def read_site(sae: SAE) -> str | None:
    """Where a transcoder reads (one of ``hooks.TRANSCODER_INPUTS``; it writes the MLP output of the same block);
    None for an SAE, which reads where it writes."""
    if not sae.cfg.is_transcoder:
        return None
    src, dst = site_of(sae.cfg.hook_name), site_of(sae.cfg.hook_name_out)
    if src is None or dst is None or src[1] not in TRANSCODER_INPUTS or dst[1] != "hook_mlp_out" or src[0] != dst[0]:
        raise GradsaeError(
            f"a transcoder from {sae.cfg.hook_name!r} to {sae.cfg.hook_name_out!r}: gradsae splices transcoders that "
            "replace one block's MLP (blocks.L.ln2.hook_normalized or blocks.L.hook_mlp_in -> blocks.L.hook_mlp_out)"
        )
    return src[1]


def check_compatible(
    model: nn.Module, sae: SAE, layer: int | str | None, sites: Sequence[str] = ("hook_resid_post",)
) -> int:
    """The block where ``sae`` splices (``splice_point``); by default refuses SAEs not at the residual stream,
    for the commands that read or change the residual stream itself."""
    return splice_point(model, sae, layer, sites)[0]


class Splice:
    """Context manager that splices ``sae`` at its site of block ``layer`` (default: the SAE's own hook).

    Args:
        model: a Hugging Face causal LM.
        sae: the SAE (its hook's site: ``hooks.SPLICE_SITES``).
        layer: block index or hook name (of the SAE's site); None uses ``sae.cfg.hook_name``.
        error: ``"none"`` or ``"keep"`` (see module docstring).
        edits: ``LatentEdits`` or a list of ``RowEdit`` (one per row; built at the first forward call).
        grad: make H a leaf that requires grad (for ∂target/∂H); the graph below layer L is cut. The SAE's own
            weights never get gradients inside a splice (``requires_grad`` is off until exit): a backward through
            it would otherwise also build dW_dec, [C, D] — per row, for a batched matmul.
        capture: keep H of every forward call in ``self.captured`` (the last one is ``self.latents``).
        keep_first: each row's first ``keep_first`` real tokens keep the model's own activation (e.g. the
            BOS / attention-sink position an SAE was not trained on); 0 splices every position. Rows start at
            ``row_start`` (set by the generation loop and by influence from the attention mask).
        latent_fn: optional map applied to H [B, T, C] right after encoding (before it becomes the grad leaf),
            e.g. ``lambda H: H * alpha`` for integrated gradients.
        pass_grad: (``grad`` with ``error="keep"``) the site's output also passes the gradient of the activation
            it replaces through unchanged (identity), so splices below this one still get theirs: several SAEs
            scored in one backward.

    Attributes:
        latents: H [B, T, C] of the last forward call (when ``grad`` or ``capture``).
        offset: absolute position of the next forward call's first token (set by the generation loop).
        prompt_len: padded prompt length T0 that ``RowEdit`` positions such as "last" refer to (set by the
            generation loop; otherwise the length of the first forward call).
    """

    def __init__(
        self,
        model: nn.Module,
        sae: SAE,
        layer: int | str | None = None,
        error: str = "none",
        edits: LatentEdits | Sequence[RowEdit | None] | None = None,
        grad: bool = False,
        capture: bool = False,
        latent_fn=None,
        keep_first: int = 0,
        pass_grad: bool = False,
    ):
        if error not in ("none", "keep"):
            raise GradsaeError(f"unknown error mode {error!r}: use 'none' (paper) or 'keep'")
        if pass_grad and error != "keep":
            raise GradsaeError("several SAEs are scored together with their error terms kept: use --error keep")
        self.pass_grad = pass_grad
        self.model, self.sae, self.error = model, sae, error
        self.layer, self.site = splice_point(model, sae, layer)
        self.read_site = read_site(sae)  # a transcoder's input; None: the SAE reads the site it writes
        self._x_in: torch.Tensor | None = None
        self.edits = edits
        self.grad, self.capture = grad, capture
        self.keep_first = keep_first
        self.latent_fn = latent_fn
        self.latents: torch.Tensor | None = None
        self.captured: list[torch.Tensor] = []
        self.offset = 0
        self.prompt_len: int | None = None  # set by the generation loop; else the first call's length
        self.row_start: torch.Tensor | None = None  # [B] first real (non-pad) position per row, for keep_first
        self._handles: list = []

    def _dense_edits(self, B: int, T: int, device) -> LatentEdits | None:
        e = self.edits
        if e is None or isinstance(e, LatentEdits):
            return e
        T0 = self.prompt_len if self.prompt_len is not None else T
        self.edits = LatentEdits.from_rows(list(e), self.sae.d_sae, prompt_len=T0, device=device)
        return self.edits

    @property
    def trunk_layer(self) -> int:
        """The last block whose output the splice does not change (-1: none): the shared trunk runs blocks
        0..trunk_layer once."""
        return self.layer if self.site == "hook_resid_post" else self.layer - 1

    def _pre_hook(self, module, args):
        """A site that is a module's input (``attn.hook_z``): the same splice on its first argument."""
        return (self._hook(module, args, args[0]), *args[1:])

    def _read_input(self, module, args):
        """A transcoder's input, kept for the hook at its output (the same forward call)."""
        self._x_in = args[0]

    def _hook(self, module, args, out):
        Z, rest = split_output(out)
        sae = self.sae
        live = Z.to(sae.W_dec.dtype)
        Zs = live.detach()
        X = Zs if self.read_site is None else self._x_in.to(sae.W_dec.dtype).detach()
        with torch.enable_grad() if self.grad else torch.no_grad():
            H0 = sae.encode(X).detach()
            H = H0 if self.latent_fn is None else self.latent_fn(H0)
            if self.grad:
                H = H.requires_grad_(True)
            new = self._rebuild(X, Zs, H, H0)
        if self.grad or self.capture:
            self.latents = H
        if self.capture:
            self.captured.append(H.detach())
        if self.keep_first:
            new = self._keep_first_positions(Zs, new)
        if self.pass_grad and self.grad:  # same value; d(new)/dZ = I besides d(new)/dH = W_dec
            new = live + (new - Zs)
        self.offset += Z.shape[1]
        return join_output(new.to(Z.dtype), rest)

    def _keep_first_positions(self, Z: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Each row's first ``keep_first`` real tokens keep the model's own activation (row-relative, so
        left padding is accounted for through ``row_start``)."""
        B, T, _ = Z.shape
        start = self.row_start
        if start is None or start.shape[0] != B:
            start = torch.zeros(B, dtype=torch.long, device=Z.device)
        pos = self.offset + torch.arange(T, device=Z.device)
        keep = pos[None, :] < (start.to(Z.device)[:, None] + self.keep_first)  # [B, T]
        if not keep.any():
            return new
        return torch.where(keep[..., None], Z.detach().to(new.dtype), new)

    def _rebuild(self, X: torch.Tensor, Z: torch.Tensor, H: torch.Tensor, H0: torch.Tensor) -> torch.Tensor:
        """New activation at the site from (possibly transformed) latents H of the input X (Z itself for an SAE,
        a transcoder's input otherwise); H0 are the plain encoder latents, which define the error term
        Z - output(H0) in ``keep`` mode."""
        edits = self._dense_edits(H.shape[0], H.shape[1], H.device)
        He = H if edits is None else edits.apply(H, self.offset)
        skip = self.sae.skip(X)

        def output(h):
            return self.sae.decode(h) if skip is None else self.sae.decode(h) + skip

        if self.error == "none":
            return output(He)
        if self.grad:  # keep the reconstruction path so d(out)/dH = W_dec
            return output(He) + (Z - output(H0)).detach()
        if He is H0:
            return Z
        return Z + self.sae.decode_delta(He - H0)

    def __enter__(self) -> "Splice":
        if self.read_site is not None:
            src, _ = site_point(self.model, self.layer, self.read_site)  # an input site
            self._handles.append(src.register_forward_pre_hook(self._read_input))
        module, where = site_point(self.model, self.layer, self.site)
        if where == "input":
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
        else:
            self._handles.append(module.register_forward_hook(self._hook))
        self.offset = 0
        self._param_grads = [(p, p.requires_grad) for p in self.sae.parameters()]
        for p, _ in self._param_grads:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for p, flag in reversed(getattr(self, "_param_grads", [])):
            p.requires_grad_(flag)
        self._param_grads = []


# ---------------------------------------------------------------------------------------------
# Shared trunk: blocks 0..L computed once for rows that repeat one prompt
# ---------------------------------------------------------------------------------------------


def run_trunk(model: nn.Module, layer: int, **inputs):
    """Run blocks 0..``layer`` only and return block ``layer``'s raw output (before any splice: the
    recording hook runs first and stops the forward pass). A KV cache passed in ``inputs`` is filled for
    blocks 0..layer."""
    holder = {}

    def hook(module, args, out):
        holder["out"] = out
        raise StopForward

    handle = block(model, layer).register_forward_hook(hook, prepend=True)
    try:
        model(**inputs)
    except StopForward:
        pass
    finally:
        handle.remove()
    if "out" not in holder:
        raise GradsaeError(f"block {layer} was not reached in the forward pass")
    return holder["out"]


_MISSING = object()


@contextmanager
def skip_trunk(model: nn.Module, layer: int, recorded, rows: int):
    """Inside the block, blocks 0..``layer`` do not compute: each returns ``recorded`` (block ``layer``'s
    output from ``run_trunk`` on one row) repeated to ``rows`` rows. Forward hooks on block ``layer`` (the
    splice) still run. The blocks' own ``forward`` (including one wrapped by accelerate) is restored."""
    Z, rest = split_output(recorded)
    out = join_output(Z.expand(rows, *Z.shape[1:]).contiguous(), rest)
    blocks = decoder_layers(model)[: layer + 1]
    saved = [b.__dict__.get("forward", _MISSING) for b in blocks]

    def stub(*args, **kwargs):
        return out

    try:
        for b in blocks:
            b.forward = stub
        yield
    finally:
        for b, f in zip(blocks, saved):
            if f is _MISSING:
                b.__dict__.pop("forward", None)
            else:
                b.forward = f


class AddAt:
    """Add δ_p to the residual stream after block ``layer`` at one position of row p (a probe for
    sensitivity analyses and the steering eval). deltas [B, D]; the batch must have B rows. ``deltas`` may be
    replaced between forward calls; None leaves the stream unchanged."""

    def __init__(self, model: nn.Module, layer: int | str, pos: int, deltas: torch.Tensor | None):
        self.model, self.layer, self.pos, self.deltas = model, resolve_layer(model, layer), pos, deltas
        self._handle = None

    def _hook(self, module, args, out):
        if self.deltas is None:
            return None
        Z, rest = split_output(out)
        Z = Z.clone()
        Z[:, self.pos] += self.deltas.to(Z.dtype)
        return join_output(Z, rest)

    def __enter__(self) -> "AddAt":
        self._handle = block(self.model, self.layer).register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
