"""The teacher-forced batch (``Packed``: prompt + output tokens, left-padded) and its target; answer and token
texts; generating outputs to explain; the tokens a latent promotes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..generate import contiguous_lm_head, encode_prompts, greedy_generate, position_ids
from ..hooks import unembedding
from ..saes.sae import SAE
from ..splice import Splice
from .rules import BRACKET, target_from_logits


@dataclass
class Packed:
    """A teacher-forced batch: ``ids``/``mask`` [B, T] left-padded; outputs are each row's last M_b tokens."""

    ids: torch.Tensor
    mask: torch.Tensor
    n_prompt: list[int]
    n_out: list[int]
    lengths: list[int]
    picks: list[int] | None = None  # per row, the output token the ``bracket`` target is (0-based)

    @property
    def T(self) -> int:
        return self.ids.shape[1]

    def repeat(self, n: int) -> "Packed":
        """Row 0 repeated n times (IG steps, batched ablations)."""
        return Packed(
            self.ids.expand(n, -1),
            self.mask.expand(n, -1),
            self.n_prompt * n,
            self.n_out * n,
            self.lengths * n,
            self.picks * n if self.picks is not None else None,
        )

    def out_block(self, M: int):
        """Output ids and mask right-aligned in a [B, M] block (M = max output length); with ``picks`` the mask
        marks only each row's picked token."""
        B = self.ids.shape[0]
        out_ids = self.ids[:, self.T - M :]
        out_mask = torch.zeros(B, M, dtype=torch.long, device=self.ids.device)
        for b, m in enumerate(self.n_out):
            if m and self.picks is not None:
                out_mask[b, M - m + self.picks[b]] = 1
            elif m:
                out_mask[b, M - m :] = 1
        return out_ids, out_mask

    def score_mask(self, positions: str, target: str) -> torch.Tensor:
        """[B, T] the positions whose influence is aggregated: every input position that can affect the
        target (``all``), or the prompt only (``prompt``; also what ``first`` can depend on)."""
        B, T = self.ids.shape
        mask = torch.zeros(B, T, dtype=torch.bool, device=self.ids.device)
        for b in range(B):
            start = T - self.lengths[b]
            if target == "bracket" and self.picks is not None and positions == "all":
                end = start + self.n_prompt[b] + self.picks[b]  # the positions the authors' forward pass had
            else:
                end = T - 1 if positions == "all" and target != "first" else start + self.n_prompt[b]
            mask[b, start:end] = True
        return mask


# ---------------------------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------------------------


def join_ids(tok, prompt: str, output: str) -> tuple[list[int], list[int]]:
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    if output and not output[:1].isspace() and prompt and not prompt[-1:].isspace():
        output = " " + output  # joined as text would be: "Answer:" + " Paris"
    o = tok(output, add_special_tokens=False)["input_ids"] if output else []
    return p, o


def answer_ids(tok, generated: Sequence[int], stop: Sequence[str] = ("\n",)) -> list[int]:
    """The generated tokens up to the first one that contains a stop string after some content."""
    out: list[int] = []
    for t in generated:
        text = tok.decode(out + [t]).lstrip()
        if any(s in text for s in stop):
            break
        out.append(t)
    return out


def token_texts(tok, ids: Sequence[int], max_pending: int = 8) -> list[str]:
    """Each token's text, one per token. A character split over several tokens (emoji and many scripts in
    byte-level BPE) is shown whole on the token that completes it, the tokens before it show "" — never
    the replacement character U+FFFD that decoding a lone byte gives."""
    out: list[str] = []
    start = 0  # first token whose text is not shown yet
    for i in range(len(ids)):
        piece = tok.decode([int(t) for t in ids[start : i + 1]])
        incomplete = piece.endswith("\ufffd") and i + 1 < len(ids) and i + 1 - start < max_pending
        if incomplete:
            out.append("")
            continue
        out.append(piece)
        start = i + 1
    return out


def bracket_index(tok, out_ids: Sequence[int]) -> int | None:
    """Index of the last output token whose text contains ``[`` (the authors' target step), or None."""
    idx = [m for m, t in enumerate(out_ids) if BRACKET in tok.decode([int(t)])]
    return idx[-1] if idx else None


def pack(tok, pairs: Sequence[tuple[list[int], list[int]]], device, picks: list[int] | None = None) -> Packed:
    seqs = [p + o for p, o in pairs]
    T = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s) :] = torch.as_tensor(s)
        mask[b, T - len(s) :] = 1
    return Packed(
        ids.to(device),
        mask.to(device),
        [len(p) for p, _ in pairs],
        [len(o) for _, o in pairs],
        [len(s) for s in seqs],
        picks,
    )


def forward_target(model, packed: Packed, target: str, splice: Splice | Sequence[Splice] | None = None) -> torch.Tensor:
    """Run the teacher-forced batch and return the target per row [B] (keeps only the logits needed); the
    splice(s) count positions from the batch's start."""
    for s in [splice] if isinstance(splice, Splice) else splice or []:
        s.offset, s.prompt_len = 0, packed.T
        s.row_start = (packed.mask == 0).sum(1)
    M = max(max(packed.n_out), 1)
    kw = dict(input_ids=packed.ids, attention_mask=packed.mask, position_ids=position_ids(packed.mask))
    with contiguous_lm_head(model):  # no copy of W_U per row (see there)
        try:
            logits = model(**kw, logits_to_keep=M + 1).logits
        except TypeError:
            logits = model(**kw).logits
    logits = logits[:, -(M + 1) : -1].float()  # logits[:, j] predicts the j-th of the last M tokens
    out_ids, out_mask = packed.out_block(M)
    return target_from_logits(logits, out_ids, out_mask, target)


def promoted_tokens(model, tok, sae: SAE, latents: Sequence[int], n: int = 8) -> dict[int, list[str]]:
    """The n tokens each latent's decoder direction promotes most: top of W_U · W_dec[c] (logit lens)."""
    if not len(latents):
        return {}
    W_U = unembedding(model)
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)
    dirs = sae.W_dec[idx].to(W_U.device, W_U.dtype)  # [K, D]
    top = (dirs @ W_U.T).topk(n, dim=-1).indices  # [K, n]
    return {int(c): [tok.decode([int(t)]) for t in row] for c, row in zip(idx.tolist(), top.tolist())}


def generate_outputs(
    model,
    tok,
    sae: SAE,
    prompts: Sequence[str],
    *,
    layer=None,
    error: str = "none",
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    keep_first: int = 0,
) -> list[list[int]]:
    """Greedy answers through the splice, as token ids cut at the stop string."""
    device = sae.W_dec.device
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        batch = encode_prompts(tok, prompts[i : i + batch_size], device=device)
        with Splice(model, sae, layer=layer, error=error, keep_first=keep_first) as s:
            gen = greedy_generate(model, tok, batch, max_new_tokens=max_new_tokens, stop=stop, splice=s)
        out.extend(answer_ids(tok, t, stop) for t in gen.tokens)
    return out
