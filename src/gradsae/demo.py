"""``gradsae demo`` (the main job on embedded defaults), ``gradsae info`` and ``gradsae convert``."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from .config import opt
from .saes import DEFAULT_SAE
from .options import SAE_HELP, ModelOptions, start

from .squad.data import DEFAULT_DATA as SAMPLE_QA, DEFAULT_FEWSHOT as SAMPLE_FEWSHOT


@dataclass(kw_only=True)
class DemoConfig(ModelOptions):
    """The main job on embedded defaults: bundled SmolLM2 + bundled SAE + the sample questions shipped with
    gradsae -> correct-sample filter, GradSAE influence, perturbation and local steering (K = 1, 10, 50%),
    statistics, and a self-contained HTML report."""

    sae: str = opt(DEFAULT_SAE, SAE_HELP)
    data: str = opt(SAMPLE_QA, "questions: SQuAD JSON / JSONL (default: the bundled sample questions)")
    fewshot_data: str = opt(SAMPLE_FEWSHOT, "SQuAD JSON with the few-shot exemplar paragraph")
    ks: list[str] = opt(
        ["1", "10", "50%"],
        "K values for masking and steering (50%% = half the latents active at the last prompt token)",
    )
    examples: int = opt(6, "examples shown in detail (token heatmaps, latent tables)")
    limit: int = opt(
        16,
        "questions used (the first N, whole contexts first; 0 = all 84); 16 keeps the demo "
        "under 10 minutes on 2 CPU cores",
    )
    error: str = opt(
        "keep",
        "SAE error term: keep (default here: the bundled SAE's reconstruction alone "
        "breaks SmolLM2's few-shot QA) or none (paper)",
        choices=("none", "keep"),
    )
    out: str = opt("results/demo", "results folder (rerun to resume)")
    quick: bool = opt(False, "a quick look: 12 questions, K = 1 and 50%%, no steering, 3 detailed examples")
    seed: int = opt(42, "random seed (steering partners)")

    def __post_init__(self):
        from .errors import GradsaeError
        from .influence import check_k

        super().__post_init__()
        for flag, v in (("--examples", self.examples), ("--limit", self.limit)):
            if v < 0:
                raise GradsaeError(f"{flag} {v}: give 0 or more")
        if not str(self.out).strip():
            raise GradsaeError("--out is empty: name a results folder, e.g. --out results/demo")
        for k in self.ks:
            check_k(k)


def run(cfg: DemoConfig) -> Path:
    """Run the experiment, explain a few kept examples in detail, write report.html, print Table 1."""
    from .model import load_model
    from .squad.run import ExperimentConfig, run_all

    t0 = time.perf_counter()
    print("loading the model (the first run converts the bundled GGUF file once, ~20 s)...", flush=True)
    rt = start(cfg, "demo")
    model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    rt.announce("demo")
    ecfg = ExperimentConfig(
        model=cfg.model,
        sae=cfg.sae,
        data=cfg.data,
        fewshot_data=cfg.fewshot_data,
        ks=["1", "50%"] if cfg.quick else list(cfg.ks),
        limit=12 if cfg.quick else cfg.limit,
        seed=cfg.seed,
        device=rt.device,
        dtype=cfg.dtype,
        threads=cfg.threads,
        progress=cfg.progress,
        error=cfg.error,
        out=cfg.out,
        tasks=["perturb", "stats"] if cfg.quick else ["perturb", "steer", "stats"],
    )
    summary = run_all(ecfg, model, tok)
    if summary is None:  # a non-zero torchrun rank
        return Path(cfg.out)
    views = explain_kept(ecfg, model, tok, n=3 if cfg.quick else cfg.examples)
    report = write_demo_report(cfg, ecfg, views)
    print(f"\nreport: {report}   ({time.perf_counter() - t0:.0f} s in all)")
    return report


def explain_kept(ecfg, model, tok, n: int) -> list[dict]:
    """Influence views (Influence.to_json + promoted tokens) for the first n examples the filter kept."""
    from .saes import load_sae
    from .influence import Example, influence, promoted_tokens
    from .squad import data as sq
    from .squad.config import resolve_stop
    from .squad.records import read_records
    from .squad.run import make_prompt_builder

    records = read_records(ecfg.out)
    kept = [r.id for (task, _), r in records.items() if task == "answer" and r.ok and r.kept][:n]
    if not kept:
        return []
    qas = sq.load_questions(ecfg.data, limit=ecfg.limit or None, seed=ecfg.seed, shuffle=ecfg.shuffle)
    by_id = {q.id: q for q in qas}
    builder = make_prompt_builder(ecfg, tok, qas)
    sae = load_sae(ecfg.sae, device=str(next(model.parameters()).device))
    exs = [Example(builder(by_id[i].context, by_id[i].question), id=i) for i in kept if i in by_id]
    res = influence(
        model,
        tok,
        sae,
        exs,
        ecfg.influence_options(),
        layer=ecfg.layer or None,
        max_new_tokens=ecfg.max_new_tokens,
        stop=resolve_stop(ecfg.stop, builder),
        batch_size=2,
    )
    views = []
    for r in res:
        latents = sorted(
            {int(c) for c in r.top(10)} | {int(c) for c in r.bottom(10)} | {int(c) for c in r.top(10, baseline=True)}
        )
        views.append(r.to_json(top=10, promoted=promoted_tokens(model, tok, sae, latents)))
    return views


def write_demo_report(cfg: DemoConfig, ecfg, views: list[dict]) -> Path:
    from .saes import resolve_path
    from .io import read_json
    from .viz.report import report_from_folder

    sae_eval = None
    try:
        eval_path = resolve_path(ecfg.sae) / "eval.json"
        if eval_path.exists():
            sae_eval = read_json(eval_path)
    except Exception:  # an SAE given as a file or a registry name has no eval.json beside it
        sae_eval = None
    return report_from_folder(ecfg.out, views, sae_eval=sae_eval)


@dataclass
class InfoConfig:
    """Show the bundled model and SAEs, the cache folder and library versions."""

    sae: str = opt("", "also describe this SAE")


def info(cfg: InfoConfig) -> None:
    import torch
    import transformers

    from .saes import bundled_saes, load_sae
    from .model import cache_dir

    print(
        f"gradsae on Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(f"cache folder: {cache_dir()}")
    print("bundled SAEs (NMSE and L_added on held-out text, from each folder's eval.json; card: README.md):")
    for line in bundled_table(bundled_saes()):
        print(f"  {line}")
    if cfg.sae:
        print(load_sae(cfg.sae).describe())


def bundled_table(saes: dict[str, Path]) -> list[str]:
    """One aligned line per bundled SAE: name, hook, architecture, k, d_sae, training tokens, NMSE, L_added."""
    from .saes import load_sae
    from .io import read_json

    rows = [("name", "hook", "arch", "k", "d_sae", "train tokens", "NMSE", "L_added")]
    for name, folder in saes.items():
        sae = load_sae(folder)
        meta = sae.cfg.metadata or {}
        ev = read_json(folder / "eval.json")["eval_result_metrics"] if (folder / "eval.json").exists() else None
        rows.append(
            (
                name,
                sae.cfg.hook_name,
                sae.cfg.architecture,
                str(sae.cfg.k or "-"),
                str(sae.d_sae),
                str(meta.get("model_tokens") or meta.get("train_tokens") or "-"),
                f"{ev['reconstruction_quality']['nmse']:.4f}" if ev else "-",
                f"{ev['model_performance_preservation']['l_added']:.4f}" if ev else "-",
            )
        )
    if len(rows) == 1:
        return ["(none)"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


@dataclass
class ConvertConfig:
    """Read an SAE in any supported format and save it as a folder that sae-lens (SAE.load_from_disk) and
    gradsae both load with identical encode/decode (input scaling folded in; g-SAE written as TopK and
    BatchTopK as JumpReLU for sae-lens, with gradsae's own metadata beside them)."""

    src: str = opt(help="source SAE (folder, file or bundled name)", positional=True)
    dst: str = opt(help="destination folder (new or empty)", positional=True)
    dtype: str = opt("", "save as this dtype (float32, float16, bfloat16); default keeps it")
    hook_name: str = opt("", "override the hook name, e.g. blocks.9.hook_resid_post")


def convert(cfg: ConvertConfig) -> None:
    import os
    import shutil

    from .errors import GradsaeError
    from .saes import SAVE_DTYPES, load_sae, save_saelens
    from .hooks import canonical_hook_name

    if cfg.dtype and cfg.dtype not in SAVE_DTYPES:
        raise GradsaeError(f"--dtype {cfg.dtype!r} is not a dtype gradsae saves: use {', '.join(SAVE_DTYPES)}")
    dst = Path(cfg.dst).expanduser()
    if not cfg.dst.strip():
        raise GradsaeError("the destination folder is empty text: give a folder name")
    if dst.exists() and not dst.is_dir():
        raise GradsaeError(f"{dst} is a file: give a new or empty folder as the destination")
    if dst.is_dir() and any(dst.iterdir()):
        raise GradsaeError(f"{dst} already holds files: give a new or empty folder (nothing there is overwritten)")
    sae = load_sae(cfg.src)
    if cfg.hook_name:
        hook = canonical_hook_name(cfg.hook_name)
        if not hook.startswith("blocks."):
            raise GradsaeError(
                f"--hook-name {cfg.hook_name!r} is not a hook name gradsae knows: use e.g. "
                "blocks.9.hook_resid_post or blocks.9.hook_mlp_out"
            )
        sae.cfg.hook_name = hook
    # write beside the destination, then rename: an interrupted convert leaves no half folder at dst
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_saelens(sae, tmp, dtype=cfg.dtype or None)
        if dst.is_dir():
            dst.rmdir()
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{sae.describe()} -> {dst}")
