"""The SQuAD experiment commands' configs (the CLI flags, config.json and docs/cli.md come from these),
their validation (in ``__post_init__``, so a bad value stops before any model is loaded) and fingerprints
(the fields a results folder refuses to resume under different values)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from dataclasses import dataclass

from .. import schema
from ..config import config_schema, opt
from ..errors import GradsaeError
from ..saes import DEFAULT_SAE
from ..generate import parse_stop as split_stops
from ..influence import InfluenceOptions, check_k
from ..io import read_json
from ..options import ModelOptions
from . import data as sq

METHODS = ("baseline", "gradsae")
SETS = ("top", "bottom")
TASKS = ("perturb", "steer", "stats")


@dataclass(kw_only=True)
class SquadConfig(ModelOptions, InfluenceOptions):
    """Fields shared by the SQuAD experiment commands (model and runtime from ``ModelOptions``, the scoring
    fields from ``InfluenceOptions``)."""

    sae: str = opt(
        DEFAULT_SAE,
        "SAE folder/file or bundled name; a comma list runs a sweep; '{layer}' in it is filled from --layers",
    )
    layer: str = opt("", "splice layer (index or hook name); empty: the SAE's own hook")
    layers: list[int] = opt([], "sweep over these layers (comma list), one results subfolder each")
    data: str = opt(
        sq.DEFAULT_DATA,
        "SQuAD 1.1/2.0 JSON or JSONL file (default: the bundled sample questions); "
        "hf:NAME[:SPLIT] for a Hugging Face dataset",
    )
    limit: int = opt(150, "use the first N answerable questions (0 = all)")
    shuffle: bool = opt(False, "shuffle contexts (seeded) before --limit; questions of a context stay together")
    seed: int = opt(42, "random seed (context shuffle, steering partners, --method exact candidates)")
    template: str = opt("fewshot", "prompt: fewshot, plain, chat, official, or a string with {context} {question}")
    fewshot_data: str = opt(
        sq.DEFAULT_FEWSHOT, "SQuAD JSON the few-shot exemplars come from (default: the bundled exemplar paragraph)"
    )
    fewshot_paragraph: int = opt(
        -1, "index of the exemplar paragraph (-1: first one with 5 questions that is not an evaluation context)"
    )
    extract: str = opt(
        "auto",
        "answer extraction: auto (bracket for --template official, else first-line), first-line, bracket, regex",
        choices=sq.EXTRACTORS,
    )
    answer_regex: str = opt("", "regex for --extract regex (group 1 is the answer)")
    stop: str = opt(
        "auto",
        "stop string(s), comma separated, '\\n' for newline; 'auto': newline, 'Question' or "
        "'Context' for plain-text templates, EOS only otherwise; 'none': EOS only",
    )
    max_new_tokens: int = opt(16, "greedy decoding budget per answer")
    kv_cache: bool = opt(
        True,
        "decode with the KV cache; --no-kv-cache re-runs the whole sequence every step (the "
        "authors' loop: slower, and needed for their steering rule --at newest)",
    )
    min_f1: float = opt(
        0.9, "correct-sample filter: keep examples answered with F1 >= this (0-1), as the authors' code"
    )
    ks: list[str] = opt(
        ["1", "10", "20", "30", "50%"],
        "K values; a percentage (e.g. 50 percent, written 50%%) is "
        "that share of the latents active at the last prompt token, rounded down",
    )
    methods: list[str] = opt(["baseline", "gradsae"], "latent rankings: baseline (mean activation), gradsae")
    sets: list[str] = opt(["top", "bottom"], "which sets: top (TopK), bottom (BottomK)")
    batch_size: int = opt(
        8,
        "questions per batch when answering and scoring; auto (or 0): the most that fit the device memory (estimated)",
        low=0,
        auto=True,
    )
    out: str = opt("results/squad", "results folder (rerun the same command to resume)")
    retry_failed: bool = opt(False, "recompute examples recorded with an error")
    answers_from: str = opt(
        "",
        "reuse the answer phase (filter + latent rankings) of another results folder made "
        "with the same answer-affecting options, e.g. to try another steering rule",
    )
    shard: str = opt(
        "",
        "run only shard i of N (written i/N, 0-based): every N-th context of the questions, whole contexts, so "
        "a long run splits into runs of any length; `gradsae merge` joins the shards' folders into the "
        "unsharded result",
    )

    def __post_init__(self):
        super().__post_init__()
        _check_list("--methods", self.methods, METHODS)
        _check_list("--sets", self.sets, SETS)
        if not self.ks:
            raise GradsaeError("--ks is empty: give at least one K, e.g. --ks 1,10,50%")
        for k in self.ks:
            check_k(k)
        for name, v, lo in (
            ("--limit", self.limit, 0),
            ("--max-new-tokens", self.max_new_tokens, 1),
            ("--batch-size", self.batch_size, 0),
        ):
            if not isinstance(v, int) or v < lo:
                raise GradsaeError(f"{name} {v}: give an integer >= {lo}")
        if not (isinstance(self.min_f1, (int, float)) and math.isfinite(self.min_f1) and 0 <= self.min_f1 <= 1):
            raise GradsaeError(f"--min-f1 {self.min_f1}: F1 is on a 0-1 scale here, e.g. --min-f1 0.9")
        if not str(self.out).strip():
            raise GradsaeError("--out is empty: name a results folder, e.g. --out results/run1")
        if not str(self.data).strip():
            raise GradsaeError("--data is empty: give a SQuAD JSON/JSONL file")
        sq.parse_shard(self.shard)


@dataclass(kw_only=True)
class PerturbConfig(SquadConfig):
    """SQuAD perturbation (RQ1, RQ2): zero each example's TopK / BottomK latents (Baseline and GradSAE) at
    every position, generated tokens included, and score the answers against the gold answers."""

    out: str = opt("results/perturb", "results folder (rerun the same command to resume)")


@dataclass(kw_only=True)
class SteerConfig(SquadConfig):
    """SQuAD local steering (RQ3): zero an example's own TopK/BottomK latents and inject those of a partner
    question on the same context; score the answers against the partner's gold answers."""

    out: str = opt("results/steer", "results folder (rerun the same command to resume)")
    inject: str = opt(
        "activation",
        "value given to the partner's latents: activation (partner's mean "
        "activation) or score (partner's ranking score, the authors' code)",
        choices=("activation", "score"),
    )
    at: str = opt(
        "all",
        "where the partner's latents are set: all positions (paper text), last (last prompt "
        "token and every generated token), newest (last position of each forward; with "
        "--no-kv-cache the authors' rule, with the KV cache the same as last)",
        choices=("all", "last", "newest"),
    )
    clamp: str = opt("", "clamp injected values to 'lo,hi' (authors' code: 0,50); empty = no clamp")
    steer_ks: list[str] = opt([], "K values for steering (default: --ks)")

    def __post_init__(self):
        super().__post_init__()
        for k in self.steer_ks:
            check_k(k)
        parse_clamp(self.clamp)


@dataclass(kw_only=True)
class StatsConfig(SquadConfig):
    """Latent statistics (appendix D.1, Table 3): active latents, 50% sizes, cross overlap of Baseline and
    GradSAE sets, inner overlap across questions of the same context."""

    out: str = opt("results/stats", "results folder (rerun the same command to resume)")


@dataclass(kw_only=True)
class ExperimentConfig(SteerConfig):
    """Perturbation + steering + statistics in one run (one results folder per layer / SAE in a sweep)."""

    out: str = opt("results/experiment", "results folder (rerun the same command to resume)")
    tasks: list[str] = opt(["perturb", "steer", "stats"], "which parts to run")

    def __post_init__(self):
        super().__post_init__()
        _check_list("--tasks", self.tasks, TASKS)


def _check_list(flag: str, values, allowed) -> None:
    if not values:
        raise GradsaeError(f"{flag} is empty: use one or more of {', '.join(allowed)}")
    for v in values:
        if v not in allowed:
            raise GradsaeError(f"unknown value {v!r} in {flag}: use one or more of {', '.join(allowed)}")


def parse_clamp(s: str) -> tuple[float, float] | None:
    """``"lo,hi"`` -> (lo, hi); empty -> None."""
    if not s or not str(s).strip():
        return None
    try:
        lo, hi = (float(x) for x in str(s).split(","))
    except ValueError:
        raise GradsaeError(f"cannot read --clamp {s!r}: give 'lo,hi', e.g. 0,50") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise GradsaeError(f"--clamp {s!r}: give finite lo <= hi, e.g. 0,50")
    return lo, hi


def resolve_stop(s: str, builder: sq.PromptBuilder) -> tuple[str, ...]:
    """The stop strings of a run: ``auto`` takes the template's default, ``none``/empty stops at EOS only."""
    if s == "auto":
        return builder.default_stop
    if s in ("", "none"):
        return ()
    return split_stops(s)


# fields that change results: a results folder refuses to resume under different values. A field missing from
# an older folder's fingerprint is not compared (folders written before it existed still resume).
FINGERPRINT = (
    "model",
    "sae",
    "layer",
    "data",
    "data_sha256",
    "shuffle",
    "seed",
    "template",
    "fewshot_data",
    "fewshot_paragraph",
    "extract",
    "answer_regex",
    "stop",
    "max_new_tokens",
    "min_f1",
    "ks",
    "methods",
    "sets",
    "target",
    "aggregation",
    "positions",
    "method",
    "ig_steps",
    "exact_latents",
    "error",
    "dtype",
    "inject",
    "at",
    "clamp",
    "steer_ks",
    "kv_cache",
    "shard",
)

# fields the answer phase (filter + rankings) depends on: --answers-from needs them equal
ANSWER_FINGERPRINT = tuple(
    k
    for k in FINGERPRINT
    if k not in ("seed", "ks", "methods", "sets", "inject", "at", "clamp", "steer_ks", "kv_cache", "shard")
) + ("stop_resolved", "extract_resolved")


def fingerprint(cfg: SquadConfig, **extra) -> dict:
    """The result-affecting values of ``cfg`` (plus resolved values such as the data file's hash)."""
    d = dataclasses.asdict(cfg)
    return {**{k: d[k] for k in FINGERPRINT if k in d}, **extra}


# A results folder's config.json: the commands run on it, their merged options, and the fingerprint a resume,
# --answers-from and merge compare; each field of the type its option declares.
_OPTIONS = {**config_schema(PerturbConfig), **config_schema(StatsConfig), **config_schema(ExperimentConfig)}
_RESULTS_CONFIG = {
    "commands": [str],
    "config": _OPTIONS,
    "fingerprint": {
        **{k: _OPTIONS[k] for k in FINGERPRINT if k in _OPTIONS},
        "data_sha256": str,
        "stop_resolved": [str],
        "extract_resolved": str,
    },
}
RESULTS_CONFIG_SCHEMA = schema.Required(_RESULTS_CONFIG)


def read_results_config(path: Path, to_show: bool = False) -> dict:
    """A results folder's config.json, checked against ``RESULTS_CONFIG_SCHEMA`` (one line if it does not fit).
    ``to_show`` (the report): every part optional, and the flat options of folders written before config.json
    nested them under "config" are read too."""
    conf = read_json(path)
    if not to_show:
        schema.check(conf, RESULTS_CONFIG_SCHEMA, str(path))
    elif isinstance(conf, dict) and "config" not in conf and "fingerprint" not in conf:
        schema.check(conf, _OPTIONS, str(path))
    else:
        schema.check(conf, _RESULTS_CONFIG, str(path))
    return conf
