"""``npgrad serve``: starts, answers, stops cleanly on Ctrl-C; every mistake one line, exit 2."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from npgrad.cli import main
from tests.cli.helpers import assert_one_line_error, run_catching_exit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(["train", "-d", "digits", "-e", "1", "-o", str(out), "-q"]) == 0
    return out


def serve(capsys, *argv):
    return run_catching_exit(capsys, ["serve", *map(str, argv)])


def test_mistakes_are_one_line_and_exit_2(capsys, run_dir, tmp_path):
    code, _, err = serve(capsys, tmp_path / "nowhere")
    assert_one_line_error(code, err, "no such checkpoint file")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = serve(capsys, run_dir, "--port", port)
        assert_one_line_error(code, err, f"port {port} on 127.0.0.1 is in use")
    code, _, err = serve(capsys, run_dir, "--port", 70000)
    assert_one_line_error(code, err, "--port must be from 0 to 65535")
    code, _, err = serve(capsys, run_dir, "--port", "http")
    assert_one_line_error(code, err, "invalid int value")
    code, _, err = serve(capsys, run_dir, "--host", "203.0.113.7", "--port", 0)
    assert_one_line_error(code, err, "check --host")


def test_serves_until_ctrl_c_then_stops_cleanly(run_dir):
    # The child starts with Python's Ctrl-C handler whatever it inherits. A child that hung
    # here had SIGINT and SIGQUIT ignored (SigIgn 0x1001006): what C's system() sets
    # process-wide while it runs, so a native thread of this test process was inside it
    # when the child was forked; a child started like that ignores Ctrl-C for good.
    launch = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'npgrad'; runpy.run_module('npgrad', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launch, "serve", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("npgrad serve: MLP 64-")
        url = lines[1].split("open ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "api/info", timeout=10) as r:
            assert json.load(r)["image_shape"] == [8, 8]
        # a page whose own name was pointed at this computer (DNS rebinding) is refused
        rebound = urllib.request.Request(url + "api/info", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=10)
        assert refused.value.code == 421
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert err.strip() == "npgrad serve: stopped" and "Traceback" not in err
    with pytest.raises(OSError):  # the port is closed
        urllib.request.urlopen(url, timeout=2)


def test_help_shows_examples(capsys):
    code, out, _ = serve(capsys, "--help")
    assert code == 0 and "npgrad serve runs/digits-default --port 8080" in out


def test_help_says_which_names_are_answered(capsys):
    code, out, _ = serve(capsys, "--help")
    text = " ".join(out.split())
    assert code == 0 and "only by the names localhost, 127.0.0.1 or [::1]" in text
    assert "--host 0.0.0.0 listens on every interface and answers any name" in text


def test_the_default_address_is_this_computer_only():
    from npgrad.cli import build_parser

    args = build_parser().parse_args(["serve", "run"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert os.path.basename(args.run) == "run"
