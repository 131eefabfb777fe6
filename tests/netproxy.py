"""A loopback TCP proxy a test can partition: while `partitioned`, nothing is forwarded in
either direction and no connection is closed, as when a network drops packets silently.
The upstream is (host, port), or a Unix socket path (the embedded server listens on one)."""

from __future__ import annotations

import selectors
import socket
import threading


class PartitionableProxy:
    def __init__(self, upstream: tuple[str, int] | str):
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.partitioned = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PartitionableProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self._upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._upstream)
            return sock
        return socket.create_connection(self._upstream)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                if key.data is None:
                    if self.partitioned.is_set():
                        continue  # new connections hang in the backlog, as across a partition
                    try:
                        client, _ = self._listener.accept()
                    except OSError:
                        return
                    server = self._connect_upstream()
                    self._sockets += [client, server]
                    selector.register(client, selectors.EVENT_READ, server)
                    selector.register(server, selectors.EVENT_READ, client)
                elif not self.partitioned.is_set():
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    try:
                        key.data.sendall(data)
                    except OSError:
                        selector.unregister(key.fileobj)
            if self.partitioned.is_set():
                self._stop.wait(0.05)  # hold everything: no reads, no writes, no closes
        selector.close()
