"""The ``gradsae`` command line. Each command is a config dataclass plus a ``run(cfg)`` function in
its own module; flags, saved configs and docs all come from that dataclass (see ``config.py``)."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from .errors import GradsaeError

# name -> (module, config class, run function, one-line help). Order is the order in --help.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "demo": (
        "gradsae.demo",
        "DemoConfig",
        "run",
        "the main job on embedded defaults: influence, perturbation, steering, HTML report",
    ),
    "info": ("gradsae.demo", "InfoConfig", "info", "show the bundled model and SAEs, the cache folder and versions"),
    "convert": (
        "gradsae.demo",
        "ConvertConfig",
        "convert",
        "read an SAE in any supported format and save it in SAELens format",
    ),
    "explain": ("gradsae.explain", "ExplainConfig", "run", "top influential latents for one prompt (table or HTML)"),
    "influence": (
        "gradsae.influence.command",
        "InfluenceConfig",
        "run",
        "GradSAE influence scores for prompts (JSON + table)",
    ),
    "perturb": (
        "gradsae.squad.run",
        "PerturbConfig",
        "run_perturb",
        "SQuAD perturbation: mask TopK/BottomK latents (Table 1 upper)",
    ),
    "steer": (
        "gradsae.squad.run",
        "SteerConfig",
        "run_steer",
        "SQuAD local steering with a partner question's latents (Table 1 lower)",
    ),
    "stats": ("gradsae.squad.run", "StatsConfig", "run_stats", "latent statistics: active latents, overlaps (Table 3)"),
    "experiment": (
        "gradsae.squad.run",
        "ExperimentConfig",
        "run_all",
        "perturb + steer + stats in one run, over layers/SAEs",
    ),
    "merge": (
        "gradsae.squad.merge",
        "MergeConfig",
        "run",
        "join the folders of a run split with --shard i/N into the unsharded result (no model needed)",
    ),
    "report": (
        "gradsae.viz.report",
        "ReportConfig",
        "run",
        "rebuild the HTML report of a results folder (no model needed)",
    ),
    "cache": (
        "gradsae.training.cache",
        "CacheConfig",
        "run",
        "cache residual activations (and dL/dx) as float16 shards",
    ),
    "train": (
        "gradsae.training.train",
        "TrainConfig",
        "run",
        "train TopK / g-SAE / E2E SAEs straight from a corpus (or from a cache)",
    ),
    "eval": (
        "gradsae.training.evals",
        "EvalConfig",
        "run",
        "evaluate an SAE: NMSE, L_added, KL, dead latents, steering effect",
    ),
    "sensitivity": (
        "gradsae.sensitivity",
        "SensitivityConfig",
        "run",
        "g-SAE sensitivity analyses: directional derivatives, first-order vs norm, decoder tails",
    ),
    "dashboard": (
        "gradsae.dashboard",
        "DashboardConfig",
        "run",
        "per-latent dashboard: top/random/influence contexts, density, tokens (JSON + HTML)",
    ),
    "rate": (
        "gradsae.rate",
        "RateConfig",
        "run",
        "blind interpretability rating page for 2+ SAEs, and scoring of the ratings",
    ),
    "serve": (
        "gradsae.serve.command",
        "ServeConfig",
        "run",
        "a local page: rank latents for your prompt, check the scores, zero / clamp / steer latents",
    ),
}


class _Parser(argparse.ArgumentParser):
    """Bad options end in one line naming the problem and where the full usage is, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .config import add_dataclass_args

    parser = _Parser(
        prog="gradsae",
        description="Gradient-aware interpretability with sparse autoencoders (GradSAE, g-SAE).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (mod, cls_name, _, help_) in COMMANDS.items():
        cls = getattr(importlib.import_module(mod), cls_name)
        p = sub.add_parser(name, help=help_, description=(cls.__doc__ or help_).strip())
        add_dataclass_args(p, cls)
    return parser


def command_reference() -> str:
    """docs/cli.md: every command's description and options table, from the config dataclasses."""
    from .config import describe

    out = [
        "# Command reference",
        "",
        "Generated from the config dataclasses by `make docs` (`python -m gradsae.cli --reference`); "
        "a test fails when this file is stale. Each results folder saves the same fields in config.json.",
        "",
    ]
    for name, (mod, cls_name, _, help_) in COMMANDS.items():
        cls = getattr(importlib.import_module(mod), cls_name)
        doc = " ".join((cls.__doc__ or help_).split())
        out += [f"## `gradsae {name}`", "", doc, "", describe(cls), ""]
    return "\n".join(out)


# commands that write as they go and continue where a rerun of the same command left off
RESUMABLE = {"demo", "perturb", "steer", "stats", "experiment", "cache", "train", "dashboard", "sensitivity"}


def _resume_hint(command: str) -> str:
    return "; finished work is saved, rerun the same command to resume" if command in RESUMABLE else ""


def _final_name(filename) -> str:
    """The file a failed atomic write was for, not its temp name (``.NAME.<random>.tmp`` -> ``NAME``)."""
    import re
    from pathlib import Path

    p = Path(str(filename))
    m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", p.name)
    return str(p.with_name(m.group(1))) if m else str(p)


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input, interruption and file-system failures end in one line on stderr."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # e.g. during the first second, while torch is still being imported
        print("\ngradsae: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    from .config import check_values, from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    mod, cls_name, fn_name, _ = COMMANDS[args.command]
    try:
        module = importlib.import_module(mod)
        cfg = from_args(getattr(module, cls_name), args)
        check_values(cfg)  # also for the commands without runtime options (rate, report, merge, convert)
        getattr(module, fn_name)(cfg)
    except GradsaeError as e:
        print(f"gradsae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ngradsae {args.command}: interrupted{_resume_hint(args.command)}", file=sys.stderr)
        return 130
    except OSError as e:  # read-only folder, disk full, a file vanished: the system's reason, in one line
        where = f" ({_final_name(e.filename)})" if getattr(e, "filename", None) else ""
        fix = (
            "free some disk space"
            if e.errno == errno.ENOSPC
            else "choose a folder you can write to"
            if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
            else "check the path"
        )
        print(
            f"gradsae {args.command}: error: {e.strerror or e}{where}: {fix}{_resume_hint(args.command)}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--reference"]:
        sys.stdout.write(command_reference())
        sys.exit(0)
    sys.exit(main())
