"""The driver of ``gradsae perturb / steer / stats / experiment``.

Per results folder (``_run_one``): prepare (validate, fingerprint, config.json, ``--answers-from`` import),
the answer phase, the edit phases (perturb, then steer, example by example), finalise (merge rank shards,
summary.json, table.md, plots, report.html). Every finished unit is appended to examples.jsonl at once, so
a rerun of the same command resumes where the last one stopped, and a second writer is refused by the
folder's lock. Under ``torchrun`` answer batches and examples are sharded by rank; each rank writes
``examples.rank{r}.jsonl`` and rank 0 merges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..distributed import Dist, all_min
from ..errors import GradsaeError
from ..saes import DEFAULT_SAE
from ..io import atomic_write_bytes, atomic_write_text, output_lock, refuse_foreign, write_json
from ..options import Runtime, start
from . import data as sq
from .config import (
    ANSWER_FINGERPRINT,
    TASKS,
    ExperimentConfig,
    PerturbConfig,
    SquadConfig,
    StatsConfig,
    SteerConfig,
    fingerprint,
    parse_clamp,
    read_results_config,
)
from .phases import RunContext, answer_batch, answer_rows, perturb_example, pick_partner, steer_example
from .records import AnswerRecord, EditRecord, Record, RecordLog, merge_shards, read_records
from .summary import SWEEP_SCHEMA, summarize
from .tables import sweep_markdown, table_markdown

__all__ = [
    "run_perturb",
    "run_steer",
    "run_stats",
    "run_all",
    "make_prompt_builder",
    "import_answers",
    "PerturbConfig",
    "SteerConfig",
    "StatsConfig",
    "ExperimentConfig",
]


def make_prompt_builder(cfg: SquadConfig, tok, qas: Sequence[sq.QA]) -> sq.PromptBuilder:
    """The run's prompt template; few-shot exemplars never come from the evaluation contexts ``qas``."""
    if cfg.template == "fewshot":
        ctx_text, pairs = sq.fewshot_exemplars(
            cfg.fewshot_data,
            exclude_contexts=[q.context for q in qas],
            paragraph=None if cfg.fewshot_paragraph < 0 else cfg.fewshot_paragraph,
        )
        return sq.PromptBuilder("fewshot", tok, ctx_text, pairs)
    return sq.PromptBuilder(cfg.template, tok)


def data_hash(spec: str) -> str | None:
    """sha256 of the data file's bytes (a resumed run must not reuse golds of a file that has changed)."""
    p = Path(spec)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]


def _error_record(task: str, q_id: str, e: BaseException, context_id: str = "") -> Record:
    tb = traceback.format_exc(limit=3)[-1500:]
    if task == "answer":
        return AnswerRecord(id=q_id, context_id=context_id, error=_err(e), traceback=tb)
    return EditRecord(task=task, id=q_id, error=_err(e), traceback=tb)


def _progress(it, total, desc, enabled):
    if not enabled:
        return it
    try:
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, unit="ex", dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        return it


# ---------------------------------------------------------------------------------------------
# config.json: fingerprints, foreign folders, --answers-from
# ---------------------------------------------------------------------------------------------


def _refuse_foreign(out: Path) -> None:
    """A folder holding a config.json / summary.json that gradsae did not write is never overwritten."""
    refuse_foreign(
        out,
        {
            "config.json": lambda d: isinstance(d, dict) and "fingerprint" in d and "commands" in d,
            "summary.json": lambda d: (
                isinstance(d, dict) and str(d.get("schema", "")).startswith("gradsae.experiments.")
            ),
        },
        "a gradsae experiment",
    )


def check_config(out: Path, cfg: SquadConfig, command: str, extra: dict | None = None) -> dict:
    """Refuse to resume a folder made with different result-affecting options; return the merged config."""
    _refuse_foreign(out)
    fp = fingerprint(cfg, **(extra or {}))
    path = out / "config.json"
    merged = {"commands": [command], "config": dataclasses.asdict(cfg), "fingerprint": fp}
    if path.exists():
        old = read_results_config(path)
        ofp = old["fingerprint"]
        diff = [k for k in fp if k in ofp and ofp[k] != fp[k]]
        if diff:
            k = diff[0]
            what = "the data file's content changed" if k == "data_sha256" else f"{k}: {ofp[k]!r} now {fp[k]!r}"
            raise GradsaeError(
                f"results folder {out} was made with different options ({what}): use another --out or delete the folder"
            )
        merged["commands"] = list(dict.fromkeys(old.get("commands", []) + [command]))
        merged["config"] = {**old.get("config", {}), **merged["config"]}
        merged["fingerprint"] = {**ofp, **fp}
    return merged


def import_answers(src: Path, out: Path, fp: dict, ks: Sequence[str], qids: Sequence[str]) -> int:
    """Copy answer records (filter + stored rankings) from results folder ``src`` into ``out``'s
    examples.jsonl for the questions in ``qids`` that ``out`` lacks; returns how many. Refuses a folder made
    with other answer-affecting options, or whose stored rankings are shorter than ``ks`` needs."""
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise GradsaeError(f"--answers-from {src}: no config.json there; give a gradsae results folder")
    ofp = read_results_config(cfg_path)["fingerprint"]
    keys = ANSWER_FINGERPRINT + (("seed",) if ofp.get("shuffle") else ())  # the seed picks the questions
    diff = [k for k in keys if k in fp and k in ofp and ofp[k] != fp[k]]
    if diff:
        k = diff[0]
        raise GradsaeError(
            f"--answers-from {src} was made with {k}={ofp[k]!r}, this run has {fp[k]!r}: "
            "the answers and rankings would differ; rerun the answer phase instead"
        )
    old_ks = set(ofp.get("ks", [])) | set(ofp.get("steer_ks", []) or []) | {"50%"}
    missing = [k for k in ks if k not in old_ks]
    if missing:
        raise GradsaeError(
            f"--answers-from {src} stored rankings for K in {sorted(old_ks)}, not K={missing[0]}: "
            "use those K values or rerun the answer phase"
        )
    have, theirs = read_records(out), read_records(src)
    log = RecordLog(out / "examples.jsonl")
    n = 0
    for qid in qids:
        r = theirs.get(("answer", qid))
        if r is not None and r.ok and ("answer", qid) not in have:
            log.append(dataclasses.replace(r, answers_from=str(src)))
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# One results folder
# ---------------------------------------------------------------------------------------------


@dataclass
class _Folder:
    """A results folder during a run: the records so far and this rank's log."""

    out: Path
    log: RecordLog
    recs: dict
    retry_failed: bool

    def done(self, task: str, qid: str) -> bool:
        r = self.recs.get((task, qid))
        return r is not None and not (self.retry_failed and not r.ok)

    def record(self, r: Record) -> None:
        self.log.append(r)
        self.recs[(r.task, r.id)] = r

    def reload(self) -> None:
        self.recs = read_records(self.out)


def _answer_phase(ctx: RunContext, qas: Sequence[sq.QA], f: _Folder, dist: Dist, show: bool) -> list[AnswerRecord]:
    """Answer + filter + influence in fixed global batches (batch j on rank j % world); the kept records."""
    B = ctx.cfg.batch_size
    batches = [qas[i : i + B] for i in range(0, len(qas), B)]
    mine = [b for j, b in enumerate(batches) if j % dist.world == dist.rank]
    todo = [b for b in ([q for q in b if not f.done("answer", q.id)] for b in mine) if b]
    for b in _progress(todo, len(todo), f"answer+influence ({B}/batch)", show):
        try:
            for r in answer_batch(ctx, b):
                f.record(r)
        except (GradsaeError, MemoryError):
            raise
        except Exception:  # retry one by one so a bad example cannot sink its batch
            for q in b:
                try:
                    for r in answer_batch(ctx, [q]):
                        f.record(r)
                except Exception as e:
                    f.record(_error_record("answer", q.id, e, q.context_id))
    dist.barrier()
    f.reload()
    answered = [f.recs[("answer", q.id)] for q in qas if ("answer", q.id) in f.recs]
    if answered and all(not r.ok for r in answered):
        raise GradsaeError(
            f"every example failed while answering (first: {answered[0].error}): check the model, SAE and template"
        )
    return [r for r in answered if r.ok and r.kept]


def _edit_phase(
    ctx: RunContext,
    kept: Sequence[AnswerRecord],
    tasks: Sequence[str],
    prompt_of: Callable,
    f: _Folder,
    dist: Dist,
    show: bool,
) -> None:
    """Perturbation then steering, example by example (so a run stopped early has both tables on the same
    examples); kept examples sharded by rank."""
    mine = [r.id for j, r in enumerate(kept) if j % dist.world == dist.rank]
    triples = [(r.id, r.context_id, r.question) for r in kept]

    def steer(qid):
        a = f.recs[("answer", qid)]
        pid = pick_partner(qid, a.context_id, triples, a.question, ctx.cfg.seed)
        return steer_example(ctx, a, f.recs[("answer", pid)] if pid else None, prompt_of(qid))

    work = {"perturb": lambda qid: perturb_example(ctx, f.recs[("answer", qid)], prompt_of(qid)), "steer": steer}
    jobs = [(qid, t) for qid in mine for t in ("perturb", "steer") if t in tasks and not f.done(t, qid)]
    for qid, task in _progress(jobs, len(jobs), "+".join(t for t in ("perturb", "steer") if t in tasks), show):
        try:
            r = work[task](qid)
        except (GradsaeError, MemoryError):
            raise
        except Exception as e:
            r = _error_record(task, qid, e)
        f.record(r)
    dist.barrier()


def _finalise(
    cfg: SquadConfig, tasks: Sequence[str], merged_cfg: dict, qas: Sequence[sq.QA], f: _Folder, meta: dict, title: str
) -> dict:
    """Rank 0: merge shards, write summary.json, table.md, the plots and report.html."""
    from ..viz.plots import k_curves

    merge_shards(f.out)
    f.reload()
    full = merged_cfg["config"]  # also the options of earlier commands on this folder (e.g. steer after perturb)
    order = [q.id for q in qas]
    present = [t for t in ("perturb", "steer") if t in tasks or any((t, i) in f.recs for i in order)]
    clamp = parse_clamp(full.get("clamp", ""))
    meta = {
        **meta,
        "tasks": present,
        "steer_ks": list(full.get("steer_ks") or []),
        "inject": full.get("inject"),
        "at": full.get("at"),
        "clamp": list(clamp) if clamp else None,
    }
    summary = summarize(f.recs, order, meta)
    write_json(f.out / "summary.json", summary)
    atomic_write_text(f.out / "table.md", table_markdown(summary))
    pngs = None
    try:
        pngs = k_curves(summary)
        for name, png in pngs.items():
            atomic_write_bytes(f.out / f"{name}.png", png)
    except Exception as e:  # plots are a convenience; the numbers are in summary.json
        print(f"warning: plotting failed ({_err(e)})")
    for w in summary.get("warnings", []):
        print(f"warning: {w}", flush=True)
    _write_report(f.out, title, pngs)
    return summary


def _run_one(
    cfg: SquadConfig,
    tasks: Sequence[str],
    command: str,
    out: Path,
    sae_spec: str,
    layer,
    model,
    tok,
    dist: Dist,
    rt: Runtime,
) -> dict | None:
    from ..saes import load_sae
    from ..model import model_name
    from ..hooks import SPLICE_SITES
    from ..splice import check_compatible

    sae = load_sae(sae_spec, device=str(next(model.parameters()).device))
    check_compatible(model, sae, layer, SPLICE_SITES)
    qas = sq.load_questions(cfg.data, limit=cfg.limit or None, seed=cfg.seed, shuffle=cfg.shuffle)
    builder = make_prompt_builder(cfg, tok, qas)  # from every question: a shard's prompts are the run's
    shard = sq.parse_shard(cfg.shard)
    if shard is not None:
        qas = sq.shard_questions(qas, *shard)
        if not qas:
            raise GradsaeError(f"--shard {cfg.shard} holds no question: there are fewer contexts than shards")
    ctx = RunContext(cfg, model, tok, sae, layer, builder)
    by_id = {q.id: q for q in qas}

    def prompt_of(qid):
        return builder(by_id[qid].context, by_id[qid].question)

    longest = sq.check_prompt_lengths(tok, model, [prompt_of(q.id) for q in qas], cfg.max_new_tokens)
    rows = all_min(answer_rows(cfg, model, sae, layer, longest, len(qas), rt.device), rt.device)  # same on every rank
    ctx.cfg = dataclasses.replace(cfg, batch_size=rows)  # the answer phase's batches (results do not depend on it)

    out.mkdir(parents=True, exist_ok=True)
    merged_cfg = check_config(
        out,
        cfg,
        command,
        {"stop_resolved": list(ctx.stop), "extract_resolved": ctx.extract, "data_sha256": data_hash(cfg.data)},
    )
    dist.barrier()
    if dist.rank == 0:
        merged_cfg["sae_resolved"] = sae_spec
        merged_cfg["layer_resolved"] = str(layer) if layer is not None else sae.cfg.hook_name
        merged_cfg["runtime"] = {**rt.as_config(), "batch_size_used": rows}
        write_json(out / "config.json", merged_cfg)
        if cfg.answers_from:
            ks = list(cfg.ks) + list(getattr(cfg, "steer_ks", []) or [])
            n = import_answers(Path(cfg.answers_from), out, merged_cfg["fingerprint"], ks, [q.id for q in qas])
            if cfg.progress:
                print(f"reused {n} answer records from {cfg.answers_from}", flush=True)
    dist.barrier()
    f = _Folder(
        out,
        RecordLog(out / ("examples.jsonl" if not dist.enabled else f"examples.rank{dist.rank}.jsonl")),
        read_records(out),
        cfg.retry_failed,
    )
    show = cfg.progress and dist.rank == 0
    rt.announce(command)
    kept = _answer_phase(ctx, qas, f, dist, show)
    _edit_phase(ctx, kept, tasks, prompt_of, f, dist, show)
    if dist.rank != 0:
        return None
    meta = {
        "model": model_name(model),
        "sae": sae_spec,
        "layer": str(layer) if layer is not None else sae.cfg.hook_name,
        "d_sae": sae.d_sae,
        "data": cfg.data,
        "min_f1": cfg.min_f1,
        "ks": list(cfg.ks),
        "methods": list(cfg.methods),
        "sets": list(cfg.sets),
    }
    return _finalise(cfg, tasks, merged_cfg, qas, f, meta, f"GradSAE on SQuAD — {meta['model']}, {sae_spec}")


def _write_report(out: Path, title: str, pngs: dict | None = None) -> None:
    """report.html for a results folder; like the plots a convenience, so a failure only warns."""
    try:
        from ..viz.report import report_from_folder

        report_from_folder(out, title=title, plots=pngs)
    except Exception as e:
        print(f"warning: the HTML report failed ({_err(e)}); rebuild it with gradsae report {out}")


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _runs(cfg: SquadConfig) -> list[tuple[str, str, object]]:
    """(tag, sae spec, layer) for every run of a sweep; a single run has tag ''."""
    saes = [s.strip() for s in cfg.sae.split(",") if s.strip()]
    if not saes:
        raise GradsaeError(f"no SAE given: pass --sae NAME_OR_PATH (e.g. {DEFAULT_SAE})")
    layers = list(cfg.layers) or [None]
    fixed = cfg.layer.strip() if isinstance(cfg.layer, str) else cfg.layer
    if fixed not in ("", None) and cfg.layers:
        raise GradsaeError("give either --layer or --layers, not both")
    runs = []
    for s in saes:
        for L in layers:
            spec = s.replace("{layer}", str(L)) if L is not None else s
            if "{layer}" in spec:
                raise GradsaeError(f"--sae {s!r} has '{{layer}}' but no --layers were given")
            layer = None if (L is None or "{layer}" in s) else int(L)
            if L is None and fixed not in ("", None):
                layer = int(fixed) if re.fullmatch(r"-?\d+", str(fixed)) else fixed
            tag = "_".join(
                x
                for x in (
                    re.sub(r"[^\w.-]+", "_", s.replace("{layer}", "")).strip("_") if len(saes) > 1 else "",
                    f"L{L}" if L is not None else "",
                )
                if x
            )
            runs.append((tag, spec, layer))
    return runs


def _run(cfg: SquadConfig, tasks: Sequence[str], command: str, model=None, tokenizer=None):
    for t in tasks:
        if t not in TASKS:
            raise GradsaeError(f"unknown task {t!r}: use perturb, steer and/or stats")
    runs = _runs(cfg)
    _refuse_foreign(Path(cfg.out))  # before the model loads: a wrong --out is one line at once
    rt = start(cfg, command)
    out = Path(cfg.out)
    with Dist(cfg.device) as dist, output_lock(out) if dist.rank == 0 else contextlib.nullcontext():
        if model is None:
            from ..model import load_model

            model, tokenizer = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
        results = []
        for tag, spec, layer in runs:
            sub = out / tag if tag else out
            summary = _run_one(cfg, tasks, command, sub, spec, layer, model, tokenizer, dist, rt)
            if summary is not None:
                results.append(
                    {"tag": tag, "sae": spec, "layer": summary["layer"], "dir": tag or ".", "summary": summary}
                )
                print(f"\n{table_markdown(summary)}\nresults in {sub}/")
        if dist.rank != 0:
            return None
        if len(runs) > 1:
            write_json(out / "sweep.json", {"schema": SWEEP_SCHEMA, "runs": results})
            atomic_write_text(out / "table.md", sweep_markdown(results))
            print(sweep_markdown(results))
            _write_report(out, "GradSAE on SQuAD — sweep")
        return results[0]["summary"] if len(results) == 1 else {"schema": SWEEP_SCHEMA, "runs": results}


def run_perturb(cfg: PerturbConfig, model=None, tokenizer=None):
    """Perturbation (Table 1 upper); returns summary.json's content (rank 0) — also written to ``cfg.out``."""
    return _run(cfg, ["perturb"], "perturb", model, tokenizer)


def run_steer(cfg: SteerConfig, model=None, tokenizer=None):
    """Local steering (Table 1 lower)."""
    return _run(cfg, ["steer"], "steer", model, tokenizer)


def run_stats(cfg: StatsConfig, model=None, tokenizer=None):
    """Latent statistics (Table 3)."""
    return _run(cfg, ["stats"], "stats", model, tokenizer)


def run_all(cfg: ExperimentConfig, model=None, tokenizer=None):
    """Perturbation, steering and statistics (and a sweep over --layers / several --sae)."""
    return _run(cfg, list(cfg.tasks), "experiment", model, tokenizer)
