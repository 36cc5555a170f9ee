"""npgrad.app.serve: the drawing goes through predict's preprocessing; the server refuses bad
requests with a 4xx and goes on serving, serves clients at once, never serves a file from a
request's path, answers only requests addressed to this computer and every request with a
status line, in time; and the page works in a real browser, drawn on stroke by stroke."""

import base64
import contextlib
import http.client
import json
import os
import re
import select
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgrad.app import images
from npgrad.app.models import load_for_inference
from npgrad.app.serve import MAX_BODY, Predictor, make_server, url_of
from npgrad.autodiff import Tensor, no_grad
from npgrad.data import read_idx
from npgrad.errors import BlankImageError, ServeError
from tests.app.test_export import MNIST_META, small_cnn, trained_run
from tests.cli.helpers import run as run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    return trained_run(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor.from_run(run)


@pytest.fixture(scope="module")
def digits(shared_data):
    folder = shared_data / "mnist-10k"
    return (
        read_idx(folder / "t10k-images-idx3-ubyte.gz", ndim=3),
        read_idx(folder / "t10k-labels-idx1-ubyte.gz", ndim=1),
    )


@pytest.fixture(scope="module")
def server(predictor):
    srv = make_server(predictor, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def canvas(digit: np.ndarray, scale: int = 10) -> np.ndarray:
    """An MNIST digit as the page's canvas would hold it: 280x280 grey bytes."""
    return np.kron(digit, np.ones((scale, scale), np.uint8))


def drawing_body(pixels: np.ndarray) -> bytes:
    h, w = pixels.shape
    b64 = base64.b64encode(pixels.astype(np.uint8).tobytes()).decode()
    return json.dumps({"width": w, "height": h, "pixels": b64}).encode()


def request(server, method, path, body=None, headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def raw_request(server, data: bytes, shut: bool = False) -> tuple[int, bytes]:
    """Send bytes as they are (malformed requests http.client would not send)."""
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1]


def still_serving(server, digits):
    status, _, body = request(server, "POST", "/api/predict", drawing_body(canvas(digits[0][0])))
    assert status == 200 and json.loads(body)["prediction"] == "7"


# --------------------------------------------------------------------------- the predictions


def test_the_drawing_goes_through_predicts_preprocessing(predictor, run, digits, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    model, _ = load_for_inference(run)
    for i in range(3):
        drawing = canvas(digits[0][i])
        if i == 1:
            drawing = 255 - drawing  # dark ink on paper: the same digit
        answer = predictor.predict(drawing)
        seen = images.preprocess(drawing, (28, 28), "mnist")
        np.testing.assert_allclose(np.reshape(answer["input"], (28, 28)), seen, atol=5e-4)
        expected = np.exp(model.log_probs(seen.reshape(1, -1).astype(np.float32))[0])
        np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-6)
        assert answer["prediction"] == str(digits[1][i]) == str(expected.argmax())
        # and `npgrad predict` says the same of that drawing saved as a picture
        Image.fromarray(drawing).save(tmp_path / f"d{i}.png")
        code, out, _ = run_cli(capsys, "predict", str(run), str(tmp_path / f"d{i}.png"), "--json")
        assert code == 0
        line = json.loads(out)
        assert line["prediction"] == answer["prediction"]
        got = [line["probabilities"][c] for c in predictor.classes]
        np.testing.assert_allclose(answer["probabilities"], got, atol=2e-6)


def test_hidden_activations_are_the_first_hidden_layer(predictor, digits):
    answer = predictor.predict(canvas(digits[0][0]))
    x = images.preprocess(canvas(digits[0][0]), (28, 28), "mnist").ravel().astype(np.float32)
    first = predictor.net[0]
    expected = np.maximum(x @ first.weight.data + first.bias.data, 0)
    assert answer["hidden"]["shape"] == [256]
    np.testing.assert_allclose(answer["hidden"]["values"], expected, atol=1e-4)
    assert (expected > 0).any() and (expected == 0).any()
    assert predictor.info()["hidden"] == "layer 1 (ReLU)"


def test_the_exercise_network_is_served_too(tmp_path_factory, shared_data, digits):
    run = trained_run(tmp_path_factory, shared_data, "exercise")
    model, _ = load_for_inference(run)
    p = Predictor.from_run(run)
    answer = p.predict(canvas(digits[0][0]))
    seen = images.preprocess(canvas(digits[0][0]), (28, 28), "mnist").reshape(1, -1)
    assert answer["class_index"] == int(model.log_probs(seen).argmax())
    x1 = np.append(seen[0], 1.0)
    np.testing.assert_allclose(answer["hidden"]["values"], np.maximum(x1 @ model.W1, 0), atol=1e-3)


def test_a_convolutional_network_shows_its_first_feature_maps(digits, rng):
    net = small_cnn(rng)
    p = Predictor(net, MNIST_META)
    drawing = canvas(digits[0][0])
    answer = p.predict(drawing)
    x = images.preprocess(drawing, (28, 28), "mnist").reshape(1, 1, 28, 28).astype(np.float32)
    with no_grad():
        maps = net[2](net[1](net[0](Tensor(x)))).data[0]
        logits = net(Tensor(x)).data[0]
    assert p.info()["hidden"] == "layer 2 (ReLU)"
    assert answer["hidden"]["shape"] == [4, 28, 28]
    np.testing.assert_allclose(answer["hidden"]["values"], maps.ravel(), atol=1e-4)
    assert answer["class_index"] == int(logits.argmax())


def test_a_blank_drawing_is_not_a_digit(predictor):
    with pytest.raises(BlankImageError):
        predictor.predict(np.zeros((280, 280), np.uint8))


# --------------------------------------------------------------------------- the server


def test_the_page_and_the_model_description(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert 'id="pad"' in page and 'id="clear"' in page and "pointerdown" in page
    # nothing is loaded from elsewhere: no external address, and the browser is told so
    assert not re.search(r"https?://|(src|href)=\"//", page)
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and info["classes"] == [str(i) for i in range(10)]
    assert info["image_shape"] == [28, 28] and info["model"].startswith("MLP 784-256-10")


def test_a_drawing_is_answered(server, digits):
    status, headers, body = request(
        server, "POST", "/api/predict", drawing_body(canvas(digits[0][1]))
    )
    answer = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer["prediction"] == "2" and abs(sum(answer["probabilities"]) - 1) < 1e-4
    assert len(answer["input"]) == 784 and len(answer["hidden"]["values"]) == 256


def _pixels(n: int) -> str:
    return base64.b64encode(bytes(n)).decode()


MALFORMED = [
    (b"not json", 400, "not JSON"),
    (b"\xff\xfe\x00", 400, "not JSON"),
    (b"[" * 50_000, 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"width": 0, "height": 28, "pixels": _pixels(0)}).encode(), 400, "width must"),
    (json.dumps({"width": True, "height": 1, "pixels": _pixels(1)}).encode(), 400, "width must"),
    (json.dumps({"width": 5000, "height": 1, "pixels": ""}).encode(), 400, "width must"),
    (json.dumps({"width": 2, "height": 2.5, "pixels": ""}).encode(), 400, "height must"),
    (json.dumps({"width": 28, "height": 28, "pixels": 5}).encode(), 400, "base64 string"),
    (json.dumps({"width": 28, "height": 28, "pixels": "@@@@"}).encode(), 400, "not valid base64"),
    (json.dumps({"width": 28, "height": 28, "pixels": _pixels(3)}).encode(), 400, "holds 3 bytes"),
    (json.dumps({"width": 28, "height": 28, "pixels": _pixels(784)}).encode(), 422, "blank"),
]


@pytest.mark.parametrize("body, status, message", MALFORMED)
def test_malformed_drawings_get_a_4xx_with_a_message(server, digits, body, status, message):
    got, headers, reply = request(server, "POST", "/api/predict", body)
    assert got == status and headers["Content-Type"] == "application/json"
    assert message in json.loads(reply)["error"]
    still_serving(server, digits)


def test_oversized_and_broken_requests_get_a_4xx(server, digits):
    # a body over the limit, sent in full, and one only announced
    status, _, reply = request(server, "POST", "/api/predict", b"x" * (MAX_BODY + 1))
    assert status == 413 and "over the limit" in json.loads(reply)["error"]
    start = time.monotonic()
    status, reply = raw_request(
        server,
        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n",
    )
    assert status == 413 and time.monotonic() - start < 5  # not waiting for a gigabyte
    status, reply = raw_request(server, b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 411 and "Content-Length" in json.loads(reply)["error"]
    for bad in (b"abc", b"-5"):
        head = b"POST /api/predict HTTP/1.1\r\nContent-Length: " + bad + b"\r\n\r\n"
        status, reply = raw_request(server, head)
        assert status == 400 and "Content-Length" in json.loads(reply)["error"]
    head = b'POST /api/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"width"'
    status, reply = raw_request(server, head, shut=True)
    assert status == 400 and "ended early" in json.loads(reply)["error"]
    status, reply = raw_request(server, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and "error" in json.loads(reply)
    status, reply = raw_request(server, b"\x16\x03\x01\x02\x00 not http\r\n\r\n")  # a TLS hello
    assert status == 400 and "error" in json.loads(reply)
    still_serving(server, digits)


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/static/serve.html",
        "/serve.py",
        "/api/../../serve.py",
        "/..%2fserve.py",
        "/api/predict",
    ],
)
def test_no_file_is_ever_served_from_a_path(server, path):
    status, reply = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert status == 404
    assert "error" in json.loads(reply) and b"root:" not in reply and b"import" not in reply


def test_wrong_methods_and_places(server, digits):
    status, _, reply = request(server, "POST", "/", b"{}")
    assert status == 404 and "/api/predict" in json.loads(reply)["error"]
    for method in ("PUT", "DELETE", "PATCH"):
        status, _, reply = request(server, method, "/api/predict", b"{}")
        assert status == 405 and "not served" in json.loads(reply)["error"]
    assert request(server, "GET", "/favicon.ico")[0] == 204
    still_serving(server, digits)


def test_clients_are_served_at_once_even_beside_a_stalled_one(server, predictor, digits):
    stalled = socket.create_connection(server.server_address[:2], timeout=10)
    stalled.sendall(b"POST /api/predict HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{")  # and waits
    try:
        cases = [canvas(digits[0][i]) for i in range(8)]
        expected = [predictor.predict(c)["prediction"] for c in cases]

        def client(i):
            return [
                request(server, "POST", "/api/predict", drawing_body(cases[(i + k) % 8]))
                for k in range(4)
            ]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client, range(8)))
        for i, replies in enumerate(results):
            for k, (status, _, body) in enumerate(replies):
                assert status == 200
                assert json.loads(body)["prediction"] == expected[(i + k) % 8]
    finally:
        stalled.close()


def test_a_port_in_use_is_a_serve_error(server, predictor):
    port = server.server_address[1]
    with pytest.raises(ServeError, match=f"port {port} on 127.0.0.1 is in use"):
        make_server(predictor, "127.0.0.1", port)
    with pytest.raises(ServeError, match="cannot listen on 203.0.113.7"):
        make_server(predictor, "203.0.113.7", 0)  # TEST-NET-3: an address no machine here has


@contextlib.contextmanager
def serving(predictor, host="127.0.0.1", start=True, **options):
    """A server of its own, for a test that changes its settings or how it is run."""
    srv = make_server(predictor, host, 0, **options)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    if start:
        thread.start()
    try:
        yield srv, thread
    finally:
        if thread.is_alive():
            srv.shutdown()
            thread.join(5)
        srv.server_close()


def exchange(address, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes as they are, say no more, and read the whole reply."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*\r\n")


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    """An HTTP/1.x answer's status, headers and body; fails if it has no status line."""
    match = STATUS_LINE.match(reply)
    assert match, f"no status line in {reply[:80]!r}"
    head, sep, body = reply.partition(b"\r\n\r\n")
    assert sep, f"no end of the headers in {reply[:200]!r}"
    headers = dict(line.decode("latin-1").split(": ", 1) for line in head.split(b"\r\n")[1:])
    return int(match[1]), headers, body


def get(address, path="/", host="127.0.0.1", method="GET") -> tuple[int, dict[str, str], bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1")
    return parse_reply(exchange(address, head))


# --------------------------------------------------------------------------- hostile clients

LOOPBACK_HOST = re.compile(r"(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?", re.IGNORECASE)


def answered_host(value: str) -> bool:
    """What a server bound to 127.0.0.1 answers: loopback's names, with any valid port."""
    match = LOOPBACK_HOST.fullmatch(value.strip(" \t"))
    return bool(match) and (not match[2] or 0 < int(match[2][1:]) <= 65535)


def test_a_page_of_another_name_is_refused(server, digits):
    port = server.server_address[1]
    for host in (
        "localhost",
        f"localhost:{port}",
        "127.0.0.1",
        f"127.0.0.1:{port}",
        "[::1]",
        f"[::1]:{port}",
        "LocalHost",
        "localhost:8080",
    ):  # a tunnel may change the port
        status, _, body = get(server.server_address, "/api/info", host)
        assert status == 200 and b"classes" in body, host
    # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
    for host in (
        "evil.example",
        f"evil.example:{port}",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "localhost:80@evil.example",
        "localhost:99999",
        "",
        "[::1",
        "127.0.0.1:",
    ):
        status, headers, body = get(server.server_address, "/api/info", host)
        assert status == 421, host
        assert "localhost" in json.loads(body)["error"] and len(body) < 200
        assert int(headers["Content-Length"]) == len(body)
    two = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"
    status, _, body = parse_reply(exchange(server.server_address, two))
    assert status == 400 and "Host" in json.loads(body)["error"]
    # no Host at all is no browser, so no page of another name: answered as before
    assert parse_reply(exchange(server.server_address, b"GET /api/info HTTP/1.0\r\n\r\n"))[0] == 200
    still_serving(server, digits)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=30),
        st.tuples(
            st.sampled_from(["localhost", "LOCALHOST", "127.0.0.1", "[::1]", "evil.example"]),
            st.sampled_from(["", ":", ":0", ":8000", ":65535", ":65536", ".", ".evil", "@x"]),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=3),
        ).map("".join),
    )
)
def test_only_loopback_host_names_are_answered(server, value):
    status, headers, body = get(server.server_address, "/api/info", value)
    assert status == (200 if answered_host(value) else 421), value
    assert int(headers["Content-Length"]) == len(body)


def test_any_host_is_answered_when_listening_on_every_interface(predictor):
    with serving(predictor, "0.0.0.0") as (srv, _):
        status, _, body = get(("127.0.0.1", srv.server_address[1]), "/api/info", "npgrad.lan")
        assert status == 200 and b"classes" in body


def test_a_name_it_was_given_is_answered(predictor):
    with serving(predictor, "localhost") as (srv, _):  # a name for a loopback address
        assert get(srv.server_address, "/", f"localhost:{srv.server_address[1]}")[0] == 200
        assert get(srv.server_address, "/", "evil.example")[0] == 421


def test_a_burst_of_64_clients_is_answered(predictor):
    # 64 clients connect while the server is busy and not accepting: the kernel keeps them
    # waiting in the listen queue, and once the server is free every one is answered.
    with serving(predictor, start=False) as (srv, thread):
        clients = []
        try:
            for _ in range(64):
                clients.append(socket.create_connection(srv.server_address, timeout=1))
            for c in clients:
                c.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            thread.start()
            for c in clients:
                c.settimeout(5)
                reply = b""
                while chunk := c.recv(65536):
                    reply += chunk
                assert parse_reply(reply)[0] == 200
        finally:
            for c in clients:
                c.close()


@pytest.mark.parametrize(
    "sent, trickled",
    [
        (b"", b"GET /api/info HTTP/1.1\r\n"),  # the request line
        (b"GET /api/info HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n"),  # the headers
        (b"POST /api/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n", b'{"width": 28}'),
    ],
    ids=["request-line", "headers", "body"],
)
def test_a_trickling_client_is_answered_408_at_the_deadline(predictor, sent, trickled):
    # one byte every 0.1 s: each receive is quick, the whole request never ends
    with serving(predictor, deadline=0.5) as (srv, _):
        with socket.create_connection(srv.server_address, timeout=5) as s:
            start = time.monotonic()
            s.sendall(sent)
            reply = b""
            for i in range(len(trickled)):
                if time.monotonic() - start > 1.5:
                    break
                s.sendall(trickled[i : i + 1])
                if select.select([s], [], [], 0.1)[0]:  # the answer
                    break
            s.settimeout(max(0.1, 1.5 - (time.monotonic() - start)))
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    reply += chunk
            elapsed = time.monotonic() - start
        status, _, body = parse_reply(reply)
        assert status == 408 and "in time" in json.loads(body)["error"]
        assert elapsed < 1.5


def test_a_silent_client_is_let_go_at_the_deadline(predictor):
    with serving(predictor, deadline=0.5) as (srv, _):
        with socket.create_connection(srv.server_address, timeout=1.5) as s:
            start = time.monotonic()
            assert s.recv(100) == b""  # nothing asked, nothing answered: the connection closes
            assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    "line, status",
    [
        (b"GET / HTTP/2.0", 505),
        (b"PRI * HTTP/2.0", 505),  # HTTP/2's preface
        (b"GET / HTTP/0.9", 200),
        (b"GET /", 200),  # HTTP/0.9's form, answered as HTTP/1.0
        (b"GET / HTTP/x.y", 400),
        (b"\x16\x03\x01\x02\x00 not http at all", 400),  # a TLS hello
        (b"\x00\x01\x02", 400),
        (b" \t ", 400),
        (b"", 400),
        (b"GET http://[/ HTTP/1.1", 400),
        (b"BREW /pot HTTP/1.1", 501),
    ],
)
def test_every_request_line_gets_a_status_line(server, line, status):
    reply = exchange(server.server_address, line + b"\r\nHost: 127.0.0.1\r\n\r\n")
    got, headers, body = parse_reply(reply)
    assert got == status and int(headers["Content-Length"]) == len(body)


TOKENS = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"BREW",
    b"/",
    b"/api/info",
    b"*",
    b"http://[",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"HTTP/",
    b"\x00",
    b"\xff",
    b"\r",
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    line=st.one_of(
        st.binary(max_size=60),
        st.lists(st.sampled_from(TOKENS), max_size=5).map(b" ".join),
    ),
    headers=st.lists(
        st.one_of(
            st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
            st.tuples(
                st.sampled_from([b"Host", b"Content-Length", b"Expect", b"Connection"]),
                st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
            ).map(b": ".join),
        ),
        max_size=4,
    ),
)
def test_anything_sent_gets_an_http_answer(server, line, headers):
    status, head, body = parse_reply(
        exchange(server.server_address, b"\r\n".join([line, *headers, b"", b""]))
    )
    if body:  # none only for HEAD
        assert int(head["Content-Length"]) == len(body)
        if status >= 400:
            assert "error" in json.loads(body)


@pytest.mark.parametrize("path, status", [("/", 200), ("/api/info", 200), ("/nowhere", 404)])
def test_head_is_get_without_the_body(server, path, status):
    got, headers, body = get(server.server_address, path, method="HEAD")
    _, get_headers, get_body = get(server.server_address, path)
    assert got == status and body == b""
    assert int(headers["Content-Length"]) == len(get_body) > 0
    assert headers["Content-Type"] == get_headers["Content-Type"]


# --------------------------------------------------------------------------- in a real browser


def _chromium():
    """Chromium and its driver (Debian: chromium, chromium-driver) and Selenium (PyPI)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [] if browser else ["chromium"]
    missing += [] if driver else ["chromium-driver"]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=940,700")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def strokes(digit: np.ndarray):
    """The digit's ink as horizontal strokes, row by row: (row, first column, last column)."""
    for y, row in enumerate(digit):
        ink = np.flatnonzero(row > 100)
        if len(ink):
            for run in np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1):
                yield y, int(run[0]), int(run[-1])


def draw(driver, digit, touch=False):
    """Draw ``digit`` on the page's canvas, one pointer-down/move/up stroke per ink run."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    w, h = pad.rect["width"], pad.rect["height"]
    kind = interaction.POINTER_TOUCH if touch else interaction.POINTER_MOUSE
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=0)
    pointer = actions.pointer_action

    def at(row, col):  # offsets from the canvas's centre, as WebDriver counts them
        return int((col + 0.5) * w / 28 - w / 2), int((row + 0.5) * h / 28 - h / 2)

    for y, x0, x1 in strokes(digit):
        pointer.move_to(pad, *at(y, x0))
        pointer.pointer_down()
        pointer.move_to(pad, *at(y, x1))
        pointer.pointer_up()
    actions.perform()


def settled(driver):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle"
    )


PAGE_PIXELS = """
const pad = document.getElementById("pad");
const rgba = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
const grey = [];
for (let i = 0; i < rgba.length; i += 4) grey.push(rgba[i]);
return grey;
"""


def test_a_digit_drawn_in_the_browser_is_recognised(browser, server, predictor, digits):
    browser.get(url_of(server))
    settled(browser)
    assert browser.find_element("id", "model").text.startswith("MLP 784-256-10")
    for index, touch in ((0, False), (1, True)):
        browser.find_element("id", "clear").click()
        draw(browser, digits[0][index], touch=touch)
        settled(browser)
        shown = browser.find_element("id", "prediction").text
        assert shown == str(digits[1][index])
        # the page shows exactly what the server computes for the canvas it holds
        pixels = np.array(browser.execute_script(PAGE_PIXELS), np.uint8).reshape(280, 280)
        assert (pixels > 128).mean() > 0.05
        answer = predictor.predict(pixels)
        assert answer["prediction"] == shown
        top = browser.find_element("css selector", f"#bar-{answer['class_index']} .pct").text
        assert top == f"{100 * answer['probabilities'][answer['class_index']]:.1f}%"
        assert "top" in browser.find_element("id", f"bar-{shown}").get_attribute("class")
        assert "256 units" in browser.find_element("id", "hidden-note").text
    if os.environ.get("NPGRAD_SCREENSHOT") == "1":
        browser.save_screenshot(str(ROOT / "docs" / "serve.png"))
    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "prediction").text == "\u2013"
    assert not np.any(browser.execute_script(PAGE_PIXELS))
