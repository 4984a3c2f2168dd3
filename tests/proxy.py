"""A TCP proxy in front of a real server, to cut the network in tests (psycopg_pool style)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType


class Proxy:
    """Forwards 127.0.0.1:<port> to a server; `cut()` drops every connection and refuses new
    ones until `restore()`; `stall()` accepts connections and forwards nothing, on new links
    and on the links already open (a link that says nothing: no error, no data)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.stalled = False
        self.links: list[socket.socket] = []
        self.held: list[socket.socket] = []  # links accepted while stalled, never served
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            if self.stalled:
                with self.lock:
                    self.held.append(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.links += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.stalled and self.up:
                    time.sleep(0.05)  # hold the data: the other side waits, unanswered
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up, self.stalled = False, False
        with self.lock:
            for s in self.held:
                s.close()
            self.held.clear()
            for s in self.links:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()  # always: a socket already shut down by a pipe must close too
            self.links.clear()

    def stall(self) -> None:
        self.up, self.stalled = True, True

    def restore(self) -> None:
        self.up, self.stalled = True, False
        with self.lock:
            for s in self.held:
                s.close()
            self.held.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
