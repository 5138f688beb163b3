"""The one corpus reader: file kinds, gzip, folders, the bundled sample, and one-line errors."""

import gzip
import json

import pytest

from gradsae.corpus import SAMPLE, iter_documents, iter_token_rows, pack_sequences
from gradsae.errors import GradsaeError
from gradsae.io import output_lock

from conftest import make_tiny


def test_kinds_gzip_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "three"}) + "\n" + json.dumps({"text": "four"}) + "\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.json").write_text(json.dumps(["five", {"text": "six"}]))
    (tmp_path / "ignored.csv").write_text("x")
    assert list(iter_documents(str(tmp_path))) == ["one", "two", "three", "four", "five", "six"]
    assert list(iter_documents([str(tmp_path / "a.txt"), str(sub / "c.json")])) == ["one", "two", "five", "six"]


def test_sample_corpus_is_bundled():
    docs = list(iter_documents(SAMPLE))
    assert len(docs) == 15 and all(len(d.split()) > 50 for d in docs)


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda p: (p / "x.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage"), "gzip"),
        (lambda p: (p / "x.txt").write_bytes(b"caf\xe9\n"), "not UTF-8"),
        (lambda p: (p / "x.jsonl").write_text('{"text": 3}\n'), "no string field"),
        (lambda p: (p / "x.jsonl").write_text('{"text": \n'), "malformed JSON"),
    ],
)
def test_bad_files_one_line(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(GradsaeError, match=match):
        list(iter_documents(str(tmp_path)))


def test_missing_path_is_not_a_hub_name(tmp_path):
    with pytest.raises(GradsaeError, match="not found.*hf:org/name"):
        list(iter_documents("org/name"))
    with pytest.raises(GradsaeError, match="no .txt"):
        list(iter_documents(str(tmp_path)))


def test_streamed_rows_equal_packed_rows():
    _, tok = make_tiny("llama")
    docs = [f"document number {i} " * (i + 3) for i in range(40)]
    rows = pack_sequences(iter(docs), tok, context_length=16, prepend_bos=True)
    streamed = list(iter_token_rows(iter(docs), tok, 16, True, chunk_docs=3))
    assert len(streamed) == len(rows) and all((a == b).all() for a, b in zip(streamed, rows))
    capped = pack_sequences(iter(docs), tok, context_length=16, prepend_bos=True, max_tokens=45)
    assert capped.shape == (3, 16)


def test_output_lock_refuses_second_writer(tmp_path):
    with output_lock(tmp_path / "out"):
        with pytest.raises(GradsaeError, match="another gradsae run"):
            with output_lock(tmp_path / "out"):
                pass
    with output_lock(tmp_path / "out"):  # released
        pass
