"""The package layout: the library ``basisprune`` stands alone; the harness and the book builder use it."""

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_library_never_imports_the_harness_or_the_book_builder():
    """Importing every module of the library loads no module of basisprune.repro or basisprune_book."""
    code = ("import importlib, pkgutil, sys, basisprune\n"
            "for m in pkgutil.iter_modules(basisprune.__path__):\n"
            "    if m.name != 'repro':\n"
            "        importlib.import_module('basisprune.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith(('basisprune.repro', 'basisprune_book'))))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
