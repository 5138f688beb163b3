"""Shared helpers for the benchmark scripts: SQuAD-style QA examples, tables, JSON output."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEV = SHARED / "data" / "squad" / "dev-v2.0-first5.json"


def qa_examples(path: Path = DEV, n: int = 30, seed: int = 0) -> list[dict]:
    """n answerable questions (seeded sample) as {id, context, question, answers}."""
    data = json.loads(Path(path).read_text())["data"]
    out = []
    for art in data:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                if qa.get("is_impossible"):
                    continue
                out.append(
                    {
                        "id": qa["id"],
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": [a["text"] for a in qa["answers"]],
                    }
                )
    random.Random(seed).shuffle(out)
    return out[:n]


def short_prompt(ex: dict) -> str:
    return f"Context: {ex['context']}\n\nQuestion: {ex['question']}\nAnswer:"


def table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    line = "  ".join(c.rjust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
    return "" if v is None else str(v)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def write_out(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    print(f"\nwrote {path}")
