"""Model work off the request threads: one worker runs jobs one at a time (the model is shared and not
thread-safe), each job reports progress and can be cancelled between steps.

``Jobs.submit(kind, fn)`` queues ``fn(progress)`` and returns its ``Job`` at once; the page polls ``Job.view()``.
``progress(done, total, unit)`` records where the job is and raises ``Cancelled`` once ``cancel`` was asked, so a
long generation or sweep stops at its next token.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import GradsaeError


class Cancelled(Exception):
    """Raised inside a job's progress callback once the job was cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"  # queued, running, done, failed, cancelled
    done: int = 0
    total: int = 0
    unit: str = ""
    result: Any = None
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    seconds: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, done: int, total: int, unit: str) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        self.done, self.total, self.unit = int(done), int(total), unit

    def view(self) -> dict:
        out = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "seconds": self.seconds,
        }
        if self.state == "done":
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class Jobs:
    """A single worker thread and the last ``keep`` jobs by id."""

    def __init__(self, keep: int = 200, log: Callable[[str], None] | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradsae-model")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._keep = keep
        self._log = log or (lambda s: None)

    def submit(self, kind: str, fn: Callable[[Callable[[int, int, str], None]], Any]) -> Job:
        with self._lock:
            job = Job(id=str(next(self._ids)), kind=kind)
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn) -> None:
        if job.cancel.is_set():
            job.state = "cancelled"
            return
        job.state = "running"
        t0 = time.perf_counter()
        try:
            job.result = fn(job.progress)
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
        except GradsaeError as e:  # bad input found while working: the message is for the user
            job.state, job.error = "failed", str(e)
        except Exception as e:  # a bug: one line for the page, the traceback for the server's log
            job.state, job.error = "failed", f"internal error ({type(e).__name__}); the server log has the details"
            self._log(traceback.format_exc())
        finally:
            job.seconds = round(time.perf_counter() - t0, 3)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.state in ("queued", "running"):
            job.cancel.set()
            if job.state == "queued":
                job.state = "cancelled"
        return job

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
