"""The one generation loop: greedy decoding of a left-padded batch, with or without KV cache.

Rows stop independently at EOS or at a stop string (default: newline); a spliced SAE and its edits stay
in force at every step because ``Splice.offset`` is advanced to each step's absolute position.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import GradsaeError
from .kvcache import cache_kwargs, new_cache, returned_cache, set_returned_cache


@dataclass
class Batch:
    """A left-padded prompt batch: ``input_ids`` and ``attention_mask`` [B, T0]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))

    def repeat(self, n: int) -> "Batch":
        """Each row repeated n times in place (row 0 n times, then row 1, ...)."""
        return Batch(self.input_ids.repeat_interleave(n, 0), self.attention_mask.repeat_interleave(n, 0))


@dataclass
class Generation:
    """Result of ``greedy_generate``.

    Attributes:
        tokens: per row, the generated token ids up to (not including) EOS; may include the stop string's token.
        texts: per row, the decoded answer cut at the first stop string.
        prompt_len: padded prompt length T0.
        steps: forward calls made.
    """

    tokens: list[list[int]]
    texts: list[str]
    prompt_len: int
    steps: int = 0


def encode_prompts(tokenizer, prompts: Sequence[str], device="cpu", add_special_tokens: bool = True) -> Batch:
    """Tokenise and left-pad prompts."""
    if not prompts:
        raise GradsaeError("no prompts to encode")
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    return Batch(enc["input_ids"], enc["attention_mask"]).to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def parse_stop(s: str) -> tuple[str, ...]:
    """Stop strings from a comma-separated option; a literal backslash-n means newline."""
    return tuple(p.replace("\\n", "\n") for p in s.split(",") if p)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut], cut < len(text)


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    batch: Batch,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    splice=None,
    use_cache: bool = True,
    shared_prefix: int = 0,
    shared_trunk: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> Generation:
    """Greedy-decode every row of ``batch``.

    Args:
        splice: an entered ``Splice`` (or None); its ``offset`` is kept equal to each call's first position.
        use_cache: False re-runs the whole sequence every step (the GradSAE authors' loop; slow, for checks).
        shared_prefix: P > 0 computes the first P prompt positions once (batch of 1) and copies the KV cache
            to every row. Rows must be identical and unpadded there, and no latent edit may be active before
            position P (e.g. steering at the last prompt token: P = T0 - 1). Results are unchanged.
        shared_trunk: rows repeat one unpadded prompt and differ only in their latent edits (the perturbation
            and steering grids): blocks 0..L (L = the splice layer) run once on one row for the prompt, the
            other blocks on every row. Results are unchanged; the prompt pass costs (n_layers - L - 1) /
            n_layers of a full one, plus one row.
        on_step: called as ``on_step(done, max_new_tokens)`` after every decoding step (progress; an exception
            it raises, e.g. a cancellation, ends the generation).
    """
    device = batch.input_ids.device
    B = batch.input_ids.shape[0]
    eos = set(_eos_ids(tokenizer, model))
    ids, mask = batch.input_ids, batch.attention_mask
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    past = None
    steps = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cur_ids, cur_pos = ids, position_ids(mask)
    if splice is not None:
        splice.prompt_len = ids.shape[1]
        splice.row_start = (mask == 0).sum(1)  # left padding per row
    if shared_prefix:
        P = int(shared_prefix)
        if not use_cache:
            raise GradsaeError("shared_prefix needs the KV cache (use_cache=True)")
        if not 0 < P < ids.shape[1]:
            raise GradsaeError(f"shared_prefix={P} must be between 1 and the prompt length - 1 ({ids.shape[1] - 1})")
        if not (mask[:, :P].all() and (ids[:, :P] == ids[:1, :P]).all()):
            raise GradsaeError(
                "shared_prefix: rows differ or are padded inside the prefix; use it only for rows "
                "that repeat one prompt"
            )
        if splice is not None:
            splice.offset = 0
        out = model(input_ids=ids[:1, :P], attention_mask=mask[:1, :P], position_ids=cur_pos[:1, :P], use_cache=True)
        steps += 1
        past = returned_cache(out)
        if B > 1:
            past.batch_repeat_interleave(B)
        cur_ids, cur_pos = ids[:, P:], cur_pos[:, P:]
    trunk = bool(shared_trunk) and B > 1 and past is None
    if trunk:
        if splice is None or not use_cache:
            raise GradsaeError("shared_trunk needs a splice (its layer is where rows start to differ) and the KV cache")
        if not (mask.all() and (ids == ids[:1]).all()):
            raise GradsaeError("shared_trunk: rows differ or are padded; use it only for rows that repeat one prompt")
        trunk = splice.trunk_layer >= 0  # a splice inside block 0 leaves no block to share
    for step in range(max_new_tokens):
        if splice is not None:
            splice.offset = ids.shape[1] - cur_ids.shape[1]
        kw = dict(
            input_ids=cur_ids,
            attention_mask=mask,
            position_ids=cur_pos,
            use_cache=use_cache,
            **cache_kwargs(model, past),
        )
        if step == 0 and trunk:
            out = _prefill_shared_trunk(model, splice, kw)
        else:
            out = _forward_last(model, kw)
        steps += 1
        nxt = out.logits[:, -1, :].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        for b in range(B):
            if done[b]:
                continue
            t = int(nxt[b])
            if t in eos:
                done[b] = True
                continue
            out_tokens[b].append(t)
            if stop:  # leading whitespace/newlines do not stop a row: only a stop string after content
                _, hit = cut_at_stop(tokenizer.decode(out_tokens[b]).lstrip(), stop)
                if hit:
                    done[b] = True
        if on_step is not None:
            on_step(step + 1, max_new_tokens)
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if use_cache:
            past = returned_cache(out)
            cur_ids = nxt[:, None]
            cur_pos = position_ids(mask)[:, -1:]
        else:
            cur_ids, cur_pos = ids, position_ids(mask)
    texts = [cut_at_stop(tokenizer.decode(t, skip_special_tokens=True).lstrip(), stop)[0].strip() for t in out_tokens]
    return Generation(out_tokens, texts, batch.prompt_len, steps)


def generate_edited(
    model,
    tokenizer,
    sae,
    prompts: Sequence[str],
    edits=None,
    *,
    layer=None,
    error: str = "none",
    latent_fn=None,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    use_cache: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    fix: str = "use fewer rows or a shorter prompt",
) -> Generation:
    """Greedy answers through the SAE splice with per-row latent edits (``splice.RowEdit`` or None per row;
    ``latent_fn`` as in ``Splice``), after checking that the batch fits the device memory (``fix`` says what to
    change when it does not). Rows that repeat one prompt run blocks 0..L once (``shared_trunk``)."""
    from . import memory
    from .splice import Splice

    batch = encode_prompts(tokenizer, list(prompts), device=sae.W_dec.device)
    R = batch.input_ids.shape[0]
    memory.check(
        f"a batch of {R} generated rows",
        memory.peak(
            [memory.generation(memory.sae_shape(sae), R, batch.prompt_len, max_new_tokens)], memory.ModelShape.of(model)
        ),
        str(sae.W_dec.device),
        fix,
    )
    same = R > 1 and len(set(prompts)) == 1
    with Splice(
        model,
        sae,
        layer=layer,
        error=error,
        edits=list(edits) if edits is not None and any(r is not None for r in edits) else None,
        latent_fn=latent_fn,
    ) as s:
        return greedy_generate(
            model,
            tokenizer,
            batch,
            max_new_tokens=max_new_tokens,
            stop=stop,
            splice=s,
            use_cache=use_cache,
            shared_trunk=use_cache and same,
            on_step=on_step,
        )


def _forward_last(model, kw: dict):
    with contiguous_lm_head(model):
        try:  # only the last position's logits are needed (saves the [B, T, V] prompt logits)
            return model(**kw, logits_to_keep=1)
        except TypeError:
            return model(**kw)


def _contiguous_input(module, args):
    # a copy even when the slice counts as contiguous (one row: its batch stride still spans the whole sequence)
    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


@contextmanager
def contiguous_lm_head(model):
    """Inside, the LM head gets a contiguous copy of its input. With ``logits_to_keep`` the model slices its hidden
    states to the last positions, and torch's matmul of that non-contiguous [B, M, D] slice with W_U expands W_U
    to a batched matmul and copies it once per row, forward and backward ([V, D] each: 1.8 GiB per row for
    Gemma-2-9B); a copy of the few positions costs B x M x D."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handle = head.register_forward_pre_hook(_contiguous_input) if isinstance(head, torch.nn.Module) else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _prefill_shared_trunk(model, splice, kw: dict):
    """Prompt pass for B identical rows: blocks 0..L on row 0, then blocks L+1.. on all B rows from the
    recorded block-L output, L the splice's ``trunk_layer`` (the splice applies each row's edits above it); the
    KV caches are merged."""
    from .splice import run_trunk, skip_trunk

    L, B = splice.trunk_layer, kw["input_ids"].shape[0]
    cache_a, cache_b = new_cache(model), new_cache(model)
    if not hasattr(cache_a, "layers"):
        raise GradsaeError(
            "shared_trunk needs a transformers version whose DynamicCache has per-layer entries "
            "(>= 4.56); run without it"
        )
    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in kw.items()}
    one.update(use_cache=True, **cache_kwargs(model, cache_a))
    with skip_trunk(model, L, run_trunk(model, L, **one), B):
        out = _forward_last(model, dict(kw, use_cache=True, **cache_kwargs(model, cache_b)))
    for layer in cache_a.layers[: L + 1]:
        layer.batch_repeat_interleave(B)
    cache_b.layers = list(cache_a.layers[: L + 1]) + list(cache_b.layers[L + 1 :])
    set_returned_cache(out, cache_b)
    return out


def _eos_ids(tokenizer, model) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    e = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(int(x) for x in e)
    for extra in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>"):
        tid = tokenizer.convert_tokens_to_ids(extra) if extra in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(int(tid))
    return sorted(ids)
