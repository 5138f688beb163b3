"""``gradsae merge``: join the folders of a run split with ``--shard i/N`` into the unsharded result.

The shards' records are pooled into one ``examples.jsonl`` and summary.json, table.md, the plots and the report
are recomputed from them by the same code a run ends with, over the question order of the unsharded run (read
again from the data file, whose hash must match). No model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import opt
from ..errors import GradsaeError
from ..io import output_lock, read_json, write_json
from . import data as sq
from .config import ExperimentConfig, read_results_config
from .records import RecordLog, read_records


@dataclass(kw_only=True)
class MergeConfig:
    """Join the results folders of a run split with --shard i/N (all N shards) into one folder: the records
    pooled, summary, tables, verdicts, plots and report recomputed as the unsharded run would write them."""

    shards: list[str] = opt(help="the shards' results folders, comma-separated", positional=True)
    out: str = opt("results/merged", "folder for the merged result (created; never one of the shards)")


def _shard_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise GradsaeError(f"{folder} has no config.json: give the results folders of a --shard run")
    conf = read_json(path)
    if not isinstance(conf, dict) or "fingerprint" not in conf or "config" not in conf:
        raise GradsaeError(f"{path} was not written by a gradsae experiment: give the shards' results folders")
    conf = read_results_config(path)
    if (folder / "sweep.json").exists():
        raise GradsaeError(f"{folder} holds a sweep: merge each of its subfolders separately")
    if not conf["fingerprint"].get("shard"):
        raise GradsaeError(f"{folder} is not a shard (it was run without --shard)")
    return conf


BUNDLED = "/gradsae/bundled/"


def _portable(v):
    """A file of the package's own bundled data is named by its place in the package, not by where gradsae is
    installed (shards run from two checkouts of one release used the same few-shot file)."""
    return "gradsae/bundled/" + v.split(BUNDLED, 1)[1] if isinstance(v, str) and BUNDLED in v else v


def check_shards(confs: dict[Path, dict]) -> int:
    """All folders are different shards i/N of one run (same options but the shard, same data); returns N."""
    first_path, first = next(iter(confs.items()))
    base = {k: _portable(v) for k, v in first["fingerprint"].items() if k != "shard"}
    seen: dict[int, Path] = {}
    n_all = None
    for path, conf in confs.items():
        fp = {k: _portable(v) for k, v in conf["fingerprint"].items() if k != "shard"}
        diff = sorted(k for k in set(base) | set(fp) if base.get(k) != fp.get(k))
        if diff:
            raise GradsaeError(
                f"{path} and {first_path} were run with different options ({diff[0]}: {fp.get(diff[0])!r} vs "
                f"{base.get(diff[0])!r}): only shards of one run can be merged"
            )
        i, n = sq.parse_shard(conf["fingerprint"]["shard"])
        if n_all is not None and n != n_all:
            raise GradsaeError(f"{path} is shard {i}/{n} but another folder is of {n_all} shards")
        if i in seen:
            raise GradsaeError(f"{path} and {seen[i]} are both shard {i}/{n}")
        n_all, seen[i] = n, path
    missing = [f"{i}/{n_all}" for i in range(n_all) if i not in seen]
    if missing:
        raise GradsaeError(f"shard(s) {', '.join(missing)} missing: run them with --shard, then merge all {n_all}")
    return n_all


def run(cfg: MergeConfig) -> dict:
    from .run import _Folder, _finalise, data_hash

    folders = [Path(s) for s in cfg.shards if str(s).strip()]
    if not folders:
        raise GradsaeError("no shard folders given: gradsae merge DIR0,DIR1,... --out DIR")
    out = Path(cfg.out)
    if not str(cfg.out).strip():
        raise GradsaeError("--out is empty: name a folder for the merged result")
    if any(out.resolve() == f.resolve() for f in folders):
        raise GradsaeError(f"--out {out} is one of the shards: choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise GradsaeError(f"--out {out} is not empty: choose a new folder (a merge is recomputed in seconds)")
    for f in folders:
        if not f.is_dir():
            raise GradsaeError(f"no results folder at {f}")
    if len({f.resolve() for f in folders}) != len(folders):
        raise GradsaeError("a shard folder is given twice: name each shard once")
    confs = {f: _shard_config(f) for f in folders}
    n = check_shards(confs)
    first = next(iter(confs.values()))
    opts = {k: v for k, v in first["config"].items() if k in {f.name for f in dataclasses.fields(ExperimentConfig)}}
    ecfg = ExperimentConfig(**{**opts, "shard": "", "out": str(out), "progress": False})
    digest = first["fingerprint"].get("data_sha256")
    if digest is not None and data_hash(ecfg.data) != digest:
        raise GradsaeError(f"the data file {ecfg.data} changed since the shards ran: merge needs the same file")
    qas = sq.load_questions(ecfg.data, limit=ecfg.limit or None, seed=ecfg.seed, shuffle=ecfg.shuffle)
    summaries = [read_json(f / "summary.json") for f in folders if (f / "summary.json").exists()]
    if len(summaries) != len(folders):
        raise GradsaeError("a shard has no summary.json: rerun its command so it finishes, then merge")
    meta = {k: summaries[0][k] for k in ("model", "sae", "layer", "d_sae")}
    meta.update(data=ecfg.data, min_f1=ecfg.min_f1, ks=list(ecfg.ks), methods=list(ecfg.methods), sets=list(ecfg.sets))
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        log = RecordLog(out / "examples.jsonl")
        pooled: dict = {}
        for f in folders:
            for key, rec in read_records(f).items():
                if key not in pooled or (not pooled[key].ok and rec.ok):
                    pooled[key] = rec
        for rec in pooled.values():
            log.append(rec)
        merged_cfg = {
            "commands": sorted({c for conf in confs.values() for c in conf.get("commands", [])}) + ["merge"],
            "config": {**first["config"], "shard": ""},
            "fingerprint": {**first["fingerprint"], "shard": ""},
            "merged_from": [str(f) for f in folders],
            "shards": n,
        }
        write_json(out / "config.json", merged_cfg)
        folder = _Folder(out, log, pooled, False)
        tasks = [t for t in ("perturb", "steer") if any(k[0] == t for k in pooled)]
        summary = _finalise(ecfg, tasks, merged_cfg, qas, folder, meta, f"GradSAE on SQuAD — {meta['model']}, merged")
    print(f"merged {n} shards ({len(qas)} questions) -> {out}/")
    return summary
