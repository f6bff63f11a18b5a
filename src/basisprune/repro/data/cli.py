"""``python -m basisprune.repro.data {list,download,info}``: which data sets are on this machine,
fetching one into a root, and the split sizes of one."""

from __future__ import annotations

import argparse

from ... import errors
from .. import assets
from .catalog import SPLITS, _INFO, available
from .loaders import load
from .sources import _pools, _root, is_local

__all__ = ["main"]


def _download(name: str, root: str | None) -> str:
    r = _root(root)
    if name in ("mnist5k", "digits"):
        _pools(name, None, False)
        return f"{name}: ships with its Python package; nothing to download"
    if name == "imagefolder":
        raise ValueError("imagefolder is your own data; there is nothing to download")
    if name == "fashion_mnist" and assets.fashion_mnist_debian_dir() is not None:
        assets.ensure_fashion_mnist(r)
        return f"fashion_mnist: unpacked Debian's files into {r / 'FashionMNIST' / 'raw'}"
    _pools(name, r, True)
    return f"{name}: ready under {r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m basisprune.repro.data", description="basisprune data sets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known data sets and whether each is on this machine")
    d = sub.add_parser("download", help="fetch a data set into --root (default: the cache dir)")
    d.add_argument("name", choices=available())
    d.add_argument("--root", default=None)
    i = sub.add_parser("info", help="split sizes of a data set")
    i.add_argument("name", choices=available())
    i.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for n in available():
            print(f"{n:14s} {'local' if is_local(n) else 'not local':10s} {_INFO[n].about}")
        return 0
    try:
        if args.cmd == "download":
            print(_download(args.name, args.root))
        else:
            for split in SPLITS:
                ds = load(args.name, split, 32, root=args.root, download=False)
                print(f"{args.name} {split}: {len(ds)} images, {len(ds.classes)} classes, source {ds.source}")
    except errors.REPORTED as e:  # one line, status 2, like the other command lines
        return errors.report(e)
    return 0
