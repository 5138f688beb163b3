"""``gradsae cache``: stream a corpus through the model and store residual activations x (and dL/dx).

Layout of a cache folder::

    manifest.json                    model, layers, context length, dtype, positions policy, shards so far
    config.json                      the CacheConfig of the run
    shard_00000.tokens.npy           int32 [S, T]      the token ids of the S sequences of the shard
    shard_00000.L9.acts.npy          float16 [N, D]    x after block 9, N = S * (T - drop_first) tokens
    shard_00000.L9.grads.npy         float16 [N, D]    dL/dx * grad_scale (see below), same rows as acts

Row ``s * (T - drop_first) + (t - drop_first)`` of a shard is sequence s, position t.

* **Loss.** L is the *summed* next-token cross-entropy over every predicted position of a sequence, so a
  token's gradient does not depend on batch size or on how many sequences there are. ResidualCapture
  cuts the graph below the lowest cached layer: backward only runs through the upper blocks.
* **Positions.** The first ``drop_first`` (default 1) positions of every sequence are left out: position 0
  is the attention sink, whose residual norm is an outlier that would dominate an SAE's loss.
* **float16 gradients.** Per-token gradients of SmolLM2 at layer 9 are of order 1e-4..1e-2 per
  coordinate, and many coordinates fall below float16's smallest normal number (6e-5). Each shard
  therefore stores ``grad * s`` with ``s`` a power of two chosen so the shard's largest |grad| becomes
  about 2^14; ``s`` is recorded per shard and layer in the manifest and ``ActivationCache.grads`` divides it out
  (exactly: powers of two). The manifest also records the fraction of stored gradient entries that are
  zero after rounding although the float32 value was not (``grad_underflow``).
* **Order.** Packed sequences are shuffled with ``--seed`` before sharding, so the shards finished
  so far (an interrupted run is usable) and the held-out last shard are uniform samples of the corpus.
* **Resume.** Shards are written to temporary names and renamed when complete; the manifest is rewritten
  atomically after each shard. A rerun with the same config skips finished shards and redoes a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import opt
from ..corpus import SAMPLE, iter_documents, pack_sequences  # noqa: F401  (re-exported)
from ..errors import GradsaeError
from ..hooks import hook_name_for
from ..io import output_lock, read_json, refuse_foreign, write_json
from ..options import ModelOptions, Runtime, start

log = logging.getLogger(__name__)

DEFAULT_DATA = [SAMPLE]  # the package's own sample text; pass --data for a real corpus
FORMAT_VERSION = 1
GRAD_TARGET = 2.0**14  # the largest |grad| of a shard is scaled to about this (float16 max is 65504)


@dataclass(kw_only=True)
class CacheConfig(ModelOptions):
    """Cache residual-stream activations (and the gradient of the summed next-token CE) as float16 shards."""

    layers: list[int] = opt([9], "blocks whose output (blocks.L.hook_resid_post) is cached, comma-separated", low=0)
    site: str = opt(
        "hook_resid_post",
        "what of each block is cached: hook_resid_post (its output), hook_attn_out or hook_mlp_out",
        choices=("hook_resid_post", "hook_attn_out", "hook_mlp_out"),
    )
    data: list[str] = opt(
        list(DEFAULT_DATA),
        "corpus: .txt/.jsonl/.json files (optionally .gz) or folders, 'sample' (bundled text), "
        "or hf:NAME for a Hugging Face dataset; comma-separated",
    )
    text_field: str = opt("text", "field holding the text in .jsonl files and HF datasets")
    out: str = opt("", "cache folder (default: <gradsae cache>/acts/<model>-L<layers>-ctx<T>-<data hash>)")
    context_length: int = opt(128, "tokens per sequence T (sequences are packed from the corpus)")
    prepend_bos: bool = opt(True, "start every sequence with the BOS token")
    drop_first: int = opt(1, "leave out the first positions of each sequence (attention sink)")
    grad: bool = opt(True, "also cache dL/dx (needed by g-SAE training and gradient-aware evals)")
    batch_size: int = opt(
        8,
        "sequences per forward/backward pass; auto (or 0): the most that fit the device memory (estimated)",
        low=0,
        auto=True,
    )
    seqs_per_shard: int = opt(64, "sequences per shard file")
    max_tokens: int = opt(0, "stop after about this many corpus tokens (0 = the whole corpus)")
    max_shards: int = opt(0, "compute at most the first N shards (0 = all); rerun with a larger N to extend")
    shuffle: bool = opt(
        True,
        "shuffle the packed sequences (seeded) so that any prefix of shards, e.g. of a "
        "run stopped early, is a uniform sample of the corpus",
    )
    seed: int = opt(0, "seed of the sequence shuffle")

    def __post_init__(self):
        super().__post_init__()
        if not self.layers:
            raise GradsaeError("no layers given: pass --layers 9 (comma-separated for several)")
        if not 0 <= self.drop_first < self.context_length - 1:
            raise GradsaeError(f"--drop-first {self.drop_first} must be between 0 and context length - 2")
        if self.seqs_per_shard < 1 or self.batch_size < 0:
            raise GradsaeError("--seqs-per-shard must be at least 1 and --batch-size at least 0 (auto)")


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def pow2_scale(max_abs: float, target: float = GRAD_TARGET) -> float:
    """A power of two s with ``max_abs * s`` in (target/2, target]; 1 for an all-zero tensor."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 1.0
    return float(2.0 ** math.floor(math.log2(target / max_abs)))


def to_float16(x: torch.Tensor, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """x * scale as float16 numpy, and the fraction of nonzero entries that rounded to zero. [N, D]."""
    y = x.float() * scale
    h = y.to(torch.float16)
    if not torch.isfinite(h).all():
        raise GradsaeError(
            "activations overflow float16 (|x| > 65504): cache with a smaller model dtype range "
            "or drop the outlier positions (--drop-first)"
        )
    nz = y != 0
    under = float(((h == 0) & nz).sum()) / max(1, int(nz.sum()))
    return h.numpy(), under


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s.split("/")[-1]).lower()


def data_fingerprint(sources: list[str]) -> str:
    h = hashlib.sha256()
    for src in sources:
        p = Path(src).expanduser()
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}".encode())
        h.update(src.encode() if not p.exists() else b"")
    return h.hexdigest()[:10]


def default_out(cfg: CacheConfig) -> Path:
    from ..model import cache_dir

    layers = "-".join(str(l) for l in cfg.layers)
    site = "" if cfg.site == "hook_resid_post" else "-" + cfg.site.replace("hook_", "")
    return (
        cache_dir()
        / "acts"
        / f"{_slug(cfg.model)}-L{layers}{site}-ctx{cfg.context_length}-{data_fingerprint(cfg.data)}"
    )


def default_cache() -> Path:
    """The folder ``gradsae cache`` writes with its defaults (what train/eval read when given no --cache)."""
    return default_out(CacheConfig())


def shard_stem(i: int) -> str:
    return f"shard_{i:05d}"


# ---------------------------------------------------------------------------------------------
# Reading a cache
# ---------------------------------------------------------------------------------------------


class ActivationCache:
    """Read-only view of a cache folder. Arrays are memory-mapped float16 (``np.load(mmap_mode='r')``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            raise GradsaeError(
                f"no activation cache at {self.path} (manifest.json missing): create one with `gradsae cache --out DIR`"
            )
        self.manifest = m = read_json(mpath)
        ok = (
            isinstance(m, dict)
            and isinstance(m.get("shards"), list)
            and all(
                isinstance(s, dict) and isinstance(s.get("index"), int) and isinstance(s.get("n_tokens"), int)
                for s in m["shards"]
            )
            and isinstance(m.get("layers"), list)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in m["layers"])
            and isinstance(m.get("d_model"), int)
            and isinstance(m.get("grad"), bool)
        )
        if not ok:
            raise GradsaeError(
                f"{mpath} is damaged (it needs shards, layers, d_model and grad as gradsae cache writes them): "
                "delete the folder and cache again"
            )
        self.shards: list[dict] = m["shards"]
        if not self.shards:
            raise GradsaeError(f"the cache at {self.path} has no finished shard yet: let `gradsae cache` run longer")

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def site(self) -> str:
        """What of each block the cache holds (``hook_resid_post`` for caches from before sites existed)."""
        from ..hooks import site_of

        names = self.manifest.get("hook_names") or []
        own = site_of(names[0]) if names and isinstance(names[0], str) else None
        return own[1] if own is not None else "hook_resid_post"

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def has_grads(self) -> bool:
        return bool(self.manifest["grad"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.shards)

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise GradsaeError(
                f"the cache at {self.path} has layers {self.layers}, not {layer}: "
                "pick one of those or re-cache with --layers"
            )

    def _npy(self, name: str, dtype, shape_tail: tuple = ()) -> np.ndarray:
        """A shard file, memory-mapped (never unpickled); a missing, truncated or foreign file is one line."""
        path = self.path / name
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise GradsaeError(f"{path} is missing: rerun the same gradsae cache command to recompute it") from None
        except (ValueError, OSError, EOFError) as e:
            raise GradsaeError(
                f"{path} is damaged ({type(e).__name__}): delete it and rerun the same gradsae cache command"
            ) from None
        if arr.dtype != np.dtype(dtype) or tuple(arr.shape[1:]) != tuple(shape_tail) and shape_tail:
            raise GradsaeError(
                f"{path} holds {arr.dtype} {tuple(arr.shape)}, not the {np.dtype(dtype)} [N, {self.d_model}] "
                "gradsae cache writes: delete it and rerun the same gradsae cache command"
            )
        return arr

    def acts(self, i: int, layer: int) -> np.ndarray:
        """float16 memmap [N, D] of shard i."""
        self._check_layer(layer)
        return self._npy(f"{shard_stem(self.shards[i]['index'])}.L{layer}.acts.npy", np.float16, (self.d_model,))

    def grads(self, i: int, layer: int) -> tuple[np.ndarray, float]:
        """(float16 memmap [N, D] of dL/dx * scale, scale) of shard i; divide by scale for dL/dx."""
        self._check_layer(layer)
        if not self.has_grads:
            raise GradsaeError(f"the cache at {self.path} has no gradients: re-cache with --grad to train a g-SAE")
        s = self.shards[i]
        arr = self._npy(f"{shard_stem(s['index'])}.L{layer}.grads.npy", np.float16, (self.d_model,))
        return arr, float(s["grad_scale"][str(layer)])

    def tokens(self, i: int) -> np.ndarray:
        """int32 [S, T] token ids of shard i."""
        return self._npy(f"{shard_stem(self.shards[i]['index'])}.tokens.npy", np.int32)

    def load(
        self, layer: int, shards: list[int] | None = None, grads: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Concatenate shards into RAM: x float16 [N, D] and (optionally) dL/dx float32 [N, D]."""
        idx = range(len(self.shards)) if shards is None else shards
        xs = [torch.from_numpy(np.array(self.acts(i, layer))) for i in idx]
        x = torch.cat(xs) if xs else torch.zeros(0, self.d_model, dtype=torch.float16)
        if not grads:
            return x, None
        gs = []
        for i in idx:
            arr, s = self.grads(i, layer)
            gs.append(torch.from_numpy(np.array(arr)).float() / s)
        return x, torch.cat(gs) if gs else torch.zeros(0, self.d_model)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write via open_memmap to a unique temp name, flush + fsync, then rename (a killed write leaves no
    final file; two writers never share a temp file). Stale temp files are removed by ``clean_temp``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:-4]}.", suffix=".tmp.npy")
    os.close(fd)
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=arr.shape)
        mm[...] = arr
        mm.flush()
        del mm
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_temp(folder: Path) -> int:
    """Remove temp files a killed run left in ``folder`` and below it (SAE folders, snapshots, states; call it
    while holding the folder's lock)."""
    n = 0
    for p in Path(folder).rglob(".*.tmp*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def compute_batch(
    model, ids: torch.Tensor, layers: list[int], grad: bool, drop_first: int, site: str = "hook_resid_post"
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], float]:
    """One forward (+ backward) pass. ids [B, T] -> ({L: x [B*(T-drop), D]}, {L: dL/dx [...]}, summed CE)."""
    from ..capture import capture_with_loss

    acts, grads, loss = capture_with_loss(model, ids, layers, grad, site=site)
    flat = {l: a[:, drop_first:].reshape(-1, a.shape[-1]) for l, a in acts.items()}
    return flat, {l: g[:, drop_first:].reshape(-1, g.shape[-1]) for l, g in grads.items()}, loss


def _identity(cfg: CacheConfig, model_id: str, d_model: int, n_seq: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model": model_id,
        "layers": list(cfg.layers),
        "hook_names": [hook_name_for(l, cfg.site) for l in cfg.layers],
        "d_model": d_model,
        "context_length": cfg.context_length,
        "prepend_bos": cfg.prepend_bos,
        "drop_first": cfg.drop_first,
        "positions_policy": f"first {cfg.drop_first} position(s) of every sequence left out (attention sink)",
        "grad": cfg.grad,
        "loss": "sum over tokens of next-token cross-entropy (per sequence)",
        "dtype": "float16",
        "grad_storage": "float16 of dL/dx * grad_scale[layer] (a power of two per shard)",
        "data": list(cfg.data),
        "data_fingerprint": data_fingerprint(cfg.data),
        "max_tokens": cfg.max_tokens,
        "shuffle": cfg.shuffle,
        "seed": cfg.seed,
        "seqs_per_shard": cfg.seqs_per_shard,
        "total_sequences": n_seq,
        "tokens_per_sequence": cfg.context_length - cfg.drop_first,
    }


def cache_rows(cfg: CacheConfig, model) -> int:
    """Sequences per batch: ``--batch-size`` checked against the memory estimate (``auto``: the most that fit).
    With ``--grad`` a whole forward and a backward down to the lowest layer; without, blocks up to the highest."""
    from .. import memory

    shape = memory.ModelShape.of(model)
    T = cfg.context_length

    def passes(b: int) -> list[memory.Pass]:
        if cfg.grad:
            return [
                memory.Pass(
                    "grad", rows=b, tokens=T, logits=T, latents=0, grad_blocks=memory.grad_blocks(shape, cfg.layers)
                )
            ]
        return [memory.Pass("forward", rows=b, tokens=T, logits=0, latents=0)]

    device = str(next(model.parameters()).device)
    return memory.plan_rows(
        "the cache", passes, shape, requested=cfg.batch_size, most=cfg.seqs_per_shard, device=device
    )


def run(cfg: CacheConfig) -> Path:
    """Load the model and write (or resume) the cache; returns the cache folder."""
    from ..model import load_model

    if cfg.out.strip():  # before the model loads: a wrong --out is one line at once
        _refuse_foreign(Path(cfg.out).expanduser())
    rt = start(cfg, "cache")
    if not cfg.out.strip():  # the default folder is named after the resolved layers: locked once they are known
        model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
        return write_cache(model, tok, cfg, rt)
    with output_lock(Path(cfg.out).expanduser()):  # before the model loads: a second writer is refused at once
        model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
        return write_cache(model, tok, cfg, rt, locked=True)


def write_cache(model, tok, cfg: CacheConfig, rt: Runtime | None = None, locked: bool = False) -> Path:
    """Write (or resume) the cache of ``model`` described by ``cfg`` (``rt``: the runtime recorded in config.json;
    ``locked``: the caller holds the output folder's lock already)."""
    from ..hooks import resolve_layer

    cfg.layers = sorted({resolve_layer(model, l) for l in cfg.layers})
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg)
    with contextlib.nullcontext() if locked else output_lock(out):
        clean_temp(out)
        return _write_locked(model, tok, cfg, out, rt)


def _refuse_foreign(out: Path) -> None:
    refuse_foreign(
        out,
        {
            "manifest.json": lambda d: isinstance(d, dict) and "shards" in d and "layers" in d,
            "config.json": lambda d: isinstance(d, dict) and "seqs_per_shard" in d and "layers" in d,
        },
        "gradsae cache",
    )


def _write_locked(model, tok, cfg: CacheConfig, out: Path, rt: Runtime | None) -> Path:
    from tqdm import tqdm

    from ..hooks import hidden_size
    from ..model import model_name

    seqs = pack_sequences(
        iter_documents(cfg.data, cfg.text_field), tok, cfg.context_length, cfg.prepend_bos, cfg.max_tokens
    )
    if cfg.shuffle:
        seqs = seqs[np.random.default_rng(cfg.seed).permutation(len(seqs))]
    ident = _identity(cfg, model_name(model), hidden_size(model), len(seqs))
    mpath = out / "manifest.json"
    _refuse_foreign(out)
    done: dict[int, dict] = {}
    if mpath.exists():
        old = read_json(mpath)
        mismatch = [k for k, v in ident.items() if old.get(k) != v]
        if mismatch:
            raise GradsaeError(
                f"{out} holds a cache made with a different config ({', '.join(mismatch)}): "
                "use another --out or delete that folder"
            )
        done = {s["index"]: s for s in old["shards"]}
    write_json(out / "config.json", {**asdict(cfg), **({"runtime": rt.as_config()} if rt else {})})

    n_shards = math.ceil(len(seqs) / cfg.seqs_per_shard)
    limit = min(n_shards, cfg.max_shards) if cfg.max_shards > 0 else n_shards
    todo = [i for i in range(limit) if i not in done]
    per_seq = cfg.context_length - cfg.drop_first
    t0 = time.time()
    B = cache_rows(cfg, model)
    if rt is not None:
        rt.announce("cache")
    bar = tqdm(
        total=len(todo) * cfg.seqs_per_shard * cfg.context_length,
        unit="tok",
        unit_scale=True,
        desc=f"cache L{','.join(map(str, cfg.layers))}",
        dynamic_ncols=True,
        mininterval=5,
        disable=not cfg.progress,
    )
    dev = next(model.parameters()).device

    def manifest(complete: bool) -> dict:
        shards = [done[i] for i in sorted(done)]
        return {
            **ident,
            "complete": complete,
            "n_shards": n_shards,
            "n_tokens": sum(s["n_tokens"] for s in shards),
            "shards": shards,
        }

    for i in todo:
        rows = seqs[i * cfg.seqs_per_shard : (i + 1) * cfg.seqs_per_shard]
        acts = {l: [] for l in cfg.layers}
        grads = {l: [] for l in cfg.layers}
        loss_sum = 0.0
        for b in range(0, len(rows), B):
            ids = torch.from_numpy(rows[b : b + B].astype(np.int64)).to(dev)
            a, g, loss = compute_batch(model, ids, cfg.layers, cfg.grad, cfg.drop_first, cfg.site)
            loss_sum += loss
            for l in cfg.layers:
                acts[l].append(a[l].cpu())
                if cfg.grad:
                    grads[l].append(g[l].cpu())
            bar.update(ids.numel())
        stem = shard_stem(i)
        rec = {
            "index": i,
            "n_seq": len(rows),
            "n_tokens": len(rows) * per_seq,
            "grad_scale": {},
            "grad_underflow": {},
            "act_absmax": {},
            "grad_absmax": {},
        }
        if cfg.grad:
            rec["mean_ce"] = loss_sum / (len(rows) * (cfg.context_length - 1))
        for l in cfg.layers:
            x = torch.cat(acts[l])
            xa, _ = to_float16(x)
            rec["act_absmax"][str(l)] = float(x.abs().max())
            _save_npy(out / f"{stem}.L{l}.acts.npy", xa)
            if cfg.grad:
                g = torch.cat(grads[l])
                gmax = float(g.abs().max())
                s = pow2_scale(gmax)
                ga, under = to_float16(g, s)
                rec["grad_scale"][str(l)] = s
                rec["grad_underflow"][str(l)] = under
                rec["grad_absmax"][str(l)] = gmax
                _save_npy(out / f"{stem}.L{l}.grads.npy", ga)
        _save_npy(out / f"{stem}.tokens.npy", rows.astype(np.int32))
        done[i] = rec
        write_json(mpath, manifest(False))
    bar.close()
    m = manifest(len(done) == n_shards)
    write_json(mpath, m)
    dt = time.time() - t0
    print(f"cache: {m['n_tokens']} tokens x {len(cfg.layers)} layer(s) in {out} ({len(todo)} new shard(s), {dt:.0f} s)")
    return out


def cache_from_arrays(
    out: str | Path,
    x: torch.Tensor,
    g: torch.Tensor | None = None,
    layer: int = 0,
    shard_tokens: int = 4096,
    model: str = "toy",
) -> Path:
    """Write a cache folder from in-memory activations x [N, D] (and gradients g [N, D]); for toy data/tests."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    N, D = x.shape
    shards = []
    for i, a in enumerate(range(0, N, shard_tokens)):
        xs = x[a : a + shard_tokens]
        rec = {
            "index": i,
            "n_seq": 0,
            "n_tokens": len(xs),
            "grad_scale": {},
            "grad_underflow": {},
            "act_absmax": {str(layer): float(xs.abs().max())},
            "grad_absmax": {},
        }
        _save_npy(out / f"{shard_stem(i)}.L{layer}.acts.npy", to_float16(xs)[0])
        if g is not None:
            gs = g[a : a + shard_tokens]
            s = pow2_scale(float(gs.abs().max()))
            ga, under = to_float16(gs, s)
            rec["grad_scale"][str(layer)], rec["grad_underflow"][str(layer)] = s, under
            _save_npy(out / f"{shard_stem(i)}.L{layer}.grads.npy", ga)
        shards.append(rec)
    write_json(
        out / "manifest.json",
        {
            "format_version": FORMAT_VERSION,
            "model": model,
            "layers": [layer],
            "hook_names": [hook_name_for(layer)],
            "d_model": D,
            "context_length": 0,
            "prepend_bos": False,
            "drop_first": 0,
            "grad": g is not None,
            "data": ["arrays"],
            "dtype": "float16",
            "complete": True,
            "n_shards": len(shards),
            "n_tokens": N,
            "shards": shards,
        },
    )
    return out
