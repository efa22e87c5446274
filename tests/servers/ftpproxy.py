"""An FTP control-connection proxy on 127.0.0.1 that records the conversation.

:class:`RecordingFtpProxy` forwards each control connection to a real FTP
server (the tests use vsftpd) and records, in one order over all
connections, every command the client sends and every reply the server
gives, plus the opening and closing of each connection.  An event is
recorded before it is passed on, so the order is causal: a command recorded
after a reply was sent after the client could have read that reply.

Data connections do not pass the proxy: the server's PASV reply names its
own port.  That is enough to tell when a transfer runs, since FTP opens
and closes it by replies on the control connection (``PASV`` ... ``STOR``
... ``226``).

Two server behaviours vsftpd lacks can be switched on, answered by the
proxy itself instead of the server (and recorded as such):

* ``avbl``: a callable giving the free bytes; ``AVBL`` is then answered
  ``213 <bytes>`` (the draft extension some servers offer);
* ``refuse``: commands answered ``502`` (e.g. ``REST``, as servers without
  restart support do).

Plain ftp only: ftps encrypts the control connection.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, FrozenSet, Iterator, List, Optional, Tuple

from servers.proxy import stop_listening

#: commands that move data over a data connection
TRANSFERS = frozenset({"STOR", "APPE", "STOU", "RETR", "LIST", "NLST", "MLSD"})


@dataclass(frozen=True)
class Event:
    """One thing seen on a control connection."""

    seq: int
    at: float
    """time.monotonic() when the proxy saw it."""
    conn: int
    kind: str
    """``open``, ``close``, ``cmd`` (client to server) or ``reply`` (a reply's last line)."""
    text: str = ""
    by_proxy: bool = False

    @property
    def verb(self) -> str:
        return self.text.split(" ", 1)[0].upper() if self.kind == "cmd" else ""

    @property
    def code(self) -> str:
        return self.text[:3] if self.kind == "reply" else ""


class RecordingFtpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``; use as a context manager."""

    def __init__(self, upstream: int, avbl: Optional[Callable[[], int]] = None,
                 refuse: FrozenSet[str] = frozenset()) -> None:
        self.upstream = upstream
        self.avbl = avbl
        self.refuse = frozenset(v.upper() for v in refuse)
        self.events: List[Event] = []
        self._lock = threading.Lock()
        self._next_conn = 0
        self._open: List[Tuple[socket.socket, socket.socket]] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def __enter__(self) -> "RecordingFtpProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        stop_listening(self.listener)
        with self._lock:
            pairs, self._open = self._open, []
        for pair in pairs:
            for sock in pair:
                sock.close()

    def _record(self, conn: int, kind: str, text: str = "", by_proxy: bool = False) -> None:
        with self._lock:
            self.events.append(Event(len(self.events), time.monotonic(), conn, kind, text, by_proxy))

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._next_conn += 1
                conn = self._next_conn
                self._open.append((client, server))
            self._record(conn, "open")
            send_lock = threading.Lock()
            ended = threading.Event()
            threading.Thread(target=self._from_client, args=(conn, client, server, send_lock, ended),
                             daemon=True).start()
            threading.Thread(target=self._from_server, args=(conn, server, client, send_lock, ended),
                             daemon=True).start()

    def _ended(self, conn: int, ended: threading.Event, side: str) -> None:
        with self._lock:
            first = not ended.is_set()
            ended.set()
        if first:
            self._record(conn, "close", side)

    def _from_client(self, conn: int, client: socket.socket, server: socket.socket, send_lock: threading.Lock,
                     ended: threading.Event) -> None:
        try:
            for line in _lines(client):
                text = line.decode("latin-1")
                verb = text.split(" ", 1)[0].upper()
                self._record(conn, "cmd", "PASS ***" if verb == "PASS" else text)
                answer = self._own_answer(verb)
                if answer is None:
                    server.sendall(line + b"\r\n")
                    continue
                self._record(conn, "reply", answer, by_proxy=True)
                with send_lock:
                    client.sendall(answer.encode() + b"\r\n")
        except OSError:
            pass
        self._ended(conn, ended, "client")
        try:
            server.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _own_answer(self, verb: str) -> Optional[str]:
        if verb in self.refuse:
            return f"502 {verb} not implemented."
        if verb == "AVBL" and self.avbl is not None:
            return f"213 {self.avbl()}"
        return None

    def _from_server(self, conn: int, server: socket.socket, client: socket.socket, send_lock: threading.Lock,
                     ended: threading.Event) -> None:
        try:
            for line in _lines(server):
                text = line.decode("latin-1")
                # the last line of a reply is "ddd text"; "ddd-" opens a multi-line one
                if len(text) >= 4 and text[:3].isdigit() and text[3] == " ":
                    self._record(conn, "reply", text)
                with send_lock:
                    client.sendall(line + b"\r\n")
        except OSError:
            pass
        self._ended(conn, ended, "server")
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _lines(sock: socket.socket) -> Iterator[bytes]:
    """The CRLF-terminated lines ``sock`` receives, without the CRLF, until it closes."""
    pending = b""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        pending += data
        while b"\r\n" in pending:
            line, pending = pending.split(b"\r\n", 1)
            yield line


def overlapping_commands(events: List[Event]) -> List[str]:
    """Commands sent while a transfer was open, on its own or any other control connection.

    A transfer is open from the ``227`` reply to ``PASV`` (the client then
    connects the data channel) until the final reply (not ``1xx``) to the
    transfer command that follows, or until its connection closes.  Between
    ``227`` and the transfer command only ``REST`` may come (on the same
    connection), as the protocol wants it right before ``STOR``/``RETR``."""
    problems: List[str] = []
    state: Dict[int, str] = {}  # conn -> "pasv" | "transfer: VERB"
    waiting: Dict[int, Deque[str]] = {}  # conn -> commands without their final reply, oldest first
    for e in events:
        queue = waiting.setdefault(e.conn, deque())
        if e.kind == "close":
            state.pop(e.conn, None)
        elif e.kind == "reply":
            if e.code.startswith("1") and not e.by_proxy:
                continue  # preliminary: the transfer starts
            # the proxy answers a command at once, the server in order
            verb = (queue.pop() if e.by_proxy else queue.popleft()) if queue else ""
            if verb == "PASV" and e.code == "227":
                state[e.conn] = "pasv"
            elif verb in TRANSFERS:
                state.pop(e.conn, None)
            elif verb == "REST" and not e.code.startswith("3"):
                state.pop(e.conn, None)  # REST refused: the client gives this data channel up
        elif e.kind == "cmd":
            queue.append(e.verb)
            for other, what in state.items():
                if other != e.conn:
                    problems.append(f"#{e.seq} {e.verb} on connection {e.conn} while "
                                    f"connection {other} has a transfer open ({what})")
            mine = state.get(e.conn)
            if mine == "pasv":
                if e.verb in TRANSFERS:
                    state[e.conn] = f"transfer: {e.verb}"
                elif e.verb != "REST":
                    problems.append(f"#{e.seq} {e.verb} on connection {e.conn} between PASV and its transfer")
            elif mine is not None:
                problems.append(f"#{e.seq} {e.verb} on connection {e.conn} during its own {mine}")
    return problems
