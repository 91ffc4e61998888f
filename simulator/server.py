"""The simulator's HTTP server: stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive, loopback only."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cascade.simulator.engine import Reply, SimEngine
from cascade.simulator.scenario import Scenario, load_scenario


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the engine, waits the simulated latency, writes the reply in one send."""

    protocol_version = "HTTP/1.1"
    server_version = "cascade-simulator"
    disable_nagle_algorithm = True   # small keep-alive replies must not wait for delayed ACKs
    timeout = 300                    # an idle keep-alive connection is dropped after this
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a benchmark's thousands of requests would drown stderr

    def do_GET(self) -> None:
        self._serve(b"")

    def do_DELETE(self) -> None:   # the Batch APIs' file and message-batch deletes
        self._serve(b"")

    def do_POST(self) -> None:
        length = self.headers.get("content-length")
        try:
            size = int(length) if length else 0
        except ValueError:
            size = -1
        if size < 0:
            self.close_connection = True
            self._write(Reply(400, {"content-type": "text/plain"}, b"bad content-length"))
            return
        self._serve(self.rfile.read(size) if size else b"")

    def _serve(self, raw: bytes) -> None:
        reply = self.server.engine.route(self.command, self.path, raw, dict(self.headers.items()))
        if reply.delay_s > 0 and self.server.stopping.wait(reply.delay_s):
            reply = Reply(0, body=None)  # stopping: drop the connection instead of answering late
        if reply.body is None:
            self.close_connection = True  # a "timeout": the client sees the connection close unanswered
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        body = reply.body or b""
        phrase = HTTPStatus(reply.status).phrase
        lines = [f"HTTP/1.1 {reply.status} {phrase}", f"Server: {self.server_version}",
                 f"Date: {self.date_time_string()}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        lines.append("Connection: close" if self.close_connection else "Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon threads that knows its open connections, to cut them on stop."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], engine: SimEngine, stopping: threading.Event):
        self.engine = engine
        self.stopping = stopping
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up (a client timing out mid-latency); report anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Remember (or forget) an open client connection."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def cut_connections(self) -> None:
        """Shut every open client connection, waking the threads blocked on them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


#: the one non-loopback address the simulator accepts: every interface of a container, whose network
#: is private to the compose stack (docker-compose.yml's `sim` service); never a host's public address
CONTAINER_HOST = "0.0.0.0"


def _loopback(host: str) -> str:
    """`host` if it is an IPv4 loopback address ("localhost" becomes 127.0.0.1) or CONTAINER_HOST; else ValueError."""
    if host == "localhost":
        return "127.0.0.1"
    if host == CONTAINER_HOST:
        return host
    try:
        if ipaddress.IPv4Address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"the simulator listens on loopback (127.0.0.1), or {CONTAINER_HOST} inside a container; "
                     f"not {host!r}")


class SimServer:
    """An OpenAI + Anthropic simulator on a background daemon thread; a context manager."""

    def __init__(self, scenario: Scenario, host: str = "127.0.0.1", port: int = 0):
        self.scenario = scenario
        self.host = _loopback(host)
        self.port = port
        self.engine = SimEngine(scenario)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:41079" (OpenAI clients add "/v1")."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimServer:
        """Bind and serve on a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self.engine, self._stopping)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"simulator-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and cut open connections; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.cut_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict[str, Any]:
        """The counters, as GET /stats returns them."""
        return self.engine.stats.snapshot()

    def reset_stats(self) -> None:
        """What POST /stats/reset does."""
        self.engine.reset()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_port_file(path: Path, port: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{port}\n", encoding="utf-8")
    os.replace(temporary, path)  # a reader polling for the file never sees it half written


def serve_forever(scenario_path: str | Path, host: str = "127.0.0.1", port: int = 0,
                  port_file: str | Path | None = None) -> None:
    """Serve `scenario_path` until SIGTERM / SIGINT; announces the URL on stderr and in `port_file`.

    The port file is written atomically once the socket listens and removed on a clean exit.
    Signal handlers are installed only when called from the main thread (and restored after).
    """
    server = SimServer(load_scenario(scenario_path), host, port).start()
    done = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: done.set())
    try:
        print(f"simulator listening on {server.url}", file=sys.stderr, flush=True)
        if port_file is not None:
            _write_port_file(Path(port_file), server.port)
        while not done.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
        if port_file is not None:
            Path(port_file).unlink(missing_ok=True)
