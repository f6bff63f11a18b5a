"""Training utilities: BatchNorm modes, freezing, precision, the one optimizer-step loop
(:func:`train_epoch`) and evaluation. Device choice and seeding are in
:mod:`basisprune.repro.devices`; checkpoints and the random streams a resumable run saves in
:mod:`basisprune.repro.checkpoints`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # honours TQDM_DISABLE=1 (read when tqdm is first imported)

from ..errors import BasisPruneError
from .devices import pick_device

__all__ = [
    "BN_MODES",
    "MEMORY_FORMATS",
    "DivergenceError",
    "PRECISIONS",
    "amp_dtype",
    "set_memory_format",
    "distillation_loss",
    "evaluate",
    "freeze",
    "make_scaler",
    "set_bn_mode",
    "train_epoch",
]

BN_MODES = ("train", "eval")

#: Values of ``amp``: ``"auto"`` (bfloat16 autocast on CUDA devices that support it, float16 with a
#: gradient scaler on older ones, float32 elsewhere), ``"fp32"`` (no autocast), ``"bf16"``, ``"fp16"``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

Callback = Callable[[nn.Module, int, Tensor, Tensor, Tensor], Any]
Regularizer = Callable[[nn.Module], Tensor]


class DivergenceError(BasisPruneError, RuntimeError):
    """Training diverged (a non-finite loss, or accuracy collapsed to chance): no result is valid."""


# --------------------------------------------------------------------------------------------
# Model modes and freezing
# --------------------------------------------------------------------------------------------
def set_bn_mode(model: nn.Module, mode: str) -> nn.Module:
    """Put ``model`` in training mode with its BatchNorm layers in ``mode``.

    ``"train"``: BatchNorm normalises with batch statistics and updates its running statistics.
    ``"eval"``: BatchNorm keeps (and uses) its running statistics, frozen — e.g. ImageNet's when
    fine-tuning a pretrained network. The affine BN parameters train in both modes unless frozen
    with :func:`freeze`. Returns ``model``.
    """
    if mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {mode!r}")
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(mode == "train")
    return model


def freeze(
    model: nn.Module,
    trainable: Iterable[nn.Parameter] | nn.Module | Callable[[str, nn.Parameter], bool],
) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on every parameter of ``model`` except the chosen ones.

    ``trainable`` is an iterable of parameters of ``model``, a submodule (its parameters), or a
    predicate ``(name, param) -> bool``. Frozen parameters also lose any stale ``.grad`` so that an
    optimizer built over all parameters leaves them alone. Returns the trainable parameters in
    ``model.named_parameters()`` order (pass them to the optimizer).
    """
    named = list(model.named_parameters())
    if isinstance(trainable, nn.Module):
        trainable = list(trainable.parameters())
    if isinstance(trainable, Tensor):
        trainable = [trainable]
    if callable(trainable):
        chosen = {id(p) for name, p in named if trainable(name, p)}
    else:
        in_model = {id(p) for _, p in named}
        chosen = set()
        for p in trainable:
            if not isinstance(p, Tensor):
                raise TypeError(f"trainable must hold parameters, got {type(p).__name__}")
            if id(p) not in in_model:
                raise ValueError(f"a trainable parameter of shape {tuple(p.shape)} is not a parameter of the model")
            chosen.add(id(p))
    kept: list[nn.Parameter] = []
    for _, p in named:
        keep = id(p) in chosen
        p.requires_grad_(keep)
        if keep:
            kept.append(p)
        else:
            p.grad = None
    return kept


# --------------------------------------------------------------------------------------------
# One epoch / evaluation
# --------------------------------------------------------------------------------------------
def amp_dtype(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that ``amp`` means on ``device`` (``None``: run in float32).

    ``None``/``True``/``"auto"``: bfloat16 on CUDA where supported (it has float32's range, so no
    gradient scaling and no overflowing steps), else float16; float32 on CPU and MPS.
    ``False``/``"fp32"``: float32. ``"bf16"``/``"fp16"``: that dtype (bf16 also on CPU; fp16 only
    on CUDA). Our choice: float16 autocast once collapsed pruning on CUDA (underflowing scale
    gradients, skipped steps read as scores), so ``auto`` prefers bfloat16.
    """
    if amp is None or amp is True:
        amp = "auto"
    if amp is False:
        amp = "fp32"
    if amp not in PRECISIONS:
        raise ValueError(f"amp (precision) must be one of {PRECISIONS} or a bool, got {amp!r}")
    if amp == "fp32" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, got {device}; use 'bf16' or 'fp32' here")
    if amp == "bf16" and device.type not in ("cuda", "cpu"):
        raise ValueError(f"amp='bf16' runs on CUDA or CPU, got {device}")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_scaler(amp: bool | str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler when ``amp`` means float16 (keep one for a whole run), else ``None``."""
    return torch.amp.GradScaler("cuda") if amp_dtype(amp, device) == torch.float16 else None


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"expected batches of (inputs, targets), got {type(batch).__name__}")


def _count_correct(outputs: Any, targets: Tensor) -> Tensor | None:
    """Number of correct top-1 predictions, or ``None`` when the task is not classification."""
    if not isinstance(outputs, Tensor) or outputs.ndim != 2:
        return None
    pred = outputs.argmax(1)
    if targets.ndim == 1 and not targets.is_floating_point():
        return (pred == targets).sum()
    if targets.shape == outputs.shape and targets.is_floating_point():  # soft labels
        return (pred == targets.argmax(1)).sum()
    return None


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _Tally:
    """Sample-weighted loss and top-1 hits over an epoch, summed on the device (no per-batch sync)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=_sum_dtype(device), device=device)
        self.correct: Tensor | None = torch.zeros((), dtype=torch.int64, device=device)
        self.n = 0

    def add(self, loss: Tensor, outputs: Any, targets: Tensor) -> None:
        size = len(targets)
        self.loss_sum += loss.detach().to(self.loss_sum.dtype) * size
        if self.correct is not None:
            hits = _count_correct(outputs, targets)
            self.correct = None if hits is None else self.correct + hits
        self.n += size

    def result(self) -> dict[str, Any]:
        return {"loss": self.loss_sum.item() / self.n,
                "accuracy": None if self.correct is None else self.correct.item() / self.n, "n": self.n}


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def set_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """Lay out ``model``'s 4-D weights and buffers as ``"channels_last"`` or ``"contiguous"`` (in place).

    The values, the parameter objects (so an optimizer's references) and the other tensors stay as
    they are. Convolutions then pick kernels for that layout: on a CPU, channels_last trains
    MobileNetV2 faster (``benchmarks/memory_format.py`` measures it); the results differ
    only by floating-point rounding.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {sorted(MEMORY_FORMATS)}, got {memory_format!r}")
    return model.to(memory_format=MEMORY_FORMATS[memory_format])


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    device: str | torch.device,
    loss_fn: Callable[[Any, Tensor], Tensor] = F.cross_entropy,
    regularizer: Regularizer | None = None,
    bn_mode: str = "eval",
    amp: bool | str | None = None,
    callback: Callback | None = None,
    desc: str = "train",
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[], Any] | None = None,
    teacher: nn.Module | None = None,
    memory_format: str | None = None,
) -> dict[str, Any]:
    """Train ``model`` for one pass over ``loader``; returns ``loss``, ``accuracy``, ``n``, ``seconds``.

    The one training loop of the project: every runner (experiments, pruning at initialization,
    the Torch-Pruning peer's fine-tuning) trains through it.

    Each step minimises ``loss_fn(model(x), y) + regularizer(model)``; with a ``teacher`` (a frozen
    module, run without gradients), ``loss_fn(model(x), y, teacher(x))`` instead (see
    :func:`distillation_loss`). ``loss`` is the
    sample-weighted mean of the data loss (without the regularizer; its per-batch mean is reported
    as ``regularizer`` when one is given); ``accuracy`` is top-1 accuracy, or ``None`` when outputs
    and targets are not a classification. BatchNorm layers run in ``bn_mode`` (see
    :func:`set_bn_mode`).

    Precision follows ``amp`` (see :func:`amp_dtype`); under float16 a gradient scaler is used: pass
    one ``scaler`` (:func:`make_scaler`) to keep its scale across epochs (the experiments do).
    ``callback(model, batch_idx, inputs, targets, loss)`` runs after ``backward()`` and before
    ``optimizer.step()``, with ``loss`` the (detached) total loss that was backpropagated; under
    float16 the gradients are already unscaled (and may be inf/nan on a step the scaler skips).
    ``after_step()`` runs after every ``optimizer.step()`` (a per-step learning-rate schedule).
    ``memory_format`` (``"channels_last"`` or ``"contiguous"``; None: leave it) lays out the
    model's 4-D weights (:func:`set_memory_format`) before the pass.
    A non-finite training loss raises :class:`DivergenceError` at the end of the epoch.
    """
    device = pick_device(device)
    dtype = amp_dtype(amp, device)
    use_scaler = dtype == torch.float16
    if use_scaler and scaler is None:
        scaler = torch.amp.GradScaler("cuda")
    model.to(device)
    if memory_format is not None:
        set_memory_format(model, memory_format)
    set_bn_mode(model, bn_mode)

    start = time.perf_counter()
    tally = _Tally(device)
    reg_sum = torch.zeros((), dtype=_sum_dtype(device), device=device)
    batches = 0
    for batch_idx, batch in enumerate(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)):
        inputs, targets = _split_batch(batch)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dtype, device):
            outputs = model(inputs)
            if teacher is None:
                loss = loss_fn(outputs, targets)
            else:
                with torch.no_grad():
                    soft_targets = teacher(inputs)
                loss = loss_fn(outputs, targets, soft_targets)
        total = loss.float()
        if regularizer is not None:
            reg = regularizer(model)
            total = total + reg
            reg_sum += reg.detach()
        if use_scaler:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if callback is not None:
            callback(model, batch_idx, inputs, targets, total.detach())
        if use_scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if after_step is not None:
            after_step()

        tally.add(loss, outputs, targets)
        batches += 1
    if batches == 0:
        raise ValueError(f"{desc}: the loader yielded no batches")

    result: dict[str, Any] = {**tally.result(), "seconds": time.perf_counter() - start}
    if regularizer is not None:
        result["regularizer"] = reg_sum.item() / batches
    if not math.isfinite(result["loss"]) or not math.isfinite(result.get("regularizer", 0.0)):
        lrs = sorted({float(g["lr"]) for g in optimizer.param_groups})
        raise DivergenceError(
            f"{desc}: training diverged (mean loss {result['loss']}, regularizer "
            f"{result.get('regularizer', 0.0)}); learning rate {lrs[0] if len(lrs) == 1 else lrs} is too high "
            "or the inputs hold non-finite values"
        )
    return result


def distillation_loss(weight: float, temperature: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(1 - weight) * CE(outputs, y) + weight * T^2 * KL(softmax(teacher / T) || softmax(outputs / T))``.

    Hinton et al.'s knowledge distillation (the ``T^2`` keeps the soft term's gradients on the
    scale of the hard one's); ``weight`` 0 is plain cross-entropy. The loss is computed in float32.
    """
    if isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight must be in [0, 1], got {weight!r}")
    if isinstance(temperature, bool) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"distillation temperature must be a finite number > 0, got {temperature!r}")

    def loss(outputs: Tensor, targets: Tensor, teacher_outputs: Tensor) -> Tensor:
        hard = F.cross_entropy(outputs.float(), targets)
        soft = F.kl_div(F.log_softmax(outputs.float() / temperature, dim=1),
                        F.log_softmax(teacher_outputs.float() / temperature, dim=1),
                        reduction="batchmean", log_target=True)
        return (1.0 - weight) * hard + weight * temperature ** 2 * soft

    return loss


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device,
    loss_fn: Callable[[Any, Tensor], Tensor] = F.cross_entropy,
    amp: bool | str | None = None,
    desc: str = "eval",
    return_correct: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (eval mode, no grad); returns ``loss``, ``accuracy``, ``n``, ``seconds``.

    ``loss`` is the sample-weighted mean of ``loss_fn``; ``accuracy`` is top-1, or ``None`` when
    not a classification. Precision follows ``amp`` (:func:`amp_dtype`). With ``return_correct``,
    ``correct`` holds one bool per sample (in loader order) for paired comparisons of two models.
    The train/eval mode of every submodule is restored afterwards.
    """
    device = pick_device(device)
    dtype = amp_dtype(amp, device)
    hits: list[Tensor] = []
    modes = [(m, m.training) for m in model.modules()]
    model.to(device)
    model.eval()
    start = time.perf_counter()
    tally = _Tally(device)
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
                inputs, targets = _split_batch(batch)
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                with _autocast(dtype, device):
                    outputs = model(inputs)
                    loss = loss_fn(outputs, targets)
                tally.add(loss, outputs, targets)
                if return_correct:
                    hits.append((outputs.argmax(1) == targets).cpu())
    finally:
        for module, training in modes:
            module.training = training
    if tally.n == 0:
        raise ValueError(f"{desc}: the loader yielded no samples")
    out = {**tally.result(), "seconds": time.perf_counter() - start}
    if return_correct:
        out["correct"] = torch.cat(hits)
    return out
