"""The model side: one batch's evidence (activations, influence) and the streaming pass over a corpus
that fills a ``DashboardState``, resumable and split across torchrun ranks."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

import torch

from .config import DashboardConfig
from .state import BatchEvidence, DashboardState, update_state

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The model side of one batch
# ---------------------------------------------------------------------------------------------


def batch_evidence(
    model,
    sae,
    layer: int,
    ids: torch.Tensor,
    rows: torch.Tensor,
    *,
    skip_first: int,
    influence: bool,
    error: str = "keep",
    n_pred: int = 5,
) -> BatchEvidence:
    """Latents (and, with ``influence``, grad x act on the rows' next-token log-likelihood) for ids [B, T].

    Activation-only batches read the latents at the SAE's site (the splice with its error term: the model is
    unchanged) and stop the forward pass after block ``layer``; influence batches run the whole model with the SAE
    spliced in (``error``) and one backward pass from Σ_m log p(x_{m+1} | x_≤m).
    """
    from ..capture import ResidualCapture
    from ..splice import Splice

    B, T = ids.shape
    n_tok = B * max(T - skip_first, 0)
    dev = sae.W_dec.device
    if not influence:
        with torch.no_grad(), Splice(model, sae, layer=layer, error="keep", capture=True) as s:
            with ResidualCapture(model, [layer], stop=True) as cap:  # registered after: stops after the splice
                cap.run(input_ids=ids, use_cache=False)
            H = s.latents.float()
        H[:, :skip_first] = 0
        return BatchEvidence(ids, rows, H, n_tok)
    with Splice(model, sae, layer=layer, error=error, grad=True) as s:
        logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V]
        V = logits.shape[-1]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1).to(logits.device), reduction="sum"
        )
        (-nll).backward()  # target: Σ log p(next token); rows are independent
        Hl = s.latents
        g = (Hl.grad * Hl).detach().float()
        H = Hl.detach().float()
    with torch.no_grad():
        lg = logits.detach().float()
        lse = lg.logsumexp(-1)  # [B, T]
        top = lg.topk(n_pred, dim=-1)
        pred_logp = top.values - lse[..., None]
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], 1).to(lg.device)
        next_logp = lg.gather(-1, nxt[..., None]).squeeze(-1) - lse
        next_logp[:, -1] = 0.0
    del logits, lg
    H[:, :skip_first] = 0
    g[:, :skip_first] = 0
    return BatchEvidence(
        ids, rows, H.to(dev), n_tok, g.to(dev), top.indices.to(dev), pred_logp.to(dev), next_logp.to(dev)
    )


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------

_RESULT_KEYS = (
    "sae",
    "model",
    "data",
    "text_field",
    "max_tokens",
    "influence_tokens",
    "context_length",
    "skip_first",
    "n_top",
    "n_band",
    "n_influence",
    "left",
    "right",
    "n_predictions",
    "error",
    "layer",
    "seed",
    "dtype",
)


def fingerprint(cfg: DashboardConfig, world: int, sae=None) -> str:
    """What a resumed state must agree on (batch size, checkpointing and output options do not matter): the
    options, the corpus's content and the SAE's weights (``sae``), not only their names."""
    from ..corpus import content_digest

    d = {k: getattr(cfg, k) for k in _RESULT_KEYS}
    d["world"] = world
    d["data_sha256"] = content_digest(list(cfg.data))
    if sae is not None:
        d["sae_sha256"] = sae.digest()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def corpus_rows(
    cfg: DashboardConfig, tok, prepend_bos: bool, rank: int = 0, world: int = 1, skip: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """(global row index, ids [T]) of this rank's rows within the budget, after its first ``skip`` rows."""
    from ..corpus import iter_documents, iter_token_rows

    n_rows = max(1, cfg.max_tokens // cfg.context_length)
    mine = 0
    for i, row in enumerate(
        iter_token_rows(iter_documents(cfg.data, cfg.text_field), tok, cfg.context_length, prepend_bos)
    ):
        if i >= n_rows:
            break
        if i % world != rank:
            continue
        mine += 1
        if mine <= skip:
            continue
        yield i, torch.from_numpy(row.astype("int64"))


def build_state(
    cfg: DashboardConfig,
    model,
    tok,
    sae,
    layer: int,
    *,
    rank: int = 0,
    world: int = 1,
    state_path: Path | None = None,
    stop_after: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> DashboardState:
    """Stream this rank's rows into a state, resuming from ``state_path`` when it exists and checkpointing
    into it every ``checkpoint_every`` batches. ``stop_after`` (tests) stops after that many batches;
    ``on_batch(tokens done, tokens in all)`` is called after each batch (progress; it may raise to stop)."""
    from tqdm.auto import tqdm

    fp = fingerprint(cfg, world, sae)
    W = cfg.left + cfg.right + 1
    if state_path is not None and state_path.is_file():
        st = DashboardState.load(state_path, fp)
        log.info("resuming from %s (%d rows done)", state_path, st.rows_done)
    else:
        st = DashboardState.new(sae.d_sae, cfg.n_top, cfg.n_band, cfg.n_influence, W, cfg.n_predictions)
    n_rows = max(1, cfg.max_tokens // cfg.context_length)
    n_mine = len(range(rank, n_rows, world))
    infl_rows = n_rows if cfg.influence_tokens < 0 else cfg.influence_tokens // cfg.context_length
    bar = tqdm(
        total=n_mine * cfg.context_length,
        initial=st.rows_done * cfg.context_length,
        unit="tok",
        unit_scale=True,
        desc=f"dashboard{'' if world == 1 else f' rank {rank}'}",
        disable=not cfg.progress or rank != 0,
    )
    prepend_bos = bool(getattr(sae.cfg, "prepend_bos", True))
    batch: list[tuple[int, torch.Tensor]] = []
    n_batches = 0
    rows_before = st.rows_done

    def flush():
        nonlocal st, n_batches
        # influence rows come first in the stream; a batch is split so each part is all-or-nothing
        for part in ([r for r in batch if r[0] < infl_rows], [r for r in batch if r[0] >= infl_rows]):
            if not part:
                continue
            ids = torch.stack([r[1] for r in part]).to(sae.W_dec.device)
            rows = torch.tensor([r[0] for r in part], dtype=torch.int64)
            ev = batch_evidence(
                model,
                sae,
                layer,
                ids,
                rows,
                skip_first=cfg.skip_first,
                influence=part[0][0] < infl_rows,
                error=cfg.error,
                n_pred=cfg.n_predictions,
            )
            ev.ids, ev.rows = ev.ids.cpu(), rows
            for name in ("H", "g", "pred", "pred_logp", "next_logp"):
                v = getattr(ev, name)
                if v is not None:
                    setattr(ev, name, v.cpu())
            st = update_state(st, ev, left=cfg.left, right=cfg.right, seed=cfg.seed)
        bar.update(len(batch) * cfg.context_length)
        if on_batch is not None:
            on_batch((st.rows_done - rows_before) * cfg.context_length, (n_mine - rows_before) * cfg.context_length)
        batch.clear()
        n_batches += 1
        if state_path is not None and n_batches % cfg.checkpoint_every == 0:
            st.save(state_path, fp)

    for item in corpus_rows(cfg, tok, prepend_bos, rank, world, skip=st.rows_done):
        batch.append(item)
        if len(batch) == cfg.batch_size:
            flush()
            if stop_after is not None and n_batches >= stop_after:
                bar.close()
                return st
    if batch:
        flush()
    bar.close()
    if state_path is not None:
        st.save(state_path, fp)
    return st
