"""An asyncio HTTP/1.1 server: hot routes answered from the event loop, the rest by a WSGI app.

Why not waitress alone: under 16 keep-alive clients, waitress spent more CPU per request on its
pure-Python read/parse/dispatch loop and thread hand-offs than a batched LiteRT run of a small
edge part costs (issue 24: a 20-line FastAPI + uvicorn app answered twice as many requests).
Here one event loop (uvloop when installed) reads every connection; a request to a *hot route*
(``POST /v1/infer`` of the edge) is parsed and handed to the route's handler on the loop thread,
which queues it into the dynamic batcher and returns at once; the batcher's worker thread
replies through :meth:`Reply.send` (thread-safe). Every other request, and every hot request
the handler declines, is served by the WSGI app (Flask) on a small thread pool, exactly as under
waitress, so all refusals are still rendered by the app's own error handlers.

What the server enforces: HTTP/1.0 and 1.1, keep-alive, ``Content-Length`` or chunked bodies
(both at once is refused), ``Expect: 100-continue``, a header size limit (431), a body limit
(413, then the connection is closed), an idle timeout, a connection limit (503 and close), one
request at a time per connection (pipelined requests wait their turn). Nothing happens at
import.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

LOG = logging.getLogger("edgelesspart.aserver")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_CONNECTION_LIMIT = 1000
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SKIP_APP_HEADERS = frozenset({"content-length", "connection", "date", "server", "keep-alive"})

__all__ = ["AsyncServer", "HotRoute", "Reply", "Request", "new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed (about twice as fast), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Request:
    """One parsed request: method, path (decoded), raw query, lower-cased headers, body."""

    __slots__ = ("method", "path", "query", "headers", "body", "version", "remote")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str],
                 body: bytes, version: str, remote: tuple[str, int] | None) -> None:  # fmt: skip
        self.method, self.path, self.query = method, path, query
        self.headers, self.body, self.version, self.remote = headers, body, version, remote


class Reply:
    """Sends the one response of a request; callable from any thread, at most once."""

    __slots__ = ("_conn", "_sent")

    def __init__(self, conn: _Connection) -> None:
        self._conn, self._sent = conn, False

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write the response (``Content-Length`` and ``Connection`` are added here)."""
        if self._sent:
            raise RuntimeError("This request was already answered.")
        self._sent = True
        conn = self._conn
        if threading.get_ident() == conn.server.loop_thread:
            conn.respond(status, headers, body)
        else:
            conn.server.loop.call_soon_threadsafe(conn.respond, status, headers, body)


#: ``hot(request, reply) -> bool``: True when the handler took the request (it will call
#: ``reply.send`` exactly once, from any thread); False to let the WSGI app serve it.
HotRoute = Callable[[Request, Reply], bool]


class _Connection(asyncio.Protocol):
    """One client connection: parse requests one at a time, dispatch, write responses."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.keep_alive = True
        self.head: tuple | None = None  # parsed request line and headers awaiting the body
        self.last = time.monotonic()
        self.remote: tuple[str, int] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.remote = transport.get_extra_info("peername")
        server = self.server
        if len(server.connections) >= server.connection_limit:
            self.keep_alive = False
            body = error_body(503, "Too many connections; retry later.")
            self.respond(503, [("Content-Type", "application/json")], body)
            return
        server.connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        if self.server.balancer is not None:
            self.server.balancer.add(-1)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.buf += data
        if self.busy:
            if len(self.buf) > self.server.max_body + MAX_HEADER_BYTES and self.transport:
                self.transport.pause_reading()  # a client sending ahead: wait for our answer
            return
        self.process()

    def process(self) -> None:
        """Parse the next complete request in the buffer (if any) and dispatch it."""
        try:
            request = self._parse()
        except _HttpError as err:
            self.keep_alive = False
            self.respond(err.status, [("Content-Type", "application/json")], err.body())
            return
        if request is None:
            return
        self.busy = True
        server = self.server
        hot = server.hot
        if hot is not None:
            try:
                if hot(request, Reply(self)):
                    return
            except Exception:  # noqa: BLE001 - the WSGI app answers (and renders any error)
                LOG.exception("hot route failed before answering; handing to the WSGI app")
        server.pool.submit(server.call_wsgi, request, Reply(self))

    def _parse(self) -> Request | None:
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER_BYTES:
                    raise _HttpError(431, "Request header fields too large.")
                return None
            self.head = _parse_head(bytes(self.buf[:end]), self.server.max_body)
            del self.buf[: end + 4]
            method, target, version, headers, length, chunked = self.head
            waiting = chunked or len(self.buf) < length  # the client may wait for our go
            if waiting and headers.get("expect", "").lower() == "100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, target, version, headers, length, chunked = self.head
        if chunked:
            parsed = _dechunk(self.buf, self.server.max_body)
            if parsed is None:
                return None
            body, used = parsed
        else:
            if len(self.buf) < length:
                return None
            body, used = bytes(self.buf[:length]), length
        del self.buf[:used]
        self.head = None
        connection = headers.get("connection", "").lower()
        self.keep_alive = ("close" not in connection) if version == "HTTP/1.1" else (
            "keep-alive" in connection)  # fmt: skip
        path, _, query = target.partition("?")
        try:
            path = unquote_to_bytes(path).decode("latin-1")
        except ValueError as exc:
            raise _HttpError(400, "Malformed request path.") from exc
        return Request(method, path, query, headers, body, version, self.remote)

    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write one response on the loop thread, then read the next request."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away meanwhile
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not any(k.lower() == "content-length" for k, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        lines.append(f"Date: {self.server.date}")
        lines.append("Server: edgelesspart")
        if not self.keep_alive:
            lines.append("Connection: close")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.last = time.monotonic()
        if not self.keep_alive:
            transport.close()
            return
        self.busy = False
        transport.resume_reading()
        if self.buf:
            self.process()


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> bytes:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> bytes:
    """The services' JSON error body (``{"error": {"code", "message", "status"}}``)."""
    code = _REASONS.get(status, "error").lower().replace(" ", "_").replace("-", "_")
    error = {"code": code, "message": message, "status": status}
    return (json.dumps({"error": error}, separators=(",", ":")) + "\n").encode()


def _parse_head(head: bytes, max_body: int) -> tuple:
    """(method, target, version, headers, content length, chunked) of a request head."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise _HttpError(400, "Undecodable request head.") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise _HttpError(400, "Malformed request line.")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _HttpError(505, f"HTTP version {version[:16]} is not supported.")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "Malformed header line.")
        name = name.lower()
        value = value.strip()
        if name in headers:
            if name in ("content-length", "host", "transfer-encoding"):
                raise _HttpError(400, f"Repeated {name} header.")
            value = headers[name] + ", " + value
        headers[name] = value
    chunked = False
    if "transfer-encoding" in headers:
        if headers["transfer-encoding"].lower() != "chunked":
            raise _HttpError(501, "Only the chunked transfer coding is supported.")
        if "content-length" in headers:
            raise _HttpError(400, "Both Content-Length and Transfer-Encoding were sent.")
        chunked = True
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise _HttpError(400, "Content-Length must be a non-negative integer.")
    length = int(raw)
    if length > max_body:
        raise _HttpError(413, f"Request body is larger than the limit of {max_body} bytes.")
    return method.upper(), target, version, headers, length, chunked


def _dechunk(buf: bytearray, max_body: int) -> tuple[bytes, int] | None:
    """(body, bytes used) of a complete chunked body at the start of ``buf``, else ``None``."""
    pos, parts, size = 0, [], 0
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        try:
            n = int(bytes(buf[pos:end]).split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _HttpError(400, "Malformed chunk size.") from exc
        size += n
        if n < 0 or size > max_body:
            raise _HttpError(413, f"Request body is larger than the limit of {max_body} bytes.")
        if n == 0:
            trailer_end = buf.find(b"\r\n\r\n", end)
            if buf[end : end + 4] == b"\r\n\r\n":
                return b"".join(parts), end + 4
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buf) < end + 2 + n + 2:
            return None
        parts.append(bytes(buf[end + 2 : end + 2 + n]))
        if buf[end + 2 + n : end + 4 + n] != b"\r\n":
            raise _HttpError(400, "Malformed chunk.")
        pos = end + 4 + n


class AsyncServer:
    """Serve a WSGI app (plus an optional hot route) on one asyncio event loop.

    Args:
        app: the WSGI app (every request the hot route does not take).
        hot: the hot route, or ``None``.
        host, port: where to listen (ignored when ``sock`` is given).
        sock: an already bound socket to listen on (pre-forked workers, SO_REUSEPORT).
        threads: WSGI threads (the app's blocking work runs there).
        max_body: largest request body in bytes (larger: 413 and the connection is closed).
        connection_limit: most open client connections (beyond: 503 and close).
        idle_timeout_s: an idle keep-alive connection is closed after this long.
        multiprocess: tell the app (``wsgi.multiprocess``) it runs in several workers.
        balancer: a pre-forked worker's :class:`~service_http.prefork.AcceptBalancer`: ``sock``
            is shared by every worker, and a thread accepts on it only while this worker has
            no more connections than any other (handing each one to the loop); ``None``: the
            loop accepts every connection that reaches ``sock``.
    """

    def __init__(
        self,
        app: Any,
        hot: HotRoute | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        threads: int = 8,
        max_body: int = 8 * 1024 * 1024,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        multiprocess: bool = False,
        balancer: Any = None,
    ) -> None:
        self.app, self.hot = app, hot
        self.balancer = balancer
        self.max_body, self.connection_limit = int(max_body), int(connection_limit)
        self.idle_timeout_s = float(idle_timeout_s)
        self.multiprocess = multiprocess
        self.sock = sock if sock is not None else bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="wsgi")
        self.connections: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop = new_event_loop()
        self.loop_thread = -1
        self.date = formatdate(usegmt=True)
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"

    # ----------------------------------------------------------------------- run and stop

    def serve_forever(self) -> None:
        """Run the loop in this thread until :meth:`stop` (or KeyboardInterrupt)."""
        loop = self.loop
        asyncio.set_event_loop(loop)
        self.loop_thread = threading.get_ident()
        if self.balancer is None:
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _Connection(self), sock=self.sock, backlog=1024)
            )
        else:
            self.sock.listen(1024)
            accept = threading.Thread(target=self._accept_balanced, name="accept", daemon=True)
            accept.start()
        loop.call_later(1.0, self._tick)
        loop.call_soon(self._ready.set)  # listening now: start() may return
        try:
            loop.run_forever()
        finally:
            self._close_all()
            self._stopped.set()
            self._ready.set()

    def _accept_balanced(self) -> None:
        """Accept on the shared socket while it is this worker's turn; hand each to the loop.

        A blocking ``accept`` wakes one waiting worker per connection; a worker with more
        connections than another does not wait in ``accept`` at all (it re-checks every 2 ms),
        so the next connection goes to a least-loaded worker.
        """
        sock, balancer = self.sock, self.balancer
        sock.settimeout(0.2)
        while not self._stopped.is_set():
            if not balancer.my_turn():
                time.sleep(0.002)
                continue
            try:
                conn, _ = sock.accept()
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:  # the socket was closed: the server is stopping
                if self._stopped.is_set() or sock.fileno() < 0:
                    return
                time.sleep(0.01)  # e.g. EMFILE: out of descriptors for a moment
                continue
            balancer.add(1)  # counted now, so the next my_turn() already sees it
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.loop.call_soon_threadsafe(self._adopt, conn)
            except RuntimeError:  # the loop is closed
                balancer.add(-1)
                conn.close()
                return

    def _adopt(self, conn: socket.socket) -> None:
        """On the loop: serve an accepted connection (un-count it if that fails)."""

        def failed(task: asyncio.Future) -> None:
            if task.cancelled() or task.exception() is not None:
                self.balancer.add(-1)
                conn.close()

        factory = lambda: _Connection(self)  # noqa: E731
        self.loop.create_task(self.loop.connect_accepted_socket(factory, conn)).add_done_callback(
            failed
        )

    def _tick(self) -> None:
        """Once a second: refresh the Date header, close idle keep-alive connections."""
        self.date = formatdate(usegmt=True)
        now = time.monotonic()
        for conn in list(self.connections):
            if not conn.busy and now - conn.last > self.idle_timeout_s and conn.transport:
                conn.transport.close()
        self.loop.call_later(1.0, self._tick)

    def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        try:
            self.loop.run_until_complete(asyncio.sleep(0))
        except RuntimeError:  # pragma: no cover - loop already closed
            pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    def start(self) -> AsyncServer:
        """Serve from a daemon thread (tests, demos, benchmarks); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name="aserver", daemon=True)
            self._thread.start()
            while not self._ready.wait(0.05):
                if not self._thread.is_alive():
                    raise RuntimeError("The server thread stopped before it was listening.")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, close every connection and the listening socket."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._stopped.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> AsyncServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------- WSGI bridge

    def call_wsgi(self, request: Request, reply: Reply) -> None:
        """Serve ``request`` with the WSGI app (on a pool thread) and send its response."""
        try:
            status, headers, body = self._run_app(request)
        except Exception:  # noqa: BLE001 - the app itself failed outside its handlers
            LOG.exception("WSGI app raised")
            status, headers = 500, [("Content-Type", "application/json")]
            body = error_body(500, "Internal server error; the server log has the details.")
        reply.send(status, headers, body)

    def _run_app(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started["status"], started["headers"] = status, headers
            return chunks.append

        result = self.app(self.environ(request), start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        body = b"".join(chunks)
        status = int(started["status"].split(" ", 1)[0])
        headers = [(k, v) for k, v in started["headers"] if k.lower() not in _SKIP_APP_HEADERS]
        if request.method == "HEAD":
            given = [v for k, v in started["headers"] if k.lower() == "content-length"]
            headers.append(("Content-Length", given[0] if given else "0"))
            body = b""
        return status, headers, body

    def environ(self, request: Request) -> dict[str, Any]:
        """The PEP 3333 environ of ``request``."""
        headers = request.headers
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query,
            "SERVER_NAME": str(self.host),
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": request.remote[0] if request.remote else "",
            "REMOTE_PORT": str(request.remote[1]) if request.remote else "",
            "CONTENT_LENGTH": str(len(request.body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": self.multiprocess,
            "wsgi.run_once": False,
        }
        if "content-type" in headers:
            environ["CONTENT_TYPE"] = headers["content-type"]
        for name, value in headers.items():
            if name in ("content-type", "content-length", "transfer-encoding"):
                continue
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6), optionally with ``SO_REUSEPORT``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host.strip("[]"), port))
    sock.set_inheritable(True)
    return sock
