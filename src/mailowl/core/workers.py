"""Analyses run in forked worker processes, so a hung or memory-hungry library call can be killed.

Each analysis thread of the service owns one ``Worker``: a child process forked from the server, so it
has the ruleset, compiled YARA rules and analysers without loading anything. The thread sends a sample,
the child runs the whole ruleset over it and sends the verdict back. Archive members' cache lookups go
back to the parent, which asks the store on its event loop. Past the deadline the parent kills the
child's process group (the child and any unrar/bsdtar it started) and forks a fresh one.

The child records what it is doing (rule, analyser) in a small shared memory slot; the parent reads
it after a timeout, when the child may be stuck inside a C library and cannot answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import mmap
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from mailowl.analysis import activity
from mailowl.analysis.archive import detect_format
from mailowl.analysis.cortex import CortexReport, NeedsRemote
from mailowl.analysis.filetype import FileReport
from mailowl.analysis.ole import could_hold_macros
from mailowl.analysis.sample import Sample
from mailowl.analysis.table import ANALYSERS
from mailowl.store.journal import KnownReport

log = logging.getLogger(__name__)

#: runs the ruleset over a sample; the second argument answers cache lookups by identity
Run = Callable[[Sample, Callable[[str], KnownReport]], Any]

_SLOT_SIZE = 256
_INLINE_MAX = 1 << 20
_PR_SET_PDEATHSIG = 1
# freed memory above this is handed back to the system after an analysis, so a worker that unpacked
# a large archive does not keep its peak for ever
_TRIM_AFTER = 8 * 2**20
# address space the child may grow beyond what it had at fork: the configured analysis memory plus
# room for glibc's arena reservations and libraries loaded lazily (py7zr, rarfile)
_ADDRESS_SLACK = 256 * 2**20


# Small samples that no archive, Office or PE parser does real work on are analysed in the service's
# thread: libmagic reads a bounded window, olevba's text fallback and the expressions scan at most this
# many bytes, YARA has its own timeout. A process round trip would cost them more than the analysis.
IN_THREAD_MAX = 256 * 1024
_PARSER_MAGIC = (b"MZ", b"\xd0\xcf\x11\xe0", b"PK", b"{\\rt")


def needs_isolation(content: bytes) -> bool:
    """True if analysing ``content`` reaches a parser that could hang or allocate without bound."""
    return (len(content) > IN_THREAD_MAX or content.startswith(_PARSER_MAGIC)
            or detect_format(content) is not None or could_hold_macros(content))


def analyser_in(where: str) -> tuple[str, str] | None:
    """(report, backend) of the analyser an activity text names (``"olereport (rule office_macro)"``), for
    counting the timeouts and crashes of built-in analysers; None when it names none (a rule, idle)."""
    name = where.split(" ", 1)[0]
    analyser = ANALYSERS.get(name)
    return (name, analyser.backend) if analyser is not None else None


class WorkerTimeout(Exception):
    def __init__(self, where: str) -> None:
        super().__init__(f"analysis timed out in {where}")
        self.where = where


class WorkerDied(Exception):
    def __init__(self, where: str, status: str) -> None:
        super().__init__(f"analysis crashed in {where}: the worker process {status}")
        self.where = where


class WorkerError(Exception):
    """The analysis raised in the child; the message is the child's ``Type: message``."""


@dataclass(slots=True)
class Outcome:
    verdict: Any
    sha1: str
    md5: str
    type_by_content: str | None


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


class Worker:
    def __init__(self, run: Run, name: str, memory_limit: int = 0) -> None:
        self.run = run
        self.name = name
        self.memory_limit = memory_limit
        self.pid = 0
        self._conn: Connection | None = None
        self._slot = mmap.mmap(-1, _SLOT_SIZE)

    @property
    def alive(self) -> bool:
        return self.pid != 0

    def start(self) -> None:
        """Fork the child. Call it from the thread that will use the worker: the child is killed when
        that thread ends (PR_SET_PDEATHSIG), so it never outlives the server."""
        ours, theirs = Pipe(duplex=True)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child; coverage does not follow forks)
            code = 0
            try:
                ours.close()
                _child(theirs, self.run, self._slot, self.memory_limit, parent)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self._conn = pid, ours

    def analyse(self, sample: Sample, journal: KnownReport, lookup: Callable[[str, float], KnownReport],
                timeout: float) -> Outcome:
        """The child's verdict for ``sample``; raises WorkerTimeout or WorkerDied (after killing and
        reaping the child) or WorkerError."""
        if not self.alive:
            self.start()
        assert self._conn is not None
        conn = self._conn
        deadline = time.monotonic() + timeout
        self._set_slot("start of the analysis")
        try:
            # small content travels in the same message (one write); large content separately, so it
            # is never copied into a pickle in this process
            inline = sample.content if len(sample.content) <= _INLINE_MAX else None
            cortex = sample.reports.get("cortexreport")  # the Cortex reports attached so far
            remote = (cortex.reports, cortex.failure) if isinstance(cortex, CortexReport) else None
            conn.send((sample.filename, sample.type_declared, sample.content_disposition, sample.sha256,
                       sample.identity, journal, inline, remote))
            if inline is None:
                conn.send_bytes(sample.content)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not conn.poll(remaining):
                    where = self.where()
                    self.kill()
                    raise WorkerTimeout(where)
                message = conn.recv()
                if message[0] == "known":
                    try:
                        answer = lookup(message[1], max(deadline - time.monotonic(), 0.1))
                    except Exception as exc:
                        # the child waits for this answer: it cannot take the next sample
                        self.kill()
                        raise WorkerError(f"verdict cache lookup for an archive member failed: "
                                          f"{type(exc).__name__}: {exc}") from None
                    conn.send(answer)
                elif message[0] == "done":
                    return Outcome(*message[1:])
                elif message[0] == "park":
                    raise NeedsRemote(*message[1:])
                else:
                    raise WorkerError(message[1])
        except (EOFError, OSError):
            where = self.where()
            raise WorkerDied(where, self.kill()) from None

    def where(self) -> str:
        size = int.from_bytes(self._slot[:2], "big")
        return self._slot[2:2 + min(size, _SLOT_SIZE - 2)].decode("utf-8", "replace") or "unknown"

    def _set_slot(self, what: str) -> None:
        data = what.encode("utf-8")[: _SLOT_SIZE - 2]
        self._slot[:2 + len(data)] = len(data).to_bytes(2, "big") + data

    def signal(self) -> None:
        """Kill the child's process group now; safe from any thread. The owner thread reaps it."""
        pid = self.pid  # read once: the owner thread may reset it meanwhile, and killpg(0) is our own group
        if pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def kill(self) -> str:
        """Kill and reap the child; says how it ended. The next analysis forks a new one."""
        if not self.pid:
            return "was not running"
        self.signal()
        status = "ended"
        try:
            _, raw = os.waitpid(self.pid, 0)
            if os.WIFSIGNALED(raw):
                status = f"was killed by signal {_signal_name(os.WTERMSIG(raw))}"
            else:
                status = f"exited with status {os.WEXITSTATUS(raw)}"
        except ChildProcessError:
            pass
        self.pid = 0
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return status


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _detach(conn: Connection, parent: int) -> None:
    """Make the fresh child independent of what it inherited from the multi-threaded server."""
    os.setpgid(0, 0)  # its own process group: killing it also kills the unrar/bsdtar it started
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(0)
    # The server ends its workers itself (SIGKILL) and answers their jobs as interrupted; a SIGTERM
    # sent to the whole control group (systemd) must not make them look crashed first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    # The server's sockets, pipes and database files must not stay open in the child (a listening
    # port would stay bound after the server ended). /dev/null is put over them rather than closing
    # them, so a finalizer that later closes one of those descriptor numbers closes nothing of ours.
    keep = {0, 1, 2, conn.fileno()}
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd != null:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    os.close(null)
    gc.freeze()  # objects inherited from the server are never collected here: do not touch their pages


def _limit_memory(limit: int) -> None:
    if not limit:
        return
    with open("/proc/self/status", encoding="ascii") as fh:
        vm = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:")), 0)
    soft = vm + limit + _ADDRESS_SLACK
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _child(conn: Connection, run: Run, slot: mmap.mmap, memory_limit: int, parent: int) -> None:  # pragma: no cover
    _detach(conn, parent)

    def record(what: str) -> None:
        data = what.encode("utf-8")[: _SLOT_SIZE - 2]
        slot[:2 + len(data)] = len(data).to_bytes(2, "big") + data

    activity.set_sink(record)
    _limit_memory(memory_limit)
    while True:
        try:
            filename, type_declared, disposition, sha256, identity, journal, content, remote = conn.recv()
            if content is None:
                content = conn.recv_bytes()
        except (EOFError, OSError):
            return
        sample = Sample(content, filename=filename, type_declared=type_declared, content_disposition=disposition)
        sample.__dict__["sha256"], sample.__dict__["identity"] = sha256, identity  # computed by the parent
        if remote is not None:
            sample.reports["cortexreport"] = CortexReport(*remote)

        def lookup(wanted: str, top: str = identity, known: KnownReport = journal) -> KnownReport:
            if wanted == top:
                return known
            conn.send(("known", wanted))
            answer: KnownReport = conn.recv()
            return answer

        message: tuple[Any, ...]
        try:
            verdict = run(sample, lookup)
            report = sample.reports.get("filereport")
            message = ("done", verdict, sample.sha1, sample.md5,
                       report.type_by_content if isinstance(report, FileReport) else None)
        except NeedsRemote as need:  # the parent parks the sample until Cortex has answered
            message = ("park", need.analyser, need.analyzer, need.data_type)
        except Exception as exc:
            log.exception("analysis of %s crashed", sha256)
            message = ("error", f"{type(exc).__name__}: {exc}")
        big = len(content) > _TRIM_AFTER or "archivereport" in sample.reports
        del sample, content
        conn.send(message)
        record("idle")
        if big and _LIBC is not None:
            _LIBC.malloc_trim(0)
