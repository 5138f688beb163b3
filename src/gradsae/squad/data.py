"""SQuAD for the GradSAE experiments: loading, prompts, answer extraction and the official metrics.

Pure functions (tested on hand-worked cases):
    ``normalize_answer``, ``exact_match``, ``f1``, ``em_f1`` (max over gold answers), ``evaluate`` (×100)
    ``extract_answer``  first line / a regex / the authors' bracket rule ("Result = [[ label ]]")

Data: ``load_questions(spec, limit, seed, shuffle)`` reads SQuAD 1.1/2.0 JSON (2.0's unanswerable questions
are skipped), JSONL (``{"context", "question", "answers"}`` per line) or, only when asked with the ``hf:``
prefix and when the ``datasets`` library and the network are available, a Hugging Face dataset
(``hf:squad`` or ``hf:name:split``). The defaults are the sample questions and the few-shot paragraph bundled
with the package (``gradsae/bundled/data``).

Prompts: ``PromptBuilder(template, tokenizer, ...)`` renders {context} and {question} with

    ``fewshot``   (default) plain text, one training context with five Q/A pairs, then the question
    ``plain``     the same layout without exemplars
    ``chat``      the tokenizer's chat template (user turn + generation prompt)
    ``official``  the authors' prompt: "... Please organize your final answer in this format:
                  "Result = [[ label ]]"" (Gemma user-turn marker when the tokenizer is Gemma's)
    any string containing {context} and {question}.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import GradsaeError
from ..io import json_lines, read_text_file

BUNDLED_DATA = Path(__file__).resolve().parent.parent / "bundled" / "data"
DEFAULT_DATA = str(BUNDLED_DATA / "sample_qa.json")
DEFAULT_FEWSHOT = str(BUNDLED_DATA / "fewshot.json")
HF_PREFIX = "hf:"
TEMPLATES = ("fewshot", "plain", "chat", "official")
EXTRACTORS = ("auto", "first-line", "bracket", "regex")

INSTRUCTION = "Answer each question with a short span copied from the context."
OFFICIAL_TEXT = (
    "Answer the following question based on the context.\nContext:\n{context}\n\nQuestion:\n{question}"
    '\n\nPlease organize your final answer in this format: "Result = [[ label ]]"\n'
)


# ---------------------------------------------------------------------------------------------
# Metrics: the official SQuAD 1.1 evaluation script
# ---------------------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (official SQuAD 1.1)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1(prediction: str, gold: str) -> float:
    """Token F1 between normalised answers in [0, 1] (0 when nothing is shared, as in the official script)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the max over the gold answers, in [0, 1]."""
    if not golds:
        raise GradsaeError("an example has no gold answer: unanswerable questions cannot be scored")
    return (float(max(exact_match(prediction, g) for g in golds)), max(f1(prediction, g) for g in golds))


def evaluate(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
    """``{"exact_match", "f1"}`` ×100 averaged over examples, as the official script prints them."""
    if len(predictions) != len(golds):
        raise GradsaeError(f"{len(predictions)} predictions for {len(golds)} examples: give one per example")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    scores = [em_f1(p, g) for p, g in zip(predictions, golds)]
    return {
        "exact_match": 100.0 * sum(s[0] for s in scores) / len(scores),
        "f1": 100.0 * sum(s[1] for s in scores) / len(scores),
    }


def is_correct(f1_score: float, min_f1: float = 0.9) -> bool:
    """The correct-sample filter of the authors' code: max F1 over gold answers ≥ ``min_f1`` (0–1 scale)."""
    return f1_score >= min_f1 - 1e-12


# ---------------------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------------------


def extract_answer(text: str, how: str = "first-line", regex: str = "") -> str:
    """The answer span inside a generated text.

    ``first-line``: the first non-empty line, stripped. ``bracket``: the authors' rule — the first ``[...]``
    group (``Result = [[ Denver ]]`` → ``Denver``) with ``[``, ``]`` and ``=`` removed, else the whole text.
    ``regex``: group 1 (or the whole match) of ``regex``; the first line when it does not match.
    """
    if how == "bracket":
        m = re.search(r"\[+[^\[\]]*\]+", text)
        s = m.group(0) if m else text
        return re.sub(r"[\[\]=]", "", s).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if how == "regex":
        if not regex:
            raise GradsaeError("--extract regex needs --answer-regex PATTERN (e.g. 'Answer: (.*)')")
        try:
            m = re.search(regex, text)
        except re.error as e:
            raise GradsaeError(f"bad --answer-regex {regex!r} ({e}): give a Python regular expression") from None
        if not m:
            return first
        return (m.group(1) if m.groups() else m.group(0)).strip()
    if how not in ("first-line", "auto"):
        raise GradsaeError(f"unknown answer extraction {how!r}: use one of {', '.join(EXTRACTORS)}")
    return first


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class QA:
    """One answerable question. ``context_id`` is shared by every question on the same passage."""

    id: str
    context_id: str
    context: str
    question: str
    answers: list[str]
    title: str = ""


def parse_shard(spec: str) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N; ``""`` -> None (the whole run)."""
    if not str(spec).strip():
        return None
    parts = str(spec).strip().split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise GradsaeError(f"--shard {spec!r}: write it i/N, e.g. --shard 0/4 (shards 0/4 .. 3/4)")
    i, n = int(parts[0]), int(parts[1])
    if not 0 <= i < n:
        raise GradsaeError(
            f"--shard {spec!r}: i must be between 0 and N - 1 (shards 0/{max(n, 1)} .. {max(n, 1) - 1}/{max(n, 1)})"
        )
    return i, n


def shard_questions(qas: Sequence[QA], i: int, n: int) -> list[QA]:
    """Shard i of n: the questions of every n-th context (contexts numbered in order of first appearance,
    round-robin), whole contexts only, so each question's steering partners are in its own shard. The shards
    partition ``qas`` and keep its order."""
    index: dict[str, int] = {}
    for q in qas:
        index.setdefault(q.context_id, len(index))
    return [q for q in qas if index[q.context_id] % n == i]


def _context_id(context: str) -> str:
    return hashlib.sha1(context.encode("utf-8")).hexdigest()[:12]


def _answers(raw, where: str = "") -> list[str]:
    """Gold answers from SQuAD's ``[{"text", "answer_start"}]``, HF's ``{"text": [...]}``, a list of strings,
    or one string (one answer, not a list of its characters)."""
    if isinstance(raw, dict):  # HF layout {"text": [...], "answer_start": [...]}
        raw = raw.get("text", [])
    if isinstance(raw, str):
        raw = [raw]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise GradsaeError(
            f'{where}: "answers" is a {type(raw).__name__}: give a list of answers (strings or {{"text": ...}} objects)'
        )
    out = []
    for a in raw:
        t = a.get("text") if isinstance(a, dict) else a
        if not isinstance(t, str):
            raise GradsaeError(f"{where}: an answer is a {type(t).__name__} ({t!r}), not text: give answers as strings")
        if t.strip():
            out.append(t)
    return list(dict.fromkeys(out))


def _text_field(obj: dict, key: str, where: str) -> str:
    """A required text field of a JSON object, or a one-line error naming it."""
    if not isinstance(obj, dict):
        raise GradsaeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise GradsaeError(f'{where}: missing field "{key}": each question needs context, question, answers')
    v = obj[key]
    if not isinstance(v, str):
        raise GradsaeError(f'{where}: field "{key}" is a {type(v).__name__}, not text: give a string')
    return v


def parse_squad_json(obj: dict, source: str = "") -> list[QA]:
    """SQuAD 1.1 / 2.0 ``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``; unanswerable skipped."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise GradsaeError(
            f'{source or "data"}: not a SQuAD JSON file (no top-level "data" list): give SQuAD 1.1/2.0 JSON or JSONL'
        )
    out = []
    for ai, art in enumerate(obj["data"]):
        where = f"{source}: data[{ai}]"
        if not isinstance(art, dict) or not isinstance(art.get("paragraphs", []), list):
            raise GradsaeError(f'{where}: expected an article {{"title", "paragraphs": [...]}}')
        title = str(art.get("title", "") or "")
        for pi, par in enumerate(art.get("paragraphs", [])):
            pwhere = f"{where}.paragraphs[{pi}]"
            ctx = _text_field(par, "context", pwhere)
            cid = f"{title}/{pi}" if title else _context_id(ctx)
            qas = par.get("qas", [])
            if not isinstance(qas, list):
                raise GradsaeError(f'{pwhere}: "qas" must be a list of questions')
            for qi, q in enumerate(qas):
                qwhere = f"{pwhere}.qas[{qi}]"
                question = _text_field(q, "question", qwhere)
                if q.get("is_impossible"):
                    continue
                ans = _answers(q.get("answers"), qwhere)
                if not ans:
                    continue
                out.append(QA(str(q.get("id", len(out))), cid, ctx, question, ans, title))
    return out


def parse_jsonl(lines: Sequence[str], source: str = "") -> list[QA]:
    out = []
    for n, r in json_lines(lines, source, "one object per line with context, question, answers"):
        where = f"{source}:{n}"
        if not isinstance(r, dict):
            raise GradsaeError(f"{where}: expected a JSON object with context, question, answers")
        if r.get("is_impossible"):
            continue
        ctx, q = _text_field(r, "context", where), _text_field(r, "question", where)
        ans = _answers(r["answer"] if isinstance(r.get("answer"), str) else r.get("answers", r.get("answer")), where)
        if not ans:
            continue
        cid = str(r.get("context_id") or _context_id(ctx))
        out.append(QA(str(r.get("id", f"{source or 'line'}:{n}")), cid, ctx, q, ans, str(r.get("title", "") or "")))
    return out


def _load_hf(spec: str) -> list[QA]:
    name, _, split = spec[len(HF_PREFIX) :].partition(":")
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise GradsaeError(
            f"{spec!r} is not a file, and the 'datasets' library is not installed: give a SQuAD "
            "JSON/JSONL path or pip install datasets"
        ) from None
    try:
        ds = load_dataset(name, split=split or "validation")
    except Exception as e:  # network or name errors
        raise GradsaeError(
            f"cannot load dataset {spec!r} ({str(e).splitlines()[0][:200]}): give a SQuAD JSON/JSONL path"
        ) from None
    lines = [
        json.dumps(
            {
                "id": r.get("id"),
                "context": r["context"],
                "question": r["question"],
                "answers": r.get("answers"),
                "title": r.get("title", ""),
            }
        )
        for r in ds
    ]
    return parse_jsonl(lines, name)


def check_prompt_lengths(tok, model, prompts: Sequence[str], max_new_tokens: int) -> int:
    """Refuse prompts that do not fit the model's context with the decoding budget (they would run for minutes
    and then produce garbage or fail deep in attention); returns the longest prompt's length in tokens."""
    from ..model import context_size

    if not prompts:
        return 0
    lengths = [len(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    n_ctx = context_size(model)
    if n_ctx and lengths[i] + max_new_tokens > n_ctx:
        raise GradsaeError(
            f"prompt {i + 1} is {lengths[i]} tokens, plus {max_new_tokens} new tokens that exceeds the "
            f"model's context of {n_ctx}: use shorter contexts, fewer few-shot exemplars "
            "(--template plain) or a lower --max-new-tokens"
        )
    return lengths[i]


def load_questions(
    spec: str = DEFAULT_DATA, limit: int | None = None, seed: int = 42, shuffle: bool = False
) -> list[QA]:
    """Answerable questions from a SQuAD JSON / JSONL file, or a Hugging Face dataset written ``hf:NAME[:SPLIT]``.

    ``limit`` keeps the first N questions (file order, so contexts stay whole); ``shuffle`` first shuffles
    the *contexts* with ``seed`` (questions of one context stay together, so steering partners exist).
    """
    if spec.startswith(HF_PREFIX):
        qas = _load_hf(spec)
    else:
        path = Path(spec)
        if not path.is_file():
            hint = (
                f" (for the Hugging Face dataset, write --data {HF_PREFIX}{spec})"
                if re.fullmatch(r"[\w.-]+(/[\w.-]+)?(:\w+)?", spec) and not path.suffix
                else ""
            )
            what = "is a folder" if path.is_dir() else "not found"
            raise GradsaeError(
                f"data file {spec} {what}: pass --data with a SQuAD JSON/JSONL file (paths are "
                f"relative to the current folder){hint}"
            )
        text = read_text_file(path)
        if path.suffix == ".jsonl":
            qas = parse_jsonl(text.splitlines(), path.name)
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                if text.lstrip().startswith("{") and len(text.strip().splitlines()) > 1:
                    obj = None  # one object per line
                else:
                    raise GradsaeError(
                        f"malformed JSON in {path} (line {e.lineno}: {e.msg}): give SQuAD JSON or JSONL"
                    ) from None
            qas = parse_jsonl(text.splitlines(), path.name) if obj is None else parse_squad_json(obj, path.name)
    if not qas:
        raise GradsaeError(f"no answerable questions in {spec}: check the file")
    if shuffle:
        order = list(dict.fromkeys(q.context_id for q in qas))
        random.Random(seed).shuffle(order)
        rank = {c: i for i, c in enumerate(order)}
        qas = sorted(qas, key=lambda q: rank[q.context_id])  # stable: question order kept within a context
    if limit is not None and limit > 0:
        qas = qas[:limit]
    ids = [q.id for q in qas]
    if len(set(ids)) != len(ids):
        raise GradsaeError(f"duplicate question ids in {spec}: give every question a unique id")
    return qas


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def fewshot_exemplars(
    path: str = DEFAULT_FEWSHOT, n: int = 5, exclude_contexts: Sequence[str] = (), paragraph: int | None = None
) -> tuple[str, list[tuple[str, str]]]:
    """One context and its first ``n`` (question, answer) pairs from a SQuAD training file.

    The first paragraph with at least ``n`` questions whose context is not among ``exclude_contexts``
    (the evaluation contexts), or paragraph number ``paragraph`` when given.
    """
    p = Path(path)
    if not p.is_file():
        raise GradsaeError(f"few-shot file {path} not found: pass --fewshot-data PATH or --template plain")
    try:
        obj = json.loads(read_text_file(p))
    except json.JSONDecodeError as e:
        raise GradsaeError(f"malformed JSON in {p} (line {e.lineno}: {e.msg}): give SQuAD JSON") from None
    qas = parse_squad_json(obj, p.name)
    by_ctx: dict[str, list[QA]] = {}
    for q in qas:
        by_ctx.setdefault(q.context, []).append(q)
    excluded = set(exclude_contexts)
    candidates = [(c, qs) for c, qs in by_ctx.items() if len(qs) >= n]
    if paragraph is not None:
        if not 0 <= paragraph < len(candidates):
            raise GradsaeError(
                f"--fewshot-paragraph {paragraph} out of range: {path} has {len(candidates)} "
                f"paragraphs with ≥{n} questions"
            )
        candidates = [candidates[paragraph]]
    for ctx, qs in candidates:
        if ctx in excluded:
            if paragraph is not None:
                raise GradsaeError(
                    "the chosen few-shot paragraph is an evaluation context: pick another --fewshot-paragraph"
                )
            continue
        return ctx, [(q.question, q.answers[0]) for q in qs[:n]]
    raise GradsaeError(
        f"no paragraph with ≥{n} questions outside the evaluation data in {path}: "
        "use another --fewshot-data or --template plain"
    )


@dataclass
class PromptBuilder:
    """Renders prompts for one template (see the module docstring)."""

    template: str = "fewshot"
    tokenizer: object = None
    fewshot_context: str = ""
    fewshot_pairs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        t = self.template
        if t not in TEMPLATES and not ("{context}" in t and "{question}" in t):
            raise GradsaeError(
                f"unknown template {t!r}: use one of {', '.join(TEMPLATES)} or a string with "
                "{context} and {question}"
            )
        if t == "fewshot" and not self.fewshot_pairs:
            raise GradsaeError("the fewshot template needs exemplars: see squad.fewshot_exemplars")
        if t == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise GradsaeError("this tokenizer has no chat template: use --template fewshot or plain")

    def _plain(self, context: str, question: str) -> str:
        return f"Context: {context}\nQuestion: {question}\nAnswer:"

    def __call__(self, context: str, question: str) -> str:
        t = self.template
        if t == "plain":
            return f"{INSTRUCTION}\n\n" + self._plain(context, question)
        if t == "fewshot":
            shots = "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in self.fewshot_pairs)
            return f"{INSTRUCTION}\n\nContext: {self.fewshot_context}\n{shots}\n\n" + self._plain(context, question)
        if t == "official":
            text = OFFICIAL_TEXT.format(context=context, question=question)
            ct = getattr(self.tokenizer, "chat_template", None) or ""
            return ("<start_of_turn>user\n" + text) if "<start_of_turn>" in str(ct) else text
        if t == "chat":
            msg = f"{INSTRUCTION} Reply with the answer only.\n\nContext: {context}\n\nQuestion: {question}"
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
            )
            bos = getattr(self.tokenizer, "bos_token", None)
            ids = self.tokenizer("x", add_special_tokens=True)["input_ids"]
            adds_bos = bos is not None and ids and ids[0] == getattr(self.tokenizer, "bos_token_id", None)
            if adds_bos and text.startswith(bos):  # the tokenizer adds it again
                text = text[len(bos) :]
            return text
        return t.format(context=context, question=question)

    @property
    def default_stop(self) -> tuple[str, ...]:
        """Plain-text templates: a newline, or the next field's name ("Question", "Context") — with the SAE
        spliced in, the small model often continues the few-shot pattern on the same line ("Rollo. Question:
        ..."). Chat / official templates: none (EOS only)."""
        plain = self.template in ("fewshot", "plain") or self.template not in TEMPLATES
        return ("\n", "Question", "Context") if plain else ()

    @property
    def default_extract(self) -> str:
        return "bracket" if self.template == "official" else "first-line"
