"""Where the SAEs' training tokens come from: a corpus streamed through the model, or a cache folder.

Both sources hand the trainer *fills*: fill f holds the data of steps ``f·M … f·M + M − 1``
(``M = --shuffle-batches`` for a corpus, 1 for a cache). A corpus fill:

1. reads M global batches of packed rows (``RowReader``: resumable, cycles through the corpus);
2. runs the model once per batch and captures the residual stream after every requested block in
   that one pass (``capture.capture``): with no g-SAE in the grid the forward stops after the highest block;
   with one, the graph is cut below the lowest block and one backward of the summed next-token CE
   gives ∇ₓL at every requested block;
3. pools the M batches' tokens (first ``drop_first`` positions of each row left out), permutes them
   with a generator seeded by (seed, fill, rank) and deals them out as M SAE batches: the shuffle
   buffer that mixes tokens across documents. E2E SAEs train on whole rows, so each step also
   carries its own model batch (ids and full-length activations).

Checkpoints are taken at fill boundaries, where the only state is the reader's position: a resumed
run rebuilds the next fill exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..corpus import Packer, iter_documents
from ..errors import GradsaeError
from ..capture import capture


@dataclass
class LayerTokens:
    """One layer's tokens of a step: x [N, D] (float32, not normalised) and dL/dx [N, D] or None."""

    x: torch.Tensor
    g: torch.Tensor | None


@dataclass
class StepData:
    """What one step trains on."""

    tokens: dict[int, LayerTokens]
    """Shuffled tokens per layer (for TopK / g-SAE)."""
    ids: torch.Tensor | None = None
    """[b, T] this step's model rows (for E2E; None from a cache)."""
    seq: dict[int, torch.Tensor] | None = None
    """{layer: Z [b, T, D]} full-length activations of those rows (E2E layers only)."""


# ---------------------------------------------------------------------------------------------
# Corpus rows with a position that can be saved and restored
# ---------------------------------------------------------------------------------------------


class RowReader:
    """Packed rows from a corpus (documents tokenised, joined with EOS, cut into rows of ``context_length``,
    each starting with BOS when ``prepend_bos``), cycling through the corpus forever.

    Its position (``state()``: epoch, documents consumed, tokens read but not yet in a row) is what a
    checkpoint stores; ``restore`` skips the consumed documents without tokenising them.
    """

    def __init__(
        self, sources: list[str], text_field: str, tok, context_length: int, prepend_bos: bool, chunk_docs: int = 64
    ):
        self.sources, self.text_field = sources, text_field
        self.packer = Packer(tok, context_length, prepend_bos)
        self.T = context_length
        self.chunk_docs = chunk_docs
        self.epoch, self.docs = 0, 0
        self._it: Iterator[str] | None = None

    @property
    def pending(self) -> list[int]:
        return self.packer.pending

    def state(self) -> tuple[dict, torch.Tensor]:
        return {"epoch": self.epoch, "docs": self.docs}, torch.tensor(self.pending, dtype=torch.int64)

    def restore(self, state: dict, pending: torch.Tensor | None) -> None:
        if not isinstance(state.get("epoch"), int) or not isinstance(state.get("docs"), int) or state["docs"] < 0:
            raise GradsaeError(
                f"the checkpoint's corpus position {state!r:.60} is damaged: "
                "delete checkpoint.safetensors to start over"
            )
        self.epoch, self.docs = state["epoch"], state["docs"]
        self.packer.pending = [] if pending is None else pending.tolist()
        self._it = iter_documents(self.sources, self.text_field)
        for _ in range(self.docs):
            if next(self._it, None) is None:
                raise GradsaeError(
                    "the corpus has fewer documents than the checkpoint consumed: it changed "
                    "since the run started; use the same --data or another --out"
                )

    def _pull(self) -> bool:
        """Tokenise the next chunk of documents into ``pending``; False at the end of an epoch."""
        if self._it is None:
            self._it = iter_documents(self.sources, self.text_field)
        docs = []
        for doc in self._it:
            docs.append(doc)
            if len(docs) >= self.chunk_docs:
                break
        if not docs:
            return False
        self.packer.add(docs)
        self.docs += len(docs)
        return True

    def rows(self, n: int) -> np.ndarray:
        """The next n rows, int64 [n, T]."""
        empty_epochs = 0
        while self.packer.ready < n:
            if self._pull():
                empty_epochs = 0
                continue
            if empty_epochs or (self.epoch == 0 and self.docs == 0 and not self.pending):
                raise GradsaeError(
                    f"the corpus {', '.join(self.sources)} yields no tokens: check --data (and --text-field for .jsonl)"
                )
            self.epoch, self.docs, self._it = self.epoch + 1, 0, None  # start the next pass
            empty_epochs += 1
        return self.packer.take(n)


def count_rows(sources: list[str], text_field: str, tok, context_length: int, prepend_bos: bool) -> int:
    """Rows one pass over the corpus gives (tokenises the whole corpus once)."""
    r = RowReader(sources, text_field, tok, context_length, prepend_bos, chunk_docs=256)
    n = 0
    while r._pull():
        n += r.packer.ready
        r.packer.take(r.packer.ready)
    if n == 0:
        raise GradsaeError(
            f"the corpus {', '.join(sources)} yields fewer than one row of {context_length} "
            "tokens: add data or lower --context-length"
        )
    return n


# ---------------------------------------------------------------------------------------------
# One model pass, every requested layer
# ---------------------------------------------------------------------------------------------


def _perm(n: int, seed: int, fill: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + fill * 7_919 + rank) % (2**63))
    return torch.randperm(n, generator=g)


class CorpusSource:
    """Fills from a corpus run through ``model`` (see the module docstring)."""

    def __init__(
        self,
        model,
        reader: RowReader,
        layers: list[int],
        grad_layers: list[int],
        seq_layers: list[int],
        rows_per_step: int,
        fill_steps: int,
        drop_first: int,
        seed: int,
        rank: int,
        world: int,
        device: str,
        dtype: str,
        site: str = "hook_resid_post",
    ):
        self.model, self.reader, self.site = model, reader, site
        self.layers, self.grad_layers, self.seq_layers = layers, grad_layers, seq_layers
        if rows_per_step % world:
            raise GradsaeError(f"--batch-size {rows_per_step} is not divisible by the {world} processes: change it")
        self.rows, self.local = rows_per_step, rows_per_step // world
        self.fill_steps, self.drop = fill_steps, drop_first
        self.seed, self.rank, self.device, self.dtype = seed, rank, device, dtype

    @property
    def tokens_per_step(self) -> int:
        """Model tokens per global step."""
        return self.rows * self.reader.T

    @property
    def sae_tokens_per_step(self) -> int:
        return self.rows * (self.reader.T - self.drop)

    def state(self) -> tuple[dict, torch.Tensor]:
        return self.reader.state()

    def restore(self, state: dict, pending: torch.Tensor | None) -> None:
        self.reader.restore(state, pending)

    def fill(self, index: int, n_steps: int) -> list[StepData]:
        """The data of ``n_steps`` (≤ M) steps of fill ``index``."""
        xs: dict[int, list[torch.Tensor]] = {l: [] for l in self.layers}
        gs: dict[int, list[torch.Tensor]] = {l: [] for l in self.grad_layers}
        seqs, idss = [], []
        a, b = self.rank * self.local, (self.rank + 1) * self.local
        for _ in range(n_steps):
            rows = self.reader.rows(self.rows)[a:b]
            ids = torch.from_numpy(rows).to(self.device)
            acts, grads = capture(self.model, ids, self.layers, bool(self.grad_layers), self.dtype, self.site)
            D = acts[self.layers[0]].shape[-1]
            for l in self.layers:
                xs[l].append(acts[l][:, self.drop :].reshape(-1, D))
            for l in self.grad_layers:
                gs[l].append(grads[l][:, self.drop :].reshape(-1, D))
            idss.append(ids)
            seqs.append({l: acts[l] for l in self.seq_layers})
        n = xs[self.layers[0]][0].shape[0]
        perm = _perm(n * n_steps, self.seed, index, self.rank).to(self.device)
        pooled_x = {l: torch.cat(v)[perm] for l, v in xs.items()}
        pooled_g = {l: torch.cat(v)[perm] for l, v in gs.items()}
        out = []
        for i in range(n_steps):
            sl = slice(i * n, (i + 1) * n)
            toks = {l: LayerTokens(pooled_x[l][sl], pooled_g[l][sl] if l in pooled_g else None) for l in self.layers}
            out.append(StepData(toks, idss[i] if self.seq_layers else None, seqs[i] or None))
        return out

    def sample(self, first: list[StepData], layer: int, n: int = 8192) -> torch.Tensor:
        """Up to n tokens of ``layer`` from a fill (already shuffled), for the normalisation and b_dec."""
        return torch.cat([s.tokens[layer].x for s in first])[:n].cpu()


class CacheSource:
    """Fills of one step from a ``gradsae cache`` folder held in RAM; the batch order is a permutation per
    epoch seeded by (seed, epoch)."""

    fill_steps = 1

    def __init__(
        self,
        X: dict[int, torch.Tensor],
        G: dict[int, torch.Tensor],
        batch_tokens: int,
        seed: int,
        rank: int,
        world: int,
        device: str,
    ):
        self.X, self.G = X, G
        self.N = next(iter(X.values())).shape[0]
        if batch_tokens % world:
            raise GradsaeError(f"--batch-tokens {batch_tokens} is not divisible by the {world} processes: change it")
        self.batch, self.local = batch_tokens, batch_tokens // world
        self.steps_per_epoch = self.N // batch_tokens
        if self.steps_per_epoch < 1:
            raise GradsaeError(
                f"{self.N} training tokens are less than one batch of {batch_tokens}: lower --batch-tokens"
            )
        self.seed, self.rank, self.device = seed, rank, device
        self._perm_epoch, self._perm = -1, None

    tokens_per_step = property(lambda self: self.batch)
    sae_tokens_per_step = property(lambda self: self.batch)

    def state(self):
        return {}, None

    def restore(self, state, pending) -> None:
        pass

    def fill(self, index: int, n_steps: int = 1) -> list[StepData]:
        epoch, pos = divmod(index, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.N, generator=g), epoch
        idx = self._perm[pos * self.batch : (pos + 1) * self.batch][
            self.rank * self.local : (self.rank + 1) * self.local
        ]
        toks = {
            l: LayerTokens(x[idx].float().to(self.device), self.G[l][idx].to(self.device) if l in self.G else None)
            for l, x in self.X.items()
        }
        return [StepData(toks)]

    def sample(self, first, layer: int, n: int = 8192) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return self.X[layer][torch.randperm(self.N, generator=g)[:n]].float()
