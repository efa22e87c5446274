"""Worker processes that read and compress pages for :mod:`capture.save.pycollector`.

:func:`parallel_batches` forks ``workers`` processes.  Each one walks the same
list of tasks (runs of pages, see ``pycollector.page_tasks``) and takes every
``workers``-th one: task ``k`` belongs to worker ``k % workers``.  A worker
reads its pages from the vmcore itself (through its own descriptor, so only
file offsets are shared, never page data), compresses them and sends the
compressed batch back on its own pipe.  The calling process reads the pipes
in turn, so batches come out in page order, exactly as one process would
produce them, and writes; it does no compressing itself.

Memory stays bounded: a worker holds one task (``TASK_PAGES`` pages read and
their compressed copy) plus what its pipe buffers, and blocks while the
writer is behind.  :func:`affordable_workers` caps the count by what
``/proc/meminfo`` says is available, for the small capture kernel.

A worker that fails (killed, out of memory, an error reading the vmcore) is
not fatal: the remaining workers are stopped and this process compresses
the remaining tasks itself, from the first batch it did not receive, so the
output is the same; a real error (an unreadable vmcore) then surfaces here
with its own message.  A writer that stops early (an error writing the
output) kills and reaps its workers before the error propagates.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import struct
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

from capture.formats.kdumpwriter import CompressedPages

log = logging.getLogger(__name__)

#: count (negative: an error message follows), zero pages, descriptor bytes, data bytes
FRAME = struct.Struct("<qqqq")
#: kernel pipe buffer asked for per worker (the writer reads whole batches)
PIPE_BYTES = 1 << 20
#: private memory a worker may grow to: its task read and compressed, pages copied from the writer
#: (about 7 MB measured with 1 MiB tasks, see bench/parallel.py)
WORKER_BYTES = 16 << 20
#: available memory left for the writer, the transport and the kernel
RESERVE_BYTES = 64 << 20

Compress = Callable[[list], CompressedPages]


class WorkerFailed(Exception):
    """A worker process stopped without delivering a batch (internal: triggers the fallback)."""


def affordable_workers(wanted: int, meminfo: str = "/proc/meminfo") -> int:
    """``wanted`` reduced so that every worker fits in MemAvailable after :data:`RESERVE_BYTES`
    (at least 1; ``wanted`` when the file cannot be read)."""
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    return max(1, min(wanted, (available - RESERVE_BYTES) // WORKER_BYTES))
    except (OSError, ValueError, IndexError):
        pass
    return wanted


def parallel_batches(make_tasks: Callable[[], Iterable[list]], compress: Compress, workers: int,
                     cpu_seconds: Optional[List[float]] = None) -> Iterator[CompressedPages]:
    """``compress(task)`` of every task of ``make_tasks()``, in task order, computed by ``workers``
    forked processes; ``make_tasks`` is called here and in each worker and must give the same tasks.
    ``cpu_seconds`` receives the CPU time of each worker that completed its share."""
    pool = _Pool(make_tasks, compress, workers)
    try:
        for index, task in enumerate(make_tasks()):
            if pool.alive:
                try:
                    yield pool.receive(index)
                    continue
                except WorkerFailed as exc:
                    log.warning("warning: worker process %s; compressing the rest in this process", exc)
                    pool.stop()
            yield compress(task)
        used = pool.check_done()
        if cpu_seconds is not None:
            cpu_seconds.extend(used)
    finally:
        pool.stop()


class _Pool:
    """The forked workers and the read ends of their pipes."""

    def __init__(self, make_tasks: Callable[[], Iterable[list]], compress: Compress, workers: int) -> None:
        self.pids: List[int] = []
        self.readers: list = []
        self.alive = False
        try:
            pipes = [os.pipe() for _ in range(workers)]
        except OSError as exc:
            log.warning("warning: cannot create pipes for %d worker processes (%s); compressing in this process",
                        workers, exc)
            return
        for _, write_end in pipes:
            _widen(write_end)
        for number in range(workers):
            try:
                pid = os.fork()
            except OSError as exc:
                log.warning("warning: cannot start worker process %d (%s); compressing in this process",
                            number + 1, exc)
                break
            if pid == 0:  # the worker never returns from here
                _worker_main(make_tasks, compress, number, workers, pipes)
            self.pids.append(pid)
        for read_end, write_end in pipes:
            os.close(write_end)
        self.readers = [os.fdopen(read_end, "rb", buffering=0) for read_end, _ in pipes]
        self.alive = len(self.pids) == workers
        if not self.alive:
            self.stop()

    def receive(self, index: int) -> CompressedPages:
        """The batch of task ``index`` from its worker; :class:`WorkerFailed` when it cannot come.
        Its fields are views of one buffer read straight from the pipe (no further copies)."""
        number = index % len(self.readers)
        reader = self.readers[number]
        head = _read_exactly(reader, FRAME.size)
        if head is None:
            raise WorkerFailed(self._death(number))
        count, zeros, desc_size, data_size = FRAME.unpack(head)
        if count < 0:
            message = bytes(_read_exactly(reader, data_size) or b"").decode("utf-8", "replace")
            raise WorkerFailed(f"{number + 1} failed: {message}")
        body = _read_exactly(reader, 2 * desc_size + data_size)
        if body is None:
            raise WorkerFailed(self._death(number))
        return CompressedPages(count, zeros, body[:desc_size], body[desc_size:2 * desc_size],  # type: ignore[arg-type]
                               body[2 * desc_size:])

    def check_done(self) -> List[float]:
        """Reap the workers after the last task and return their CPU seconds; one that exits with
        an error after delivering everything only gets a warning, the output is whole."""
        if not self.alive:
            return []
        used = []
        for number, pid in enumerate(self.pids):
            _, status, usage = os.wait4(pid, 0)
            used.append(usage.ru_utime + usage.ru_stime)
            if status:
                log.warning("warning: worker process %d ended with %s after its last batch", number + 1,
                            _describe(status))
        self.pids = []
        return used

    def _death(self, number: int) -> str:
        pid = self.pids[number]
        try:
            done, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return f"{number + 1} (pid {pid}) is gone"
        self.pids[number] = 0
        return f"{number + 1} (pid {pid}) stopped before its batch was complete: {_describe(status)}"

    def stop(self) -> None:
        """Kill and reap every worker still running and close the pipes; never raises."""
        self.alive = False
        for pid in self.pids:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in self.pids:
            if pid:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        self.pids = []
        for reader in self.readers:
            reader.close()
        self.readers = []


def _worker_main(make_tasks: Callable[[], Iterable[list]], compress: Compress, number: int, workers: int,
                 pipes: Sequence[tuple]) -> None:
    """Body of worker ``number``: compress its share, send each batch, exit (never returns)."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out = pipes[number][1]
        for read_end, write_end in pipes:
            os.close(read_end)
            if write_end != out:
                os.close(write_end)
        try:
            for index, task in enumerate(make_tasks()):
                if index % workers == number:
                    batch = compress(task)
                    _write_all(out, [FRAME.pack(batch.count, batch.zero_pages, len(batch.descriptors),
                                                len(batch.data)),
                                     batch.descriptors, batch.rebase_mask, batch.data])
            status = 0
        except BrokenPipeError:
            pass  # the writer is gone; nothing to tell
        except Exception as exc:  # noqa: BLE001 - reported to the writer, which decides
            message = str(exc).encode("utf-8", "replace")[:4096]
            try:
                _write_all(out, [FRAME.pack(-1, 0, 0, len(message)), message])
            except OSError:
                pass
    finally:
        os._exit(status)


def _write_all(fd: int, parts: List[bytes]) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _read_exactly(reader, size: int) -> Optional[memoryview]:
    """``size`` bytes read straight into a new buffer, or None at end of file before that."""
    view = memoryview(bytearray(size))
    done = 0
    while done < size:
        got = reader.readinto(view[done:])
        if not got:
            return None
        done += got
    return view


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    return f"exit status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"wait status {status}"


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):
        pass
