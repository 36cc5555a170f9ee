"""``npgrad data``: list, locate and download datasets."""

from __future__ import annotations

import argparse

from .common import formatter


def cmd_data_list(args: argparse.Namespace) -> int:
    from ..app.config import existing_dir
    from ..data import NAMES, cache_root, locate

    data_dir = existing_dir(args.data_dir)
    print(f"npgrad cache: {cache_root()}")
    for name in NAMES:
        ds, attempts = locate(name, data_dir)
        if ds is not None:
            print(
                f"{name:<14} found  {ds.source}  ({len(ds.train_labels)} train, "
                f"{len(ds.test_labels)} test, {ds.image_shape[0]}x{ds.image_shape[1]})"
            )
        else:
            print(f"{name:<14} not found: 'npgrad data fetch {name}' downloads it")
            for a in attempts:
                print(f"{'':<16}- {a.where}: {a.result}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from ..data import fetch

    path = fetch(args.name, mirrors=args.mirror, cache=args.cache, progress=None)
    print(f"{args.name}: verified files in {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": cmd_data_list, "fetch": cmd_data_fetch}[args.data_command](args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="list, locate and download datasets",
        description="Find datasets on this machine or download and verify them.",
        formatter_class=formatter,
        epilog="""\
examples:
  npgrad data list                          where each dataset was found, or why not
  npgrad data list --data-dir ~/datasets
  npgrad data fetch mnist                   download into the cache, SHA-256 verified
  npgrad data fetch fashion-mnist --mirror https://my.org/mirror/fashion/
  NPGRAD_MIRRORS=/mnt/share/mnist npgrad data fetch mnist

search order: a directory you give; 'digits' (embedded); the npgrad cache
($NPGRAD_DATA or $XDG_CACHE_HOME/npgrad); Keras' ~/.keras/datasets; torchvision's
MNIST/raw under ./data, ~/data or $TORCHVISION_DATA; Debian's
/usr/share/datasets/fashion-mnist; then the mirrors.""",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pl = dsub.add_parser("list", help="show where each dataset is found", formatter_class=formatter)
    pl.add_argument("--data-dir", metavar="DIR", help="also look in DIR and DIR/<name>")
    pf = dsub.add_parser(
        "fetch",
        help="download a dataset into the cache and verify it",
        formatter_class=formatter,
        epilog="example:\n  npgrad data fetch mnist --mirror https://ossci-datasets.s3.amazonaws.com/mnist/",
    )
    pf.add_argument("name", help="mnist or fashion-mnist ('digits' is embedded: nothing to fetch)")
    pf.add_argument(
        "--mirror",
        action="append",
        metavar="URL_OR_DIR",
        help="mirror to try (repeatable, in order); overrides $NPGRAD_MIRRORS and the built-in list",
    )
    pf.add_argument(
        "--cache",
        metavar="DIR",
        help="download into DIR instead of the npgrad cache ($NPGRAD_DATA)",
    )
    p.set_defaults(func=run)
