"""Text corpora for training, caching and dashboards: the one reader of corpus files.

A corpus source is one of
  * a file: ``.txt`` (one document per non-empty line), ``.jsonl`` (one JSON object per line, the text in
    ``text_field``), ``.json`` (SQuAD: one document per context paragraph; or a list of strings/objects),
    each optionally gzipped (``.txt.gz``, ``.jsonl.gz``, ``.json.gz``);
  * a folder: every such file below it, in sorted path order;
  * ``hf:NAME`` (or ``hf:NAME:SPLIT``): a Hugging Face dataset, streamed (needs a hub and ``datasets``);
  * ``sample``: the package's own sample text (the contexts of the bundled sample questions, written for
    this project), the default wherever a corpus is optional.

A hub dataset is only ever read when asked for with ``hf:``: a path that does not exist is an error, even
when it looks like ``org/name``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import GradsaeError
from .io import json_lines

SAMPLE = "sample"
SUFFIXES = (".txt", ".jsonl", ".json")


def sample_corpus_path() -> Path:
    """The bundled sample data whose contexts make the ``sample`` corpus."""
    return Path(__file__).parent / "bundled" / "data" / "sample_qa.json"


def corpus_files(source: str) -> list[Path]:
    """The files a local source stands for (a file, or the corpus files below a folder, sorted)."""
    path = Path(sample_corpus_path() if source == SAMPLE else source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
        if not files:
            raise GradsaeError(
                f"folder {path} has no .txt/.jsonl/.json files (optionally .gz): point --data at the corpus"
            )
        return files
    if path.is_file():
        if _kind(path) is None:
            raise GradsaeError(f"{path}: unknown corpus file type: use .txt, .jsonl or .json (optionally .gz)")
        return [path]
    raise GradsaeError(
        f"corpus {source!r} not found: check the path (a Hugging Face dataset is read only when named as hf:{source})"
    )


def content_digest(sources: str | list[str]) -> str:
    """sha256 of what the sources hold: every corpus file's bytes (a Hugging Face dataset, ``hf:NAME``, by its
    name). A resumed run compares it, so a file replaced by other documents is another run, not a continuation."""
    import hashlib

    h = hashlib.sha256()
    for src in [sources] if isinstance(sources, str) else sources:
        h.update(f"source:{src}\n".encode())
        if str(src).startswith("hf:"):
            continue
        for f in corpus_files(src):
            h.update(f"file:{f.name}\n".encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return None


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, with one-line errors for corrupt gzip and non-UTF-8 bytes."""
    try:
        with _open_text(path) as f:
            for i, line in enumerate(f, 1):
                yield i, line
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise GradsaeError(f"cannot read {path}: {e.strerror}") from None
        raise GradsaeError(f"{path}: corrupt or truncated gzip file ({e}): re-download or recompress it") from None
    except UnicodeDecodeError as e:
        raise GradsaeError(f"{path}: not UTF-8 text (byte {e.start} of a line): convert it to UTF-8") from None


def _docs_of_file(path: Path, text_field: str) -> Iterator[str]:
    kind = _kind(path)
    if kind == ".txt":
        for _, line in _lines(path):
            if line.strip():
                yield line.strip()
    elif kind == ".jsonl":
        for i, rec in json_lines(_lines(path), path, "fix the line"):
            text = rec.get(text_field) if isinstance(rec, dict) else rec if isinstance(rec, str) else None
            if not isinstance(text, str):
                raise GradsaeError(
                    f"{path} line {i}: no string field {text_field!r}: pass --text-field "
                    "with the field that holds the text"
                )
            if text.strip():
                yield text
    else:  # .json
        raw = "".join(line for _, line in _lines(path))
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise GradsaeError(f"malformed JSON in {path} (line {e.lineno}: {e.msg}): fix or delete the file") from None
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):  # SQuAD: one document per paragraph
            for article in obj["data"]:
                for para in (article.get("paragraphs") or []) if isinstance(article, dict) else []:
                    ctx = para.get("context") if isinstance(para, dict) else None
                    if not isinstance(ctx, str):
                        raise GradsaeError(f"{path}: a SQuAD paragraph has no string 'context': fix the file")
                    yield ctx
        elif isinstance(obj, list):
            for item in obj:
                text = item if isinstance(item, str) else item.get(text_field) if isinstance(item, dict) else None
                if not isinstance(text, str):
                    raise GradsaeError(
                        f"{path}: a list item is neither a string nor has a string field "
                        f"{text_field!r}: pass --text-field or convert the file to .jsonl"
                    )
                yield text
        else:
            raise GradsaeError(f"{path}: expected SQuAD JSON or a list of texts: convert it to .txt or .jsonl")


def iter_documents(sources: str | list[str], text_field: str = "text") -> Iterator[str]:
    """Yield the documents of every source in order (see the module docstring for what a source is)."""
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise GradsaeError("no corpus given: pass --data with a file, a folder or hf:NAME")
    for src in sources:
        if src.startswith("hf:"):
            yield from _iter_hf_dataset(src[3:], text_field)
            continue
        for path in corpus_files(src):
            yield from _docs_of_file(path, text_field)


def _iter_hf_dataset(spec: str, text_field: str) -> Iterator[str]:
    name, _, split = spec.partition(":")
    try:
        from datasets import load_dataset
    except ImportError:
        raise GradsaeError(f"reading hf:{spec} needs the package 'datasets': pip install datasets") from None
    try:
        ds = load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:  # offline, unknown name, ...
        raise GradsaeError(
            f"cannot open Hugging Face dataset {name!r} ({type(e).__name__}): check the name "
            "and the network, or use a local copy"
        ) from None
    for rec in ds:
        text = rec.get(text_field)
        if not isinstance(text, str):
            raise GradsaeError(f"hf:{spec}: records have no string field {text_field!r}: pass --text-field")
        yield text


class Packer:
    """The one row packing: documents tokenised, joined with EOS and cut into rows of ``context_length``, each
    starting with BOS when ``prepend_bos``. ``pending`` holds the tokens read but not yet in a row (what a
    resumable reader saves)."""

    def __init__(self, tok, context_length: int, prepend_bos: bool):
        self.tok = tok
        self.bos = tok.bos_token_id if prepend_bos else None
        if prepend_bos and self.bos is None:
            raise GradsaeError("the tokenizer has no BOS token: pass --no-prepend-bos")
        self.sep = tok.eos_token_id
        self.T = context_length
        self.body = context_length - (1 if prepend_bos else 0)
        if self.body < 2:
            raise GradsaeError(f"--context-length {context_length} is too short: use at least 3")
        self.pending: list[int] = []

    def add(self, docs: list[str]) -> None:
        """Tokenise documents onto the end of ``pending``."""
        for ids in self.tok(docs, add_special_tokens=False)["input_ids"]:
            self.pending.extend(ids)
            if self.sep is not None:
                self.pending.append(self.sep)

    @property
    def ready(self) -> int:
        """Whole rows in ``pending``."""
        return len(self.pending) // self.body

    def take(self, n: int, dtype=np.int64) -> np.ndarray:
        """The next n rows (n <= ``ready``), [n, T]."""
        need = n * self.body
        body = np.asarray(self.pending[:need], dtype=dtype).reshape(n, self.body)
        del self.pending[:need]
        if self.bos is not None:
            body = np.concatenate([np.full((n, 1), self.bos, dtype=dtype), body], axis=1)
        return body


def iter_token_rows(
    docs: Iterator[str], tok, context_length: int, prepend_bos: bool, chunk_docs: int = 64
) -> Iterator[np.ndarray]:
    """Stream packed rows (``Packer``): yields int32 [T] arrays; the incomplete last row is dropped.
    Deterministic: the same documents give the same rows."""
    packer = Packer(tok, context_length, prepend_bos)
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= chunk_docs:
            packer.add(batch)
            batch.clear()
            yield from packer.take(packer.ready, np.int32)
    if batch:
        packer.add(batch)
        yield from packer.take(packer.ready, np.int32)


def pack_sequences(docs: Iterator[str], tok, context_length: int, prepend_bos: bool, max_tokens: int = 0) -> np.ndarray:
    """All packed rows of a corpus at once (see ``iter_token_rows``). -> int32 [S, T].

    ``max_tokens`` caps the number of corpus tokens (BOS not counted).
    """
    body = context_length - (1 if prepend_bos else 0)
    cap = max_tokens // body if max_tokens else None
    out: list[np.ndarray] = []
    n_tokens = 0
    for row in iter_token_rows(docs, tok, context_length, prepend_bos, chunk_docs=256):
        if cap is not None and len(out) >= cap:
            break
        out.append(row)
        n_tokens += body
    if not out:
        raise GradsaeError(
            f"the corpus yields fewer than one sequence of {body} tokens: add data or lower --context-length"
        )
    return np.stack(out)
