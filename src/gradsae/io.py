"""File plumbing: atomic writes, append-only JSONL that survives kills, JSON for configs."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import GradsaeError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> Path:
    """``write(f)`` into a temp file in the same folder, fsync, then rename over ``path``: readers see the old
    file or the whole new one, never a part (also after a kill)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


_SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` ({name: tensor}, any device) as a safetensors file, atomically and one tensor at a time:
    the file is never built in memory, and a tensor on a GPU is copied to the host alone, just before it is
    written (a checkpoint of a 131k-latent SAE with its Adam moments is ~11 GB per copy). The header is the
    format's: 8-byte little-endian length, JSON with dtype, shape and data offsets, padded with spaces."""
    import struct

    header: dict[str, Any] = {}
    offset = 0
    for name, t in tensors.items():
        dtype = _SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise GradsaeError(f"cannot save tensor {name!r} of dtype {t.dtype} as safetensors")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)

    def write(f) -> None:
        import torch

        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _default(o: Any):
    if dataclasses.is_dataclass(o):
        return _finite(dataclasses.asdict(o))
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON that every reader accepts: NaN and ±Inf (which JSON has no word for) are written as null."""
    return json.dumps(_finite(obj), indent=indent, default=_default, ensure_ascii=False, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def read_text_file(path: str | Path) -> str:
    """A text file as UTF-8 (a BOM is dropped), else a one-line error naming the first bad byte."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GradsaeError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GradsaeError(
            f"{path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r}): save it as UTF-8"
        ) from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise GradsaeError(f"malformed JSON in {path} (line {e.lineno}: {e.msg}): fix or delete the file") from None
    except RecursionError:
        raise GradsaeError(f"{path} nests too deeply to be a file gradsae wrote: fix or delete the file") from None


def refuse_foreign(folder: str | Path, owned: dict[str, Callable[[Any], bool]], what: str) -> None:
    """Never overwrite a file gradsae did not write: for each ``name -> is_ours(parsed JSON)`` in ``owned``, a
    file ``folder/name`` that exists and is not ours (or not JSON) stops the command with one line."""
    for name, is_ours in owned.items():
        p = Path(folder) / name
        if not p.exists():
            continue
        try:
            d = read_json(p)
        except GradsaeError:
            d = None
        if not is_ours(d):
            raise GradsaeError(
                f"{p} was not written by {what}: choose another --out (gradsae never overwrites files it did not make)"
            )


def json_lines(lines: Iterable[tuple[int, str]] | Iterable[str], source: Any, hint: str) -> Iterator[tuple[int, Any]]:
    """The one strict JSONL reader of user files: (line number, value) of every non-blank line; a malformed line is
    one error naming the file, the line and ``hint`` (what a line should hold). ``lines``: text lines, or
    (number, text) pairs when the caller numbers them itself."""
    for n, line in enumerate(lines, 1):
        if isinstance(line, tuple):
            n, line = line
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise GradsaeError(f"malformed JSON on line {n} of {source} ({e.msg}): {hint}") from None


class JsonlLog:
    """Append-only JSONL: one record per line, flushed and fsynced as written.

    A kill can leave at most a partial last line; ``records()`` skips it (and ``open`` truncates it away)
    so a rerun resumes from the last complete record.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def records(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def append(self, record: dict) -> None:
        line = dumps(record, indent=None) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the life of a run: a second writer is refused.

    ``flock`` on ``<folder>/.gradsae.lock``; the kernel drops it when the process dies (kill -9
    included), so a stale lock never blocks a resume. A folder this call created and nothing else wrote
    into (a run refused before any work) is removed again, so bad input leaves nothing behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".gradsae.lock", "a+")
    except OSError as e:
        raise GradsaeError(f"cannot write to {folder}: {e.strerror}: choose another --out") from None
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            created = False  # the folder belongs to the other run
            raise GradsaeError(
                f"another gradsae run is writing to {folder}: wait for it to finish, or choose another --out"
            ) from None
        yield folder
    finally:
        f.close()
        if created and [p.name for p in folder.iterdir()] == [".gradsae.lock"]:
            (folder / ".gradsae.lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
