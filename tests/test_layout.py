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


def test_library_modules_use_each_others_public_names_only():
    """No library module imports or reaches into another library module's private (``_``) name."""
    import ast

    lib = SRC / "basisprune"
    modules = {p.stem for p in lib.glob("*.py")} | {"repro"}
    found = []
    for path in sorted(lib.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:
                    aliases |= {a.asname or a.name for a in node.names if a.name in modules}
                else:
                    found += [f"{path.name}: from .{node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
        found += [f"{path.name}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not found, found
