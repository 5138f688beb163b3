"""``influence(model, tok, sae, examples, opts)`` and its three methods: ``grad`` (grad × act, one forward and one
backward per batch), ``exact`` (ablation), ``ig`` (integrated gradients)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import memory
from ..errors import GradsaeError
from ..generate import position_ids
from ..saes.sae import SAE
from ..splice import RowEdit, Splice, run_trunk, skip_trunk, splice_point
from .inputs import Packed, forward_target, generate_outputs, join_ids, pack, token_texts, bracket_index
from .options import InfluenceOptions
from .records import Example, Influence
from .rules import aggregate, top_latents


def influence(
    model,
    tok,
    sae: SAE | Sequence[SAE],
    examples: Sequence[Example | tuple | str],
    opts: InfluenceOptions | None = None,
    *,
    layer=None,
    batch_size: int = 4,
    exact_batch: int = 32,
    keep_per_token: int = 10,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    output_ids: Sequence[list[int]] | None = None,
    keep_first: int = 0,
    **option_overrides,
) -> list[Influence]:
    """Score every latent for each example.

    ``sae`` may be a list of SAEs (at different layers or sites): all are spliced at once with their error terms
    kept, every latent of every SAE is scored from one backward (each SAE passes the others' gradients through
    unchanged, so a latent gets the score it gets with its SAE alone), and the result is one list per SAE
    (``result[j][i]``: SAE j, example i). Outputs must then be given, and the method is ``grad``.

    Args:
        examples: ``Example``s, (prompt, output) pairs or prompts (outputs are then generated greedily
            through the splice).
        opts: target, aggregation, positions, method, error, ig_steps, exact_latents, seed (see
            ``InfluenceOptions``); keyword arguments of the same names override single fields.
        batch_size: examples per forward+backward (``grad``); scores do not depend on it. 0: the most that fit
            the device's memory (``gradsae.memory``); a batch estimated not to fit is refused in one line.
        exact_batch: ablated latents per batched forward (``exact``), lowered to what fits the memory.
        keep_per_token: P, how many top latents keep their per-token influence (heatmaps).
        output_ids: already tokenised outputs (e.g. from generation), overriding ``Example.output``.
        keep_first: leave each row's first N real tokens unspliced (attention sink), see ``Splice``.
    """
    opts = (opts or InfluenceOptions()).influence_options()
    if option_overrides:
        unknown = set(option_overrides) - {f.name for f in dataclasses.fields(InfluenceOptions)}
        if unknown:
            raise TypeError(f"influence() got unexpected keyword arguments {sorted(unknown)}")
        opts = dataclasses.replace(opts, **option_overrides)
    if batch_size < 0:
        raise GradsaeError(f"--batch-size {batch_size}: give at least 1, or 0 (auto)")
    saes = list(sae) if isinstance(sae, (list, tuple)) else None
    if saes is not None:
        _check_several(saes, opts, layer, examples, output_ids)
        sae = saes[0]
    exs = [e if isinstance(e, Example) else Example(*e) if isinstance(e, tuple) else Example(e) for e in examples]
    for i, e in enumerate(exs):
        if not e.id:
            e.id = str(i)
    device = sae.W_dec.device
    t0 = time.perf_counter()
    pairs = []
    todo = [i for i, e in enumerate(exs) if e.output is None] if output_ids is None else []
    shape = memory.ModelShape.of(model)
    lat = memory.sae_shape(saes or sae)
    layers = [splice_point(model, s, layer)[0] for s in saes or [sae]]
    gen_batch = batch_size
    if todo:
        longest = max(len(tok(exs[i].prompt, add_special_tokens=True)["input_ids"]) for i in todo)
        gen_batch = memory.plan_rows(
            "generating the outputs",
            lambda b: [memory.generation(lat, b, longest, max_new_tokens)],
            shape,
            requested=batch_size,
            most=len(todo),
            device=str(device),
        )
    generated = (
        dict(
            zip(
                todo,
                generate_outputs(
                    model,
                    tok,
                    sae,
                    [exs[i].prompt for i in todo],
                    layer=layer,
                    error=opts.error,
                    max_new_tokens=max_new_tokens,
                    stop=stop,
                    batch_size=gen_batch,
                    keep_first=keep_first,
                ),
            )
        )
        if todo
        else {}
    )
    for i, e in enumerate(exs):
        if output_ids is not None:
            pairs.append((tok(e.prompt, add_special_tokens=True)["input_ids"], list(output_ids[i])))
        elif i in generated:
            pairs.append((tok(e.prompt, add_special_tokens=True)["input_ids"], generated[i]))
        else:
            pairs.append(join_ids(tok, e.prompt, e.output))
        if not pairs[-1][1]:
            raise GradsaeError(f"example {e.id!r} has an empty output: give --output or raise --max-new-tokens")
    picks = None
    if opts.target == "bracket":
        picks = [bracket_index(tok, o) for _, o in pairs]
        missing = [exs[i].id for i, m in enumerate(picks) if m is None]
        if missing:
            raise GradsaeError(
                f"example {missing[0]!r}: no output token contains '[', so the 'bracket' target (the "
                "authors' answer opener) is undefined: use --template official, or another --target"
            )
    t_gen = time.perf_counter() - t0
    T = max(len(p) + len(o) for p, o in pairs)
    M = max(len(o) for _, o in pairs)
    batch_size, exact_batch = _plan_memory(shape, lat, T, M, layers, opts, batch_size, exact_batch, len(exs), device)
    results: list[Influence] = []
    step = batch_size if opts.method == "grad" else 1
    run = _RunSettings(layer=layer, keep=keep_per_token, keep_first=keep_first, exact_batch=exact_batch)
    for start in range(0, len(exs), step):
        chunk = list(range(start, min(start + step, len(exs))))
        packed = pack(tok, [pairs[i] for i in chunk], device, [picks[i] for i in chunk] if picks else None)
        if saes is not None:
            per_sae = _grad_scores_several(model, saes, packed, opts, run)
            res = [[per_sae[j][b] for j in range(len(saes))] for b in range(len(chunk))]
        elif opts.method == "grad":
            res = _grad_scores(model, sae, packed, opts, run)
        elif opts.method == "ig":
            res = [_ig_scores(model, sae, packed, opts, run)]
        else:
            res = [_exact_scores(model, sae, packed, opts, run)]
        for i, rs in zip(chunk, res):
            for j, r in enumerate(rs if saes is not None else [rs]):
                results.append(_record(tok, exs[i], pairs[i], r, opts, (saes or [sae])[j], layer, keep_first))
    elapsed = time.perf_counter() - t0
    for r in results:
        r.meta["seconds_total"] = round(elapsed, 3)
        r.meta["seconds_generation"] = round(t_gen, 3)
        r.meta["batch_size"] = batch_size if opts.method == "grad" else 1  # examples per backward, as planned
    if saes is not None:  # [example][sae] -> [sae][example]
        return [results[j :: len(saes)] for j in range(len(saes))]
    return results


def _plan_memory(
    shape: memory.ModelShape,
    lat: memory.Latents,
    T: int,
    M: int,
    layers: list[int],
    opts: InfluenceOptions,
    batch_size: int,
    exact_batch: int,
    n: int,
    device,
) -> tuple[int, int]:
    """(examples per grad batch, ablations per exact chunk) checked against the memory estimate of the longest
    example (T tokens, M of them output): a grad batch that does not fit is refused (0: the most that fit); exact
    chunks are lowered to what fits; integrated gradients (``ig_steps`` rows) are refused when they do not fit."""
    dev = str(device)

    def scoring(b: int) -> list[memory.Pass]:
        return [memory.scoring(shape, lat, b, T, M, layers)]

    if opts.method == "grad":
        return memory.plan_rows("influence", scoring, shape, requested=batch_size, most=n, device=dev), exact_batch
    if opts.method == "ig":
        memory.check("integrated gradients", memory.peak(scoring(opts.ig_steps), shape), dev, "lower --ig-steps")
        return 1, exact_batch

    def ablation(b: int) -> list[memory.Pass]:
        return [*scoring(1), memory.exact_ablation(lat, b, T, M)]

    return 1, memory.plan_rows("exact ablation", ablation, shape, requested=0, most=exact_batch, device=dev)


def _record(tok, ex: Example, pair, r: dict, opts: InfluenceOptions, sae: SAE, layer, keep_first: int) -> Influence:
    """The ``Influence`` record of one example and one SAE from its scores ``r``."""
    extra = r.pop("meta_extra", {})
    p, o = pair
    ids = p + o
    return Influence(
        id=ex.id,
        prompt=ex.prompt,
        output=tok.decode(o, skip_special_tokens=True).strip(),
        token_ids=ids,
        tokens=token_texts(tok, ids),
        n_prompt=len(p),
        **r,
        meta={
            "target": opts.target,
            "aggregation": opts.aggregation,
            "positions": opts.positions,
            "method": opts.method,
            "error": opts.error,
            "layer": sae.cfg.hook_name if layer is None else layer,
            "ig_steps": opts.ig_steps if opts.method == "ig" else None,
            "seed": opts.seed,
            "keep_first": keep_first,
            **extra,
        },
    )


def _check_several(saes: list, opts: InfluenceOptions, layer, examples, output_ids) -> None:
    """One line for what scoring several SAEs at once does not do."""
    if not saes:
        raise GradsaeError("no SAE given: give one SAE or a list of them")
    if opts.method != "grad" or opts.error != "keep":
        raise GradsaeError(
            f"several SAEs are scored together by grad x act with their error terms kept, not method={opts.method!r}"
            f" error={opts.error!r}: use --method grad --error keep, or score each SAE alone"
        )
    if layer is not None:
        raise GradsaeError("--layer names one block; several SAEs are each spliced at their own hook")
    if output_ids is None and any(
        not (isinstance(e, Example) and e.output) and not isinstance(e, tuple) for e in examples
    ):
        raise GradsaeError("with several SAEs, give each example's output (it is not generated through all of them)")


_SITE_ORDER = {"attn.hook_z": 0, "hook_attn_out": 1, "hook_mlp_out": 2, "hook_resid_post": 3}


def _grad_scores_several(model, saes: list, packed: Packed, opts: InfluenceOptions, run: _RunSettings) -> list:
    """Per SAE, per row: grad x act of every latent of every SAE from one backward; every splice above the lowest
    passes the gradient of the activation it replaces through, so each latent's score is its score alone."""
    import contextlib

    mask = packed.score_mask(opts.positions, opts.target)
    with contextlib.ExitStack() as stack:
        splices = [Splice(model, s, error="keep", grad=True, keep_first=run.keep_first, pass_grad=True) for s in saes]
        seen = {(sp.layer, sp.site) for sp in splices}
        if len(seen) != len(splices):
            raise GradsaeError("two of the SAEs splice at the same site of the same block: give one SAE per site")
        lowest = min(splices, key=lambda sp: (sp.layer, _SITE_ORDER[sp.site]))
        lowest.pass_grad = False  # nothing below it is scored: the graph stays cut there
        for sp in splices:
            stack.enter_context(sp)
        with torch.enable_grad():
            tv = forward_target(model, packed, opts.target, splices)
            tv.sum().backward()
    out = []
    for sp in splices:
        H, G = sp.latents.detach(), sp.latents.grad
        rows = []
        for b in range(packed.ids.shape[0]):
            g = (G[b] * H[b]).float()
            r = _finish(g, H[b].float(), mask[b], packed, opts.aggregation, run.keep, b)
            r["target_value"] = float(tv[b].detach())
            rows.append(r)
        out.append(rows)
    return out


@dataclass(frozen=True)
class _RunSettings:
    """The per-call settings the scoring helpers need besides ``InfluenceOptions``."""

    layer: int | str | None
    keep: int  # P latents whose per-token influence is kept
    keep_first: int
    exact_batch: int


def _finish(
    g: torch.Tensor,
    H: torch.Tensor,
    mask: torch.Tensor,
    packed: Packed,
    aggregation: str,
    keep: int,
    b: int,
    score: torch.Tensor | None = None,
) -> dict:
    """Per-example result from per-token g [T, C], activations H [T, C] and its mask [T]."""
    T = packed.T
    lo = T - packed.lengths[b]
    scores = aggregate(g[None], mask[None], aggregation)[0] if score is None else score
    baseline = aggregate(H[None], mask[None], "relu-mean")[0]
    last = lo + packed.n_prompt[b] - 1
    active_last = torch.nonzero(H[last] > 0).flatten().cpu()
    keep_idx = top_latents(scores, keep)
    per_token = g[lo:, keep_idx].detach().cpu() if g is not None else None
    return dict(
        scores=scores.detach().cpu(),
        baseline=baseline.detach().cpu(),
        active_last=active_last,
        active_any=int(((H > 0) & mask[:, None]).any(0).sum()),
        per_token_latents=keep_idx.cpu(),
        per_token=per_token,
    )


def _grad_scores(
    model, sae, packed: Packed, opts: InfluenceOptions, run: _RunSettings, aggregation: str | None = None
) -> list[dict]:
    mask = packed.score_mask(opts.positions, opts.target)
    with Splice(model, sae, layer=run.layer, error=opts.error, grad=True, keep_first=run.keep_first) as s:
        with torch.enable_grad():
            tv = forward_target(model, packed, opts.target, s)
            tv.sum().backward()  # rows are independent, so each row gets its own gradient
        H, G = s.latents.detach(), s.latents.grad
    out = []
    for b in range(packed.ids.shape[0]):
        g = (G[b] * H[b]).float()  # [T, C]
        r = _finish(g, H[b].float(), mask[b], packed, aggregation or opts.aggregation, run.keep, b)
        r["target_value"] = float(tv[b].detach())
        out.append(r)
    return out


def _ig_scores(model, sae, packed: Packed, opts: InfluenceOptions, run: _RunSettings) -> dict:
    """IG[n, c] = H[n, c] · mean_α ∂target/∂H[n, c] at α·H (scored positions scaled; others untouched)."""
    if packed.ids.shape[0] != 1:
        raise GradsaeError("integrated gradients run one example at a time")
    layer, target, error, steps = run.layer, opts.target, opts.error, opts.ig_steps
    mask = packed.score_mask(opts.positions, target)  # [1, T]
    alphas = (torch.arange(1, steps + 1, dtype=torch.float32) / steps).to(packed.ids.device)
    rep = packed.repeat(steps)
    scale = torch.where(mask, alphas[:, None], torch.ones(()))  # [m, T]

    def path(H):
        return H * scale[:, :, None].to(H.dtype)

    with Splice(model, sae, layer=layer, error=error, grad=True, latent_fn=path, keep_first=run.keep_first) as s:
        with torch.enable_grad():
            tv = forward_target(model, rep, target, s)
            tv.sum().backward()
        G = s.latents.grad  # [m, T, C]
    with torch.no_grad(), Splice(model, sae, layer=layer, error=error, capture=True, keep_first=run.keep_first) as s:
        full = float(forward_target(model, packed, target, s)[0])
        H = s.latents[0]
    g = (G.mean(0) * H).float()
    r = _finish(g, H.float(), mask[0], packed, opts.aggregation, run.keep, 0)
    r["target_value"] = full
    return r


@torch.no_grad()
def _exact_scores(model, sae, packed: Packed, opts: InfluenceOptions, run: _RunSettings) -> dict:
    """Δtarget when one latent is zeroed at all scored positions, divided by their number N (so it is on the
    scale of the ``mean`` aggregation of grad × act, whose first-order sum it approximates). Blocks 0..L
    run once; each chunk of ablations runs only the blocks above L (from block L on, for a site inside it)."""
    if packed.ids.shape[0] != 1:
        raise GradsaeError("exact ablation runs one example at a time")
    layer, target, error, keep_first = run.layer, opts.target, opts.error, run.keep_first
    n_cand, chunk, seed = opts.exact_latents or None, run.exact_batch, opts.seed
    mask = packed.score_mask(opts.positions, target)[0]
    with Splice(model, sae, layer=layer, error=error, capture=True, keep_first=keep_first) as s:
        full = forward_target(model, packed, target, s)[0]
        H = s.latents[0].float()
    L = s.trunk_layer  # blocks 0..L are the same in every ablation (none for a site inside block 0)
    inputs = dict(input_ids=packed.ids, attention_mask=packed.mask, position_ids=position_ids(packed.mask))
    trunk = run_trunk(model, L, **inputs, use_cache=False) if L >= 0 else None
    active = torch.nonzero(((H > 0) & mask[:, None]).any(0)).flatten()
    if n_cand is not None and active.numel() > 3 * n_cand:
        grad_res = _grad_scores(model, sae, packed, opts, dataclasses.replace(run, keep=1), aggregation="mean")[0]
        base = aggregate(H[None], mask[None], "relu-mean")[0]
        by_grad = active[grad_res["scores"].to(active.device)[active].abs().argsort(descending=True)[:n_cand]]
        by_act = active[base[active].argsort(descending=True)[:n_cand]]
        g = torch.Generator().manual_seed(seed)
        rand = active[torch.randperm(active.numel(), generator=g)[:n_cand].to(active.device)]
        active = torch.unique(torch.cat([by_grad, by_act, rand]))
    pos = torch.nonzero(mask).flatten()
    lo, hi = int(pos.min()), int(pos.max()) + 1
    n = float(mask.sum())
    scores = torch.zeros(sae.d_sae)
    for i in range(0, active.numel(), chunk):
        lat = active[i : i + chunk].tolist()
        rows = [RowEdit(zero=[c], at=lo, until=hi) for c in lat]
        rep = packed.repeat(len(lat))
        with (
            skip_trunk(model, L, trunk, len(lat)) if trunk is not None else contextlib.nullcontext(),
            Splice(model, sae, layer=layer, error=error, edits=rows, keep_first=keep_first) as s,
        ):
            tv = forward_target(model, rep, target, s)
        scores[torch.as_tensor(lat)] = ((full - tv) / n).float().cpu()
    r = _finish(None, H, mask, packed, opts.aggregation, run.keep, 0, score=scores.to(H.device))
    r["target_value"] = float(full)
    r["meta_extra"] = {"exact_latents_ablated": int(active.numel()), "ablated": active.tolist()}
    return r
