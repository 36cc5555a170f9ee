"""``npgrad serve``: a local page to draw a digit and watch the network answer."""

from __future__ import annotations

import argparse

from .common import formatter, nonempty


def run(args: argparse.Namespace) -> int:
    from ..app.serve import serve
    from ..errors import ServeError

    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be from 0 to 65535 (0 picks a free port), got {args.port}")
    serve(args.run, host=args.host, port=args.port, verbose=args.verbose)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page to draw a digit and see the network's answer",
        description="Serve a page where you draw a digit (mouse or touch) and see the\n"
        "predicted class, every class's probability, the 28x28 picture the network\n"
        "sees and its hidden layer's activations, updated as you draw. The drawing\n"
        "is normalised as 'npgrad predict' normalises pictures. Ctrl-C stops the server.\n\n"
        "Only this computer can reach the page, and only by the names localhost,\n"
        "127.0.0.1 or [::1]: a web page that points a name of its own at this computer\n"
        "(DNS rebinding) is refused. --host 0.0.0.0 listens on every interface and\n"
        "answers any name, so every machine (and web page) that can reach this one\n"
        "can use it: trusted networks only.",
        epilog="""\
examples:
  npgrad serve runs/digits-default                 # then open http://127.0.0.1:8000/
  npgrad serve runs/digits-default --port 8080
  npgrad serve runs/digits-default --host 0.0.0.0  # reachable from the network: trusted ones only""",
        formatter_class=formatter,
    )
    p.add_argument("run", help="run directory of 'npgrad train' (or its checkpoint.npz)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        type=nonempty("give 127.0.0.1, or 0.0.0.0 for every interface"),
        help="address to listen on (default 127.0.0.1: this computer; 0.0.0.0: every interface, "
        "answering any host name)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)
