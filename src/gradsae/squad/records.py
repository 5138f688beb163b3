"""Typed per-example records of a SQuAD results folder and the ONE reader of its ``examples.jsonl``.

On disk every finished unit is one JSON line (``io.JsonlLog``): an ``answer`` record per question, a
``perturb`` and a ``steer`` record per kept question (see docs/experiments.md for the fields). In memory they
are ``AnswerRecord`` / ``EditRecord``; ``to_json`` writes exactly the layout older versions wrote, and
``from_json`` reads every folder written since the format began (unknown keys are kept in ``extra``).

``read_records(folder)`` reads ``examples.jsonl`` and any ``examples.rank<r>.jsonl`` shards of a torchrun
run; for one (task, id) a success beats an error, otherwise the later line wins. ``merge_shards`` folds the
shards into ``examples.jsonl``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Union

from ..errors import GradsaeError
from ..influence import resolve_k
from ..io import JsonlLog
from ..schema import INT, NUM, MapOf, Pair, Range, Required, check


@dataclass(frozen=True, order=True)
class CellKey:
    """One cell of the perturbation / steering grid: latent ranking (baseline, gradsae) × set (top, bottom) × K.
    Written as ``"gradsae/top/10"`` in JSON."""

    method: str
    side: str
    k: str

    def __str__(self) -> str:
        return f"{self.method}/{self.side}/{self.k}"

    @classmethod
    def parse(cls, s: str) -> "CellKey":
        parts = str(s).split("/")
        if len(parts) != 3:
            raise ValueError(f"not a cell key (method/set/K): {s!r}")
        return cls(*parts)


@dataclass
class RankedLatent:
    """One latent of a stored ranking: its index, its ranking score (GradSAE score, or the mean activation for
    the Baseline) and its mean activation. JSON: ``[latent, score, activation]``."""

    latent: int
    score: float
    activation: float

    def to_json(self) -> list:
        return [self.latent, self.score, self.activation]

    @classmethod
    def from_json(cls, row) -> "RankedLatent":
        return cls(int(row[0]), float(row[1]), float(row[2]))


@dataclass
class LatentSet:
    """The rankings stored for one kept example: ``rankings[method][side]`` best first, long enough for the
    largest K of the run; ``take`` cuts the first K (K resolved against ``n_active_last``)."""

    rankings: dict[str, dict[str, list[RankedLatent]]]

    def take(self, method: str, side: str, k: str, n_active_last: int) -> list[RankedLatent]:
        rows = self.rankings.get(method, {}).get(side)
        if rows is None:
            raise GradsaeError(
                f"a kept example has no {method} {side} ranking in examples.jsonl: the file is damaged or was "
                "edited; delete that line and rerun to recompute it"
            )
        return rows[: resolve_k(k, n_active_last)]

    def ids(self, method: str, side: str, k: str, n_active_last: int) -> list[int]:
        return [e.latent for e in self.take(method, side, k, n_active_last)]

    def to_json(self) -> dict:
        return {m: {s: [e.to_json() for e in rows] for s, rows in sides.items()} for m, sides in self.rankings.items()}

    @classmethod
    def from_json(cls, d: dict) -> "LatentSet":
        return cls(
            {m: {s: [RankedLatent.from_json(e) for e in rows] for s, rows in sides.items()} for m, sides in d.items()}
        )


@dataclass
class Cell:
    """One answer under one edit (or none), scored: EM and F1 in [0, 1] against the gold answers (the
    partner's, for steering). ``k`` latents edited; ``own_f1`` (steering) F1 against the example's own
    answers; ``overlap`` (steering) share of the example's set also in the partner's; ``agree`` (the
    perturbation control) whether it equals the filtering run's prediction."""

    prediction: str = ""
    em: float = 0.0
    f1: float = 0.0
    own_f1: float | None = None
    k: int | None = None
    overlap: float | None = None
    agree: bool | None = None

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, d: dict) -> "Cell":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})  # null: the default


@dataclass
class AnswerRecord:
    """Phase 1 for one question: the answer through the splice, its score, the correct-sample filter, and for
    a kept question the latent rankings. ``unspliced``: the same question answered by the model without the
    SAE (recorded since the splice can lose most answers); absent in folders written before it existed."""

    task: ClassVar[str] = "answer"
    id: str
    context_id: str = ""
    question: str = ""
    golds: list[str] = field(default_factory=list)
    prediction: str = ""
    raw: str = ""
    em: float = 0.0
    f1: float = 0.0
    kept: bool = False
    n_active_last: int | None = None
    n_active_any: int | None = None
    sets: LatentSet | None = None
    unspliced: Cell | None = None
    seconds: float | None = None
    answers_from: str | None = None
    error: str | None = None
    traceback: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        if self.error is not None:
            return {
                "task": "answer",
                "id": self.id,
                "context_id": self.context_id,
                "error": self.error,
                "traceback": self.traceback,
                **self.extra,
            }
        d: dict = {
            "task": "answer",
            "id": self.id,
            "context_id": self.context_id,
            "question": self.question,
            "golds": list(self.golds),
            "prediction": self.prediction,
            "raw": self.raw,
            "em": self.em,
            "f1": self.f1,
            "kept": self.kept,
        }
        if self.unspliced is not None:
            d["unspliced"] = self.unspliced.to_json()
        if self.sets is not None:
            d.update(n_active_last=self.n_active_last, n_active_any=self.n_active_any, sets=self.sets.to_json())
        for k in ("seconds", "answers_from"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return {**d, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> "AnswerRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known and v is not None}  # null: the default
        kw["id"] = str(d["id"])
        if kw.get("sets") is not None:
            kw["sets"] = LatentSet.from_json(kw["sets"])
        if kw.get("unspliced") is not None:
            kw["unspliced"] = Cell.from_json(kw["unspliced"])
        if "golds" in kw:
            kw["golds"] = [str(g) for g in kw["golds"]]
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known and k != "task"})


@dataclass
class EditRecord:
    """Phase 2 or 3 for one kept question: ``task`` is ``perturb`` or ``steer``. ``control`` is the unedited row
    of the same batch (JSON ``control`` for perturb, ``unsteered`` for steer, scored against the partner's
    answers); ``cells`` the answer per grid cell; ``partner`` the steering partner's id (None: no partner)."""

    task: str
    id: str
    cells: dict[CellKey, Cell] = field(default_factory=dict)
    control: Cell | None = None
    rows: int | None = None
    partner: str | None = None
    seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def _control_key(self) -> str:
        return "control" if self.task == "perturb" else "unsteered"

    def to_json(self) -> dict:
        d: dict = {"task": self.task, "id": self.id}
        if self.error is not None:
            return {**d, "error": self.error, "traceback": self.traceback, **self.extra}
        if self.task == "steer":
            d["partner"] = self.partner
        if self.rows is not None:
            d["rows"] = self.rows
        if self.control is not None:
            d[self._control_key] = self.control.to_json()
        d["cells"] = {str(k): c.to_json() for k, c in self.cells.items()}
        if self.seconds is not None:
            d["seconds"] = self.seconds
        return {**d, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> "EditRecord":
        task = d["task"]
        ctrl_key = "control" if task == "perturb" else "unsteered"
        cells = {}
        for k, c in (d.get("cells") or {}).items():
            try:
                cells[CellKey.parse(k)] = Cell.from_json(c)
            except ValueError:
                continue  # not a grid cell: nothing older versions wrote; ignore rather than fail the folder
        known = {"task", "id", "cells", ctrl_key, "rows", "partner", "seconds", "error", "traceback"}
        return cls(
            task=task,
            id=str(d["id"]),
            cells=cells,
            control=Cell.from_json(d[ctrl_key]) if d.get(ctrl_key) is not None else None,
            rows=d.get("rows"),
            partner=None if d.get("partner") is None else str(d["partner"]),
            seconds=d.get("seconds"),
            error=d.get("error"),
            traceback=d.get("traceback"),
            extra={k: v for k, v in d.items() if k not in known},
        )


Record = Union[AnswerRecord, EditRecord]
Key = tuple[str, str]


def record_from_json(d: dict) -> Record:
    """An ``AnswerRecord`` or ``EditRecord`` from one JSON line's object."""
    if d.get("task") == "answer":
        return AnswerRecord.from_json(d)
    if d.get("task") in ("perturb", "steer"):
        return EditRecord.from_json(d)
    raise ValueError(f"unknown task {d.get('task')!r}")


def _better(old: Record | None, new: Record) -> bool:
    """Which record wins for one (task, id): a success beats an error; otherwise the later one."""
    return old is None or not old.ok or new.ok


def _files(folder: Path) -> list[Path]:
    return [folder / "examples.jsonl"] + sorted(folder.glob("examples.rank*.jsonl"))


# One JSON line of examples.jsonl as the records write it (checked on read; other keys are kept as ``extra``)
_UNIT = Range(0.0, 1.0)
_CELL = {"em": _UNIT, "f1": _UNIT}
_CELL_MORE = {"prediction": str, "own_f1": _UNIT, "k": INT, "overlap": _UNIT, "agree": bool}
_ERROR = Required({"id": (str, INT), "error": str})
_ANSWER = Required({"id": (str, INT)})
_ANSWER_MORE = {
    "em": _UNIT,
    "f1": _UNIT,
    "kept": bool,
    "context_id": str,
    "question": str,
    "golds": [(str, INT, NUM)],
    "prediction": str,
    "raw": str,
    "unspliced": _CELL,
    "seconds": NUM,
    "answers_from": str,
    "traceback": str,
}
_KEPT = Required(
    {
        "n_active_last": INT,
        "n_active_any": INT,
        "sets": MapOf(MapOf([Pair(NUM, 3)], nullable=False), nullable=False),
    }
)
_EDIT = Required({"id": (str, INT)})
_EDIT_MORE = {
    "cells": MapOf(_CELL, nullable=False),
    "control": _CELL,
    "unsteered": _CELL,
    "rows": INT,
    "partner": (str, INT),
    "seconds": NUM,
}


def check_record(d: dict, where: str) -> None:
    """One line when a JSON line of examples.jsonl does not hold what its task writes (an error record: its id and
    message; an answer: scores in [0, 1], and its rankings when stored; an edit: every cell scored)."""
    if d.get("error") is not None:
        check(d, _ERROR, where)
        return
    if d["task"] == "answer":
        check(d, _ANSWER, where)
        check(d, _ANSWER_MORE, where)
        if d.get("sets") is not None:  # a kept example's rankings (and the counts K rules use)
            check(d, _KEPT, where)
        return
    check(d, _EDIT, where)
    check(d, _EDIT_MORE, where)
    for key, cell in (d.get("cells") or {}).items():
        check(cell, _CELL_MORE, where, f"cells.{key}")
    for key in ("control", "unsteered"):
        if d.get(key) is not None:
            check(d[key], _CELL_MORE, where, key)


def _read_file(path: Path) -> Iterable[Record]:
    for n, d in enumerate(JsonlLog(path).records(), 1):
        if not isinstance(d, dict) or "task" not in d or "id" not in d:
            continue
        if d["task"] in ("answer", "perturb", "steer"):
            check_record(d, f"{path}: record {n} ({d['task']} {d['id']!r}) is malformed")
        try:
            yield record_from_json(d)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise GradsaeError(
                f"{path}: record {n} ({d.get('task')} {d.get('id')!r}) is malformed "
                f"({type(e).__name__}: {e}): fix or delete that line, then rerun to recompute it"
            ) from None


def read_records(folder: str | Path) -> dict[Key, Record]:
    """The latest record per (task, id) from ``examples.jsonl`` and any ``examples.rank*.jsonl`` shards."""
    folder = Path(folder)
    recs: dict[Key, Record] = {}
    for f in _files(folder):
        if f.exists():
            for r in _read_file(f):
                k = (r.task, r.id)
                if _better(recs.get(k), r):
                    recs[k] = r
    return recs


def merge_shards(folder: str | Path) -> None:
    """Append shard records that examples.jsonl lacks (or has only as errors), then delete the shards."""
    folder = Path(folder)
    shards = sorted(folder.glob("examples.rank*.jsonl"))
    if not shards:
        return
    main = RecordLog(folder / "examples.jsonl")
    have: dict[Key, Record] = {(r.task, r.id): r for r in _read_file(main.path)} if main.path.exists() else {}
    for f in shards:
        for r in _read_file(f):
            k = (r.task, r.id)
            if k not in have or (not have[k].ok and r.ok):
                main.append(r)
                have[k] = r
    for f in shards:
        f.unlink()


class RecordLog:
    """Append typed records to a JSONL file (one fsynced line each)."""

    def __init__(self, path: str | Path):
        self._log = JsonlLog(path)
        self.path = self._log.path

    def append(self, record: Record) -> None:
        self._log.append(record.to_json())
