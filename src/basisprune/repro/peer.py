"""The peer method: structured channel pruning with Torch-Pruning (Fang et al., CVPR 2023).

:func:`torch_pruning_channel_prune` removes whole channel groups with ``torch_pruning``'s
``MetaPruner`` and group importance (L2 magnitude or first-order Taylor), searching the global
pruning ratio by bisection until the measured FLOPs reach a target. :func:`finetune` then trains
all weights. FLOPs are counted the way the rest of basisprune counts them
(:func:`basisprune.measure.count_flops`, ``torch.utils.flop_counter``), and

    FLOP pruning ratio = 1 - flops / flops_ref.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ..measure import count_flops, count_params

__all__ = ["IMPORTANCES", "finetune", "torch_pruning_channel_prune"]

IMPORTANCES = ("magnitude", "taylor")


def _importance(kind: str):
    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"importance must be one of {IMPORTANCES}, got {kind!r}")


def _resolve_ignored(model: nn.Module, ignored: Iterable[str | nn.Module] | None) -> list[nn.Module]:
    if ignored is None:
        from .models import classifier

        return [classifier(model)[1]]
    out = []
    for item in ignored:
        out.append(model.get_submodule(item) if isinstance(item, str) else item)
    return out


def _taylor_grads(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _prune_once(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    importance: str,
    ignored: Sequence[str | nn.Module] | None,
    iterative_steps: int,
    global_pruning: bool,
    max_pruning_ratio: float,
    round_to: int | None,
    taylor_batch: tuple[torch.Tensor, torch.Tensor] | None,
) -> nn.Module:
    """A pruned copy of ``model`` at global channel ratio ``ratio`` (eval mode during pruning)."""
    net = copy.deepcopy(model)
    mapped = None if ignored is None else [n if isinstance(n, str) else _same_module(model, net, n) for n in ignored]
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)  # the dependency tracer follows autograd nodes
    if ratio > 0:
        pruner = tp.pruner.MetaPruner(
            net,
            example_input,
            importance=_importance(importance),
            global_pruning=global_pruning,
            pruning_ratio=ratio,
            max_pruning_ratio=max_pruning_ratio,
            iterative_steps=iterative_steps,
            ignored_layers=_resolve_ignored(net, mapped),
            round_to=round_to,
        )
        for _ in range(iterative_steps):
            if importance == "taylor":
                _taylor_grads(net, taylor_batch)
            pruner.step()
        net.zero_grad(set_to_none=True)
    for m, training in modes:
        m.training = training
    return net


def _same_module(src: nn.Module, dst: nn.Module, module: nn.Module) -> nn.Module:
    """The module of the deep copy ``dst`` at the position ``module`` has in ``src``."""
    for name, m in src.named_modules():
        if m is module:
            return dst.get_submodule(name)
    raise ValueError("an ignored layer is not a submodule of the model")


def torch_pruning_channel_prune(
    model: nn.Module,
    example_input: torch.Tensor,
    target_flops_ratio: float,
    importance: str = "magnitude",
    ignored_layers: Sequence[str | nn.Module] | None = None,
    iterative_steps: int = 1,
    *,
    global_pruning: bool = True,
    max_pruning_ratio: float = 0.9,
    round_to: int | None = None,
    tol: float = 0.01,
    max_iter: int = 14,
    taylor_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    return_info: bool = False,
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Channel-prune a copy of ``model`` with Torch-Pruning until its FLOPs are at most the target.

    Torch-Pruning's ``MetaPruner`` removes channel groups (every layer coupled through residual
    additions, concatenations, BatchNorms and depthwise convs loses the channel together), ranked by
    ``GroupMagnitudeImportance(p=2)`` or ``GroupTaylorImportance``. The channel ``pruning_ratio``
    (global across layers by default) is found by bisection: the smallest ratio whose pruned model
    has ``flops <= (1 - target_flops_ratio) * flops_ref``, within ``tol`` of the target ratio
    where the search allows.

    Args:
        model: a dense model (not modified).
        example_input: one batch (FLOPs are counted on it; any batch size gives the same ratio).
        target_flops_ratio: FLOP pruning ratio to reach, ``1 - flops / flops_ref``, in (0, 1).
        importance: ``"magnitude"`` (L2 of each group's weights) or ``"taylor"`` (first order,
            needs gradients: of the cross-entropy on ``taylor_batch = (x, y)``, by default of
            ``example_input`` against the unpruned model's own predictions).
        ignored_layers: names or modules whose output channels stay (default: the classifier,
            :func:`basisprune.repro.models.classifier`).
        iterative_steps: ``pruner.step()`` calls reaching the ratio in equal steps (importance is
            re-estimated on the partly pruned model between steps; no training in between).
        global_pruning: rank all groups together (True) or prune every layer by the same ratio.
        max_pruning_ratio: no layer loses more than this fraction of its channels.
        tol: stop the bisection once the achieved FLOP pruning ratio is at most ``tol`` above the
            target (``target <= achieved <= target + tol``).
        max_iter: bisection steps.
        return_info: also return a dict with ``pruning_ratio``, ``flops``, ``flops_ref``,
            ``params``, ``params_ref``, ``flop_pruning_ratio``, ``param_pruning_ratio``,
            ``macs_tp`` (Torch-Pruning's own count, MACs per sample, incl. BN/pooling), ``iterations`` and ``seconds``.

    Returns:
        The pruned model (all parameters trainable, in the training mode ``model`` was in), or
        ``(model, info)`` with ``return_info``.

    Raises:
        ValueError: bad arguments, or the target is not reachable with ``max_pruning_ratio``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not 0.0 < float(target_flops_ratio) < 1.0:
        raise ValueError(f"target_flops_ratio (1 - flops/flops_ref) must be in (0, 1), got {target_flops_ratio}")
    _importance(importance)
    if iterative_steps < 1:
        raise ValueError(f"iterative_steps must be >= 1, got {iterative_steps}")
    if not 0.0 < max_pruning_ratio < 1.0:
        raise ValueError(f"max_pruning_ratio must be in (0, 1), got {max_pruning_ratio}")
    start = time.perf_counter()
    if importance == "taylor" and taylor_batch is None:
        with torch.no_grad():
            was = model.training
            model.eval()
            taylor_batch = (example_input, model(example_input).argmax(1))
            model.train(was)
    flops_ref = count_flops(model, example_input)
    target_flops = (1.0 - float(target_flops_ratio)) * flops_ref

    def attempt(r: float) -> tuple[nn.Module, int]:
        net = _prune_once(model, example_input, r, importance, ignored_layers, iterative_steps,
                          global_pruning, max_pruning_ratio, round_to, taylor_batch)
        return net, count_flops(net, example_input)

    lo, hi = 0.0, max_pruning_ratio
    best, best_flops, best_r = None, None, None
    net, flops = attempt(hi)
    iterations = 1
    if flops > target_flops:
        raise ValueError(
            f"Torch-Pruning cannot reach a FLOP pruning ratio of {target_flops_ratio:.3f} with "
            f"max_pruning_ratio={max_pruning_ratio} (reached {1 - flops / flops_ref:.3f}); raise "
            "max_pruning_ratio or lower the target"
        )
    best, best_flops, best_r = net, flops, hi
    while iterations < max_iter and (1 - best_flops / flops_ref) > target_flops_ratio + tol:
        mid = 0.5 * (lo + hi)
        net, flops = attempt(mid)
        iterations += 1
        if flops <= target_flops:
            hi = mid
            if flops >= best_flops:  # least pruning that still meets the target
                best, best_flops, best_r = net, flops, mid
        else:
            lo = mid
    for p in best.parameters():
        p.requires_grad_(True)
    if not return_info:
        return best
    macs, _ = tp.utils.count_ops_and_params(best, example_input)
    params, params_ref = count_params(best), count_params(model)
    info = {
        "importance": importance,
        "global_pruning": global_pruning,
        "iterative_steps": iterative_steps,
        "pruning_ratio": best_r,
        "target_flop_pruning_ratio": float(target_flops_ratio),
        "flops": best_flops,
        "flops_ref": flops_ref,
        "flop_pruning_ratio": 1.0 - best_flops / flops_ref,
        "params": params,
        "params_ref": params_ref,
        "param_pruning_ratio": 1.0 - params / params_ref,
        "macs_tp": int(macs),
        "iterations": iterations,
        "seconds": time.perf_counter() - start,
    }
    return best, info


def finetune(
    model: nn.Module,
    loaders: Mapping[str, Any],
    epochs: int,
    lr: float,
    device: str | torch.device = "cpu",
    *,
    eval_split: str = "test",
    target: float | None = None,
    stop_at_target: bool = False,
    start_seconds: float = 0.0,
    memory_format: str | None = None,
) -> list[dict[str, Any]]:
    """Train *all* weights of ``model`` (in place; Adam, BatchNorm in train mode) for up to ``epochs``
    epochs, evaluating ``eval_split`` before training and after every epoch; the weights are frozen
    and the model in eval mode afterwards.

    Uses :func:`basisprune.repro.train.train_epoch` (the one optimizer-step loop) and
    :func:`basisprune.repro.train.evaluate`.

    Args:
        loaders: ``{"train": ..., eval_split: ...}`` as from :func:`basisprune.repro.data.make_loaders`.
        target, stop_at_target: with both, stop before an epoch once the last evaluation reached
            ``target``.
        start_seconds: seconds already spent (e.g. pruning), added to every ``wall_seconds``.
        memory_format: layout of the 4-D weights while training (``train_epoch``'s).

    Returns:
        The history, one dict per evaluation: ``epoch`` (0 before training), ``train_loss``,
        ``train_accuracy``, ``accuracy_<eval_split>``, ``train_seconds``, ``eval_seconds`` and
        ``wall_seconds`` (cumulative from ``start_seconds``).
    """
    from .train import evaluate, train_epoch

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if "train" not in loaders or eval_split not in loaders:
        raise ValueError(f"loaders need 'train' and {eval_split!r} entries, got {sorted(loaders)}")
    acc = f"accuracy_{eval_split}"
    for prm in model.parameters():
        prm.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter() - start_seconds
    ev = evaluate(model, loaders[eval_split], device=device, desc=f"peer {eval_split}")
    hist = [{"epoch": 0, "train_loss": None, "train_accuracy": None, acc: ev["accuracy"],
             "train_seconds": 0.0, "eval_seconds": ev["seconds"], "wall_seconds": time.perf_counter() - t0}]
    for e in range(1, epochs + 1):
        if stop_at_target and target is not None and hist[-1][acc] >= target:
            break
        tr = train_epoch(model, loaders["train"], opt, device=device, bn_mode="train", desc=f"peer finetune {e}",
                         memory_format=memory_format)
        ev = evaluate(model, loaders[eval_split], device=device, desc=f"peer {eval_split}")
        hist.append({"epoch": e, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                     acc: ev["accuracy"], "train_seconds": tr["seconds"],
                     "eval_seconds": ev["seconds"], "wall_seconds": time.perf_counter() - t0})
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return hist
