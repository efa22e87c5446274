"""A TCP proxy on 127.0.0.1 whose connections a test can cut.

:class:`CuttingProxy` forwards every connection to a server port.  It counts
the bytes going to the server over all connections; once they pass
``cut_at`` it resets every open connection on both sides (as a broken
network or a restarted server does), and for ``down`` seconds afterwards it
resets new connections at once (the server is gone), then forwards again.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import List, Optional, Tuple


def stop_listening(listener: socket.socket) -> None:
    """Shut ``listener`` down, then close it.  shutdown wakes the accepting
    thread: after a bare close it stays in accept(), and a later proxy in the
    same run was seen losing connections to such a thread."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    _reset(listener)


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class CuttingProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``; use as a context manager."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        """Bytes forwarded to the server so far, all connections together."""
        self.cut_at: Optional[int] = None
        self.down = 0.0
        self.cuts: List[float] = []
        """When each cut happened (time.monotonic())."""
        self.refused = 0
        self._refuse_until = 0.0
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def __enter__(self) -> "CuttingProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        stop_listening(self.listener)
        self.cut(record=False)

    def cut(self, record: bool = True) -> None:
        """Reset every open connection now."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            if record:
                self.cuts.append(time.monotonic())
                self._refuse_until = time.monotonic() + self.down
        for client, server in pairs:
            _reset(client)
            _reset(server)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if to_server:
                    with self._lock:
                        self.sent += len(data)
                        trigger = self.cut_at is not None and self.sent >= self.cut_at
                        if trigger:
                            self.cut_at = None
                    if trigger:
                        self.cut()
                        return
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
