"""Every torchvision classification model through basisprune's pipeline, in Torch-Pruning's style.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights,
``NUM_CLASSES`` outputs, batch 1 at a small input, eval mode) the stages are:

* ``decompose``: ``bp.decompose(model, include_linear=True)`` (head excluded) equals the model;
* ``basis``: random basis masks and scales, ``bp.compact`` equals the masked model;
* ``channel``: ``bp.add_channel_scales`` equals the model, random channel masks and scales,
  ``bp.compact`` equals the masked model;
* ``double``: the channel-compacted model decomposed, basis-masked and compacted again;
* ``inference``: ``bp.inference_form`` of the double-pruned masked model equals it.

"Equals" is ``max |a - b| <= RTOL * max(1, max |b|)``. A stage that the library refuses on purpose
(a :class:`basisprune.errors.BasisPruneError` or ``ValueError``, one line) is ``refused`` with that
line; anything else is ``failed`` (a bug). Models that are not CNNs are ``skipped`` with the reason,
so are those over ``--max-params`` parameters (time on a small CPU).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/zoo.py --jobs 2   # writes the two files below
    PYTHONPATH=src python benchmarks/zoo.py --only resnet18 regnet_y_400mf --out /tmp/z.json --md ''
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn

import basisprune as bp
from basisprune.channel import unsupported_channel_groups
from basisprune.errors import BasisPruneError, one_line
from basisprune.repro import provenance as machine
from basisprune.repro.arguments import ArgumentParser

NUM_CLASSES = 7  # no inner layer of a torchvision model has 7 channels: the head is found by its width
SIZE = 64
SIZES = {"inception_v3": 80}  # its stem needs at least 75 px
RTOL = 1e-3
MAX_PARAMS = 30e6  # bigger models take minutes each on a shared 2-core CPU
KEEP = 0.6  # share of units the random masks keep
NOT_CNN = {"vit_": "a vision transformer (attention blocks), not a CNN",
           "swin": "a Swin transformer (windowed attention), not a CNN",
           "maxvit": "MaxViT mixes convs with attention blocks: not a CNN"}
STAGES = ("decompose", "basis", "channel", "double", "inference")
ROOT = Path(__file__).resolve().parents[1]


def heads(model: nn.Module) -> list[str]:
    """The classifier layers (main and auxiliary): convs / linear layers with NUM_CLASSES outputs."""
    return [n for n, m in model.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES)
            or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES)]


def skip_reason(name: str, params: int | None = None, max_params: float = float("inf")) -> str | None:
    for prefix, why in NOT_CNN.items():
        if name.startswith(prefix):
            return why
    if params is not None and params > max_params:
        return f"{params / 1e6:.0f}M parameters, over the {max_params / 1e6:.0f}M limit of this CPU run (time)"
    return None


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model.eval()(x)
    return y if isinstance(y, torch.Tensor) else y[0]


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference relative to ``max(1, max |want|)``."""
    return (got.double() - want.double()).abs().max().item() / max(1.0, want.double().abs().max().item())


def mask_basis(model: nn.Module, g: torch.Generator) -> None:
    """Random basis masks (>= 1 basis per group) and scales in [0.5, 1.5)."""
    for layer in bp.basis_layers(model).values():
        layer.mask.copy_((torch.rand(layer.num_bases, generator=g) < KEEP).float())
        layer.mask.view(layer.groups, layer.rank)[:, 0] = 1
        with torch.no_grad():
            layer.scale.uniform_(0.5, 1.5, generator=g)


def mask_channels(model: nn.Module, g: torch.Generator) -> None:
    """Random channel masks (>= 1 unit per group) and scales in [0.5, 1.5)."""
    for s in bp.channel_scales(model).values():
        s.mask.copy_((torch.rand(s.num_units, generator=g) < KEEP).float())
        s.mask[torch.randint(s.num_units, (1,), generator=g)] = 1
        with torch.no_grad():
            s.scale.uniform_(0.5, 1.5, generator=g)


def _stage(fn: Callable[[], tuple[nn.Module, nn.Module]], x: torch.Tensor) -> dict[str, Any]:
    """Run ``fn() -> (result, reference)`` and compare them on ``x``; classify what went wrong."""
    t = time.perf_counter()
    try:
        got, ref = fn()
        err = max_error(_out(got, x), _out(ref, x))
        rec = {"status": "passed" if err <= RTOL else "failed", "max_error": err}
        if err > RTOL:
            rec["line"] = f"outputs differ by {err:.3g} (relative), over {RTOL}"
    except (BasisPruneError, ValueError) as e:
        rec = {"status": "refused", "line": one_line(e), "error": type(e).__name__}
    except Exception as e:  # noqa: BLE001  the zoo records bugs instead of stopping at the first
        rec = {"status": "failed", "line": one_line(e), "error": type(e).__name__}
    rec["seconds"] = round(time.perf_counter() - t, 2)
    return rec


def check_model(model: nn.Module, x: torch.Tensor, head: list[str], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every stage of the pipeline on ``model`` (eval mode); one record per stage."""
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, Any]] = {}
    box: dict[str, Any] = {}  # what later stages reuse: the models, the unscaled groups

    def decompose():
        box["d"] = bp.decompose(model, include_linear=True, exclude=head).eval()
        return box["d"], model

    def basis():
        d = box["d"]
        mask_basis(d, g)
        return bp.compact(d, x), d

    def channel():
        unscaled = unsupported_channel_groups(model, x, ignored=head)
        if unscaled:  # recorded, not refused: the other groups are scaled and pruned
            box["unscaled"] = {"unscaled_groups": len(unscaled), "example": next(iter(unscaled.items()))}
        s = bp.add_channel_scales(model, x, ignored=head).eval()
        err = max_error(_out(s, x), _out(model, x))
        if err > RTOL:
            raise RuntimeError(f"the channel-scaled model differs from the model by {err:.3g} with all scales 1")
        mask_channels(s, g)
        box["c"] = bp.compact(s, x)
        return box["c"], s

    def double():
        d2 = bp.decompose(box["c"], include_linear=True, exclude=[h for h in head if h in dict(box["c"].named_modules())])
        mask_basis(d2.eval(), g)
        box["d2"] = d2
        return bp.compact(d2, x), d2

    def inference():
        return bp.inference_form(box["d2"], x, merge="flops", memory_format="contiguous"), box["d2"]

    for name, fn, needs in (("decompose", decompose, None), ("basis", basis, "decompose"),
                            ("channel", channel, None), ("double", double, "channel"),
                            ("inference", inference, "double")):
        if needs is not None and out[needs]["status"] != "passed":
            out[name] = {"status": "not run", "line": f"needs the {needs} stage"}
            continue
        out[name] = _stage(fn, x)
    out["channel"].update(box.get("unscaled", {}))
    return out


def run_model(name: str, max_params: float = float("inf"), seed: int = 0) -> dict[str, Any]:
    """Build ``name`` with random weights and check it; the record of one row of the table."""
    torch.set_num_threads(1)  # several models side by side on a small CPU
    rec: dict[str, Any] = {"model": name}
    why = skip_reason(name)
    if why:
        return {**rec, "status": "skipped", "reason": why}
    t = time.perf_counter()
    rec["params"] = meta_params(name)
    why = skip_reason(name, rec["params"], max_params)
    if why:
        return {**rec, "status": "skipped", "reason": why}
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES).eval()
    size = SIZES.get(name, SIZE)
    rec["input"] = [1, 3, size, size]
    x = torch.randn(*rec["input"], generator=torch.Generator().manual_seed(seed))
    rec["stages"] = check_model(model, x, heads(model), seed)
    states = [s["status"] for s in rec["stages"].values()]
    rec["status"] = "failed" if "failed" in states else "refused" if "refused" in states else "passed"
    rec["seconds"] = round(time.perf_counter() - t, 1)
    return rec


def provenance() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": machine.package_version("torch-pruning"), "basisprune": bp.__version__,
            "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "src", "benchmarks")),
            "threads_per_model": 1, "hardware": machine.hardware(),
            "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def markdown(result: dict[str, Any]) -> str:
    """The table of a zoo result: one row per model, a refused or failed stage with its line."""
    p = result["provenance"]
    counts = {k: sum(r["status"] == k for r in result["models"]) for k in ("passed", "refused", "failed", "skipped")}
    lines = [
        f"Generated by `benchmarks/zoo.py` from `data/benchmarks/zoo.json` (torch {p['torch']}, torchvision "
        f"{p['torchvision']}, Torch-Pruning {p['torch_pruning']}, commit `{p['commit'][:10]}`, "
        f"{p['hardware']['cpu_model']}, {p['hardware']['usable_cores']} cores shared with other work, "
        f"{p['threads_per_model']} thread per model, {result['jobs']} model(s) at a time, {result['wall_seconds'] / 60:.1f} min wall time). Random weights, {NUM_CLASSES} classes, batch 1 "
        f"at {SIZE} px ({', '.join(f'{k} {v} px' for k, v in SIZES.items())}), {KEEP:.0%} of units kept by random "
        f"masks; every stage is checked against the masked model (relative error at most {RTOL}).",
        "",
        f"**{counts['passed']} passed, {counts['refused']} refused, {counts['failed']} failed, "
        f"{counts['skipped']} skipped** of {len(result['models']) + len(result.get('not_reached', []))} "
        f"classification models" + (f"; the run stopped before {', '.join(result['not_reached'])}."
                                   if result.get("not_reached") else "."),
        "",
        "| model | params (M) | " + " | ".join(STAGES) + " | why (refused, failed or skipped) |",
        "|:--|--:|" + ":-:|" * len(STAGES) + ":--|",
    ]
    mark = {"passed": "ok", "refused": "refused", "failed": "**FAILED**", "not run": "–"}
    for r in result["models"]:
        params = f"{r['params'] / 1e6:.1f}" if "params" in r else ""
        if r["status"] == "skipped":
            lines.append(f"| {r['model']} | {params} |" + " |" * len(STAGES) + f" skipped: {r['reason']} |")
            continue
        st = r["stages"]
        why = "; ".join(f"{k}: {v['line']}" for k, v in st.items() if v["status"] in ("refused", "failed"))
        if st["channel"].get("unscaled_groups"):
            root, reason = st["channel"]["example"]
            why += (f"{'; ' if why else ''}{st['channel']['unscaled_groups']} channel group(s) left unscaled, "
                    f"e.g. {root}: {reason}")
        lines.append(f"| {r['model']} | {params} | " + " | ".join(mark[st[s]["status"]] for s in STAGES)
                     + f" | {why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="model names (default: every classification model)")
    ap.add_argument("--max-params", type=float, default=MAX_PARAMS, help=f"skip bigger models (default {MAX_PARAMS:g})")
    ap.add_argument("--jobs", type=int, default=1, help="models checked side by side, one thread each")
    ap.add_argument("--out", default=str(ROOT / "data/benchmarks/zoo.json"))
    ap.add_argument("--md", default=str(ROOT / "book/_zoo.md"), help="markdown table ('' for none)")
    args = ap.parse_args(argv)
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    names = sorted(names, key=meta_params)  # smallest first: an interrupted run still covers most models
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    prov = provenance()

    def write(done: bool) -> dict[str, Any]:
        # Written after every model, so a run cut short keeps what it checked ("complete": false).
        order = {n: i for i, n in enumerate(names)}
        result = {"provenance": prov, "jobs": args.jobs, "complete": done,
                  "wall_seconds": round(time.perf_counter() - t0, 1),
                  "settings": {"num_classes": NUM_CLASSES, "size": SIZE, "sizes": SIZES, "rtol": RTOL, "keep": KEEP,
                               "max_params": args.max_params},
                  "models": sorted(rows, key=lambda r: order[r["model"]]),
                  "not_reached": [n for n in names if n not in {r["model"] for r in rows}]}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        if args.md:
            Path(args.md).write_text(markdown(result))
        return result

    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for rec in pool.imap_unordered(functools.partial(run_model, max_params=args.max_params), names):
            rows.append(rec)
            line = "; ".join(f"{k}={v['status']}" for k, v in rec.get("stages", {}).items()) or rec.get("reason", "")
            print(f"{rec['model']}: {rec['status']} ({rec.get('seconds', 0)} s) {line}", flush=True)
            write(False)
    result = write(True)
    print(f"wall time {result['wall_seconds']} s", flush=True)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def meta_params(name: str) -> int:
    """Parameters of a model, counted without allocating (or else without initialising) its weights."""
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES)
    except NotImplementedError:  # RegNet computes its widths with tensors, which meta tensors cannot give
        inits = {k: v for k, v in vars(nn.init).items() if k.endswith("_") and callable(v)}
        try:
            for k in inits:
                setattr(nn.init, k, lambda t, *a, **kw: t)
            model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES)
        finally:
            for k, v in inits.items():
                setattr(nn.init, k, v)
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    sys.exit(main())
