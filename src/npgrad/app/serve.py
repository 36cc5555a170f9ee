"""``npgrad serve``: a local page to draw a digit and watch the network answer.

Python's standard HTTP server, one thread per client, and one static page
(``static/serve.html``: its script and style inline, nothing loaded from
elsewhere). The page sends the drawing to one JSON endpoint and shows what
comes back:

``GET /`` (and ``HEAD``, for every page GET serves)
    the page.
``GET /api/info``
    the model: classes, input shape, a one-line description, the hidden layer shown.
``POST /api/predict``
    body ``{"width": W, "height": H, "pixels": base64}`` where ``pixels`` holds
    ``W * H`` grey bytes row by row (the canvas, any polarity). The drawing goes
    through :func:`npgrad.app.images.preprocess`, as ``npgrad predict``'s pictures
    do; the answer holds the predicted class, every class's probability, the
    28x28 the network saw and the first hidden layer's activations (for a
    convolutional network, the first layer's feature maps).

Anything else is a 4xx answer with a JSON ``{"error": message}``: unknown
paths 404 (no file is ever read from a request's path), a body over
:data:`MAX_BODY` 413, no length 411, malformed JSON or fields 400, a drawing
with no digit in it 422, a request not all sent within :data:`DEADLINE` 408.
Every answer has an HTTP/1.0 status line, whatever was sent: a request line
that is not HTTP is 400, HTTP/2 505.

The server binds 127.0.0.1 unless told otherwise. Bound to a loopback address it
answers only requests addressed to it by a loopback name (``localhost``,
``127.0.0.1``, ``[::1]``, or the name and address it was given; any port, since a
tunnel may change it) and refuses others with 421: a web page cannot reach it by
pointing a name of its own at 127.0.0.1 (DNS rebinding). A request with no ``Host``
comes from no browser, and is answered. Bound to any other address (``0.0.0.0``) it
is meant to be reached by names it cannot know, and answers every ``Host``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import ipaddress
import json
import math
import re
import socket
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .. import nn
from ..autodiff import Tensor, no_grad
from ..errors import ImageError, RequestRejected, ServeError
from ..ops import dense as ops

__all__ = ["DEADLINE", "MAX_BODY", "MAX_SIDE", "Predictor", "make_server", "serve"]

MAX_SIDE = 560  # the page's canvas is 280x280; twice that leaves room for other clients
MAX_BODY = 512 * 1024  # a 560x560 drawing is 418 KiB in base64
DRAIN = 4 * MAX_BODY  # an oversized body up to this is read and dropped so the client gets the 413
TIMEOUT = 10.0  # seconds a client may stall (sending or reading): its thread is then freed
DEADLINE = 15.0  # seconds to send the whole request: a client trickling it frees its thread too
BACKLOG = 128  # connections kept waiting while busy (the standard library's 5 drops bursts)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::([0-9]{1,5}))?")
_ACTIVATIONS = tuple(nn.ACTIVATIONS.values())


class Predictor:
    """A trained network answering drawings: the class, probabilities, and what it computed.

    ``net`` is the network as layers (:func:`npgrad.app.export.as_sequential`), ``meta``
    the checkpoint's metadata (classes, image shape); :meth:`from_run` reads both
    from a run.
    """

    def __init__(self, net: nn.Sequential, meta: dict[str, Any], describe: str = "") -> None:
        from .export import input_spec
        from .images import recipe_for

        self.net = net
        self.net.eval()  # for good: every request is inference
        spec = input_spec(net, meta)
        self.classes = [str(c) for c in meta["classes"]]
        self.shape = tuple(spec["image_shape"])
        self.input_shape = tuple(spec["shape"][1:])
        self.recipe = recipe_for(self.shape, self.classes)
        self.dtype = next(iter(net.state_dict().values())).dtype
        self.describe = describe or repr(net)
        self.hidden_index = next(
            (i for i, m in enumerate(net.layers[:-1]) if isinstance(m, _ACTIVATIONS)), None
        )

    @classmethod
    def from_run(cls, run: Any) -> Predictor:
        """The network of a run directory or checkpoint file."""
        from .export import as_sequential
        from .models import load_for_inference

        model, meta = load_for_inference(run)
        return cls(as_sequential(model), meta, model.describe())

    def info(self) -> dict[str, Any]:
        hidden = None
        if self.hidden_index is not None:
            layer = self.net.layers[self.hidden_index]
            hidden = f"layer {self.hidden_index} ({type(layer).__name__})"
        return {
            "classes": self.classes,
            "image_shape": list(self.shape),
            "model": self.describe,
            "hidden": hidden,
        }

    def predict(self, drawing: np.ndarray) -> dict[str, Any]:
        """The answer for one picture (H, W); :class:`ImageError` if it holds no digit."""
        from .images import preprocess

        x = preprocess(drawing, self.shape, self.recipe, name="drawing")
        h = Tensor(x.reshape(1, *self.input_shape).astype(self.dtype))
        hidden = None
        with no_grad():  # this request's thread only
            for i, layer in enumerate(self.net.layers):
                h = layer(h)
                if i == self.hidden_index:
                    hidden = h.data[0]
        probs = ops.SoftmaxOp.forward(h.data.astype(np.float64), axis=1)[0][0]
        best = int(np.argmax(probs))
        answer: dict[str, Any] = {
            "prediction": self.classes[best],
            "class_index": best,
            "probabilities": [round(float(p), 6) for p in probs],
            "input": [round(float(v), 3) for v in x.ravel()],
            "hidden": None,
        }
        if hidden is not None:
            answer["hidden"] = {
                "shape": list(hidden.shape),
                "values": [round(float(v), 4) for v in hidden.ravel()],
            }
        return answer


def _page() -> bytes:
    return resources.files("npgrad.app").joinpath("static").joinpath("serve.html").read_bytes()


def _host_names(given: str, bound: str) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``bound`` (named ``given``) answers; None: any."""
    try:
        if not ipaddress.ip_address(bound).is_loopback:
            return None
    except ValueError:
        return None
    return LOOPBACK_NAMES | {f"[{n}]" if ":" in n else n for n in (given.lower(), bound)}


def _host_name(value: str) -> str | None:
    """The name in a ``Host`` value, lowercase, its port dropped; None if it is malformed."""
    match = _HOST.fullmatch(value.strip(" \t"))
    if not match or (match[2] and not 0 < int(match[2]) <= 65535):
        return None
    return match[1].lower()


class _Receiver(io.RawIOBase):
    """A connection's reading end that gives each receive only what is left of the request's time.

    The socket's timeout bounds one receive: a client sending a byte every few seconds
    would pass it forever. Here the whole request (line, headers, body) must arrive
    by ``deadline``; a receive after it raises :class:`TimeoutError`.
    """

    def __init__(self, sock: socket.socket, patience: float) -> None:
        super().__init__()
        self.sock, self.patience = sock, patience
        self.deadline = math.inf
        self.received = 0  # bytes, so that a client who sent nothing is not answered
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError("the request's deadline passed")
            self.sock.settimeout(min(left, self.patience))
            n = self.sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise
        self.received += n
        return n


class Handler(BaseHTTPRequestHandler):
    server_version = "npgrad"
    sys_version = ""  # the Server header names npgrad, not the Python version
    timeout = TIMEOUT
    server: _Server
    _in: _Receiver
    _answered = False

    # ---------------------------------------------------------------- a connection

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the standard library's reader, replaced by one that keeps the deadline
        self._in = _Receiver(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._in)

    def handle_one_request(self) -> None:
        # What send_error and log_request read, in case no request line ever arrives
        # (command None, as the standard library's parse_request sets it: typeshed says str).
        self.requestline, self.request_version = "", "HTTP/1.0"
        self.command = None  # type: ignore[assignment]
        self._answered = False
        self._in.deadline = time.monotonic() + self.server.deadline
        super().handle_one_request()
        # The standard library hangs up without a word on a read that times out and on
        # a request line of blanks; a client who sent something is told why.
        if self._answered or not self._in.received:
            return
        self.close_connection = True
        if self._in.expired:
            message = f"the request did not arrive in time ({self.server.deadline:g} s)"
            self._error(HTTPStatus.REQUEST_TIMEOUT, message)
        else:
            self._error(HTTPStatus.BAD_REQUEST, "the request line is empty")

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        names = self.server.host_names
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            self.send_error(HTTPStatus.BAD_REQUEST, "send one Host header")
            return False
        if names is not None and hosts and _host_name(hosts[0]) not in names:
            self.send_error(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"this server answers requests for localhost or 127.0.0.1, not {hosts[0][:60]!r}",
            )
            return False
        return True

    # ---------------------------------------------------------------- answers

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._answered = True
        self.connection.settimeout(self.timeout)  # the deadline is the request's, not the answer's
        if self.request_version == "HTTP/0.9":
            # The standard library's version until a request line is parsed (and HTTP/0.9's
            # own), for which it writes no status line and no headers: every answer has them.
            self.request_version = "HTTP/1.0"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:",
        )
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # What the standard library answers itself (bad request line, unknown method,
        # headers too long...) is JSON like every other answer.
        self.close_connection = True
        self._error(HTTPStatus(code), message or HTTPStatus(code).phrase)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # ---------------------------------------------------------------- methods

    def _path(self) -> str | None:
        """The request's path; None, answered 400, if it cannot be parsed."""
        try:
            return urlsplit(self.path).path
        except ValueError:  # e.g. "http://[": an IPv6 address never closed
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, f"bad request target {self.path[:100]!r}")
            return None

    def do_GET(self) -> None:
        path = self._path()
        if path is None:
            return
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.server.predictor.info())
        elif path == "/favicon.ico":  # browsers ask for it; there is none
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path[:100]}; the page is at /")

    do_HEAD = do_GET  # _send leaves the body out

    def do_POST(self) -> None:
        path = self._path()
        if path is None:
            return
        try:
            if path != "/api/predict":
                self.close_connection = True
                raise RequestRejected(HTTPStatus.NOT_FOUND, "POST drawings to /api/predict")
            drawing = self._drawing(self._body())
        except RequestRejected as exc:
            self._error(exc.status, str(exc))
            return
        try:
            answer = self.server.predictor.predict(drawing)
        except ImageError as exc:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc))
            return
        self._json(HTTPStatus.OK, answer)

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served here")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    # ---------------------------------------------------------------- reading a request

    def _body(self) -> bytes:
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise RequestRejected(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise RequestRejected(
                HTTPStatus.BAD_REQUEST, f"bad Content-Length {raw[:40]!r}"
            ) from None
        if length > MAX_BODY:
            self.close_connection = True
            if length <= DRAIN:  # read it, so that the client is listening when the 413 comes
                self._read(length)
            raise RequestRejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request of {length:,} bytes is over the limit of {MAX_BODY:,}",
            )
        body = self._read(length)
        if len(body) < length:
            self.close_connection = True
            raise RequestRejected(HTTPStatus.BAD_REQUEST, "the request body ended early")
        return body

    def _read(self, length: int) -> bytes:
        try:
            return self.rfile.read(length)
        except (TimeoutError, OSError):
            self.close_connection = True
            message = "the request body did not arrive"
            if self._in.expired:
                message = f"the request did not arrive in time ({self.server.deadline:g} s)"
            raise RequestRejected(HTTPStatus.REQUEST_TIMEOUT, message) from None

    def _drawing(self, body: bytes) -> np.ndarray:
        try:
            req = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RequestRejected(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(req, dict):
            raise RequestRejected(
                HTTPStatus.BAD_REQUEST, "send a JSON object {width, height, pixels}"
            )
        w, h = _side("width", req.get("width")), _side("height", req.get("height"))
        pixels = req.get("pixels")
        if not isinstance(pixels, str):
            raise RequestRejected(
                HTTPStatus.BAD_REQUEST, "pixels must be a base64 string of grey bytes"
            )
        try:
            raw = base64.b64decode(pixels, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRejected(HTTPStatus.BAD_REQUEST, "pixels is not valid base64") from None
        if len(raw) != w * h:
            raise RequestRejected(
                HTTPStatus.BAD_REQUEST,
                f"pixels holds {len(raw)} bytes, width x height is {w * h}",
            )
        return np.frombuffer(raw, np.uint8).reshape(h, w)


def _side(name: str, v: Any) -> int:
    """A drawing's width or height: an integer from 1 to MAX_SIDE."""
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIDE:
        raise RequestRejected(
            HTTPStatus.BAD_REQUEST, f"{name} must be an integer from 1 to {MAX_SIDE}"
        )
    return v


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that never finishes does not hold up Ctrl-C
    request_queue_size = BACKLOG
    predictor: Predictor
    page: bytes
    verbose: bool
    deadline: float  # seconds a client has to send its whole request
    host_names: frozenset[str] | None  # the Host names answered; None: any
    # (host, port), and for IPv6 flow info and scope: a TCP server's host is text, never bytes
    server_address: tuple[str, int] | tuple[str, int, int, int]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is its own business: no traceback on the
        # terminal unless --verbose asks for the details.
        if self.verbose:
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    verbose: bool = False,
    deadline: float = DEADLINE,
) -> _Server:
    """A bound server (``serve_forever()`` runs it); port 0 picks a free port.

    ``deadline`` is the seconds a client has to send its whole request.
    """
    cls = _Server6 if ":" in host else _Server
    try:
        server = cls((host, port), Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is in use: choose another with --port (0 picks a free one)"
            ) from None
        if exc.errno == errno.EACCES:
            raise ServeError(
                f"not allowed to listen on port {port} (ports below 1024 need privileges): "
                "choose another with --port"
            ) from None
        reason = exc.strerror or str(exc)
        raise ServeError(f"cannot listen on {host} port {port} ({reason}); check --host") from None
    except (OverflowError, UnicodeError) as exc:
        raise ServeError(f"cannot listen on {host!r} port {port} ({exc})") from None
    server.predictor, server.page, server.verbose = predictor, _page(), verbose
    server.deadline = deadline
    server.host_names = _host_names(host, server.server_address[0])
    return server


def url_of(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(run: Any, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False) -> None:
    """Serve the page for the checkpoint in ``run`` until Ctrl-C."""
    predictor = Predictor.from_run(run)
    server = make_server(predictor, host, port, verbose)
    try:
        print(f"npgrad serve: {predictor.describe}", flush=True)
        print(f"npgrad serve: open {url_of(server)} (Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("npgrad serve: stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()
