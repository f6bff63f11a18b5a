"""Basis decomposition of convolutions (Wong, Kashyap, Moradi, arXiv 2108.02893).

A convolution with weight ``W`` (Cout, Cin/g, kh, kw) is rewritten, per group, as
``M = W.reshape(Cout_g, D) = U S V^T`` with ``D = Cin/g * kh * kw``. The layer becomes

1. a *basis conv*: ``r = min(Cout_g, D)`` filters per group, the rows of ``V^T`` (orthonormal),
   with the original stride, padding, padding mode and dilation and no bias;
2. a *BasisScalingConv*: a 1x1 conv from the bases to ``Cout`` with weight ``U S diag(scale)``
   plus the original bias. ``scale`` (one per basis, trainable) starts at 1, so the pair computes
   exactly what the original conv did.

Pruning basis ``i`` sets ``mask[i] = 0``: filter ``i`` of the basis conv and column ``i`` of the
scaling conv no longer contribute. :func:`basisprune.compact` removes them physically.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasisConv2d", "BasisLinear", "BasisLayer", "decompose", "basis_layers", "is_eligible_conv"]


def _check_module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"expected a torch.nn.Module, got {type(model).__name__}; pass a model such as "
            "torchvision.models.mobilenet_v2()"
        )
    return model


def is_eligible_conv(conv: nn.Module) -> bool:
    """True when a conv can gain from basis decomposition.

    Depthwise convs (one input channel per group, e.g. MobileNet) have rank 1 per group: there is
    nothing to prune, so they are left alone. Transposed convs are out of scope.
    """
    if not isinstance(conv, nn.Conv2d):
        return False
    cin_g = conv.in_channels // conv.groups
    cout_g = conv.out_channels // conv.groups
    return min(cin_g * conv.kernel_size[0] * conv.kernel_size[1], cout_g) > 1


class BasisLayer(nn.Module):
    """Shared state of a decomposed layer: frozen coefficients ``U S``, trainable ``scale``, ``mask``.

    Attributes:
        coef: (out_features, rank_per_group) = ``U S`` per group, stacked over groups (frozen).
        scale: (groups * rank_per_group,) trainable scaling factors, one per basis.
        mask: (groups * rank_per_group,) 0/1 buffer; 0 marks a pruned basis.
    """

    groups: int
    rank: int  # bases per group

    def _init_scaling(self, coef: torch.Tensor, bias: torch.Tensor | None, groups: int) -> None:
        self.groups = groups
        self.rank = coef.shape[1]
        self.coef = nn.Parameter(coef, requires_grad=False)
        self.scale = nn.Parameter(torch.ones(groups * self.rank, dtype=coef.dtype, device=coef.device))
        self.register_buffer("mask", torch.ones(groups * self.rank, dtype=coef.dtype, device=coef.device))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def num_bases(self) -> int:
        """Total number of bases (all groups)."""
        return self.groups * self.rank

    @property
    def kept(self) -> int:
        """Number of bases not pruned."""
        return int(self.mask.sum().item())

    def effective_scale(self) -> torch.Tensor:
        return self.scale * self.mask

    def scaled_coef(self) -> torch.Tensor:
        """``U S diag(scale * mask)`` with shape (out, rank_per_group)."""
        s = self.effective_scale().view(self.groups, 1, self.rank)
        out_g = self.coef.shape[0] // self.groups
        return (self.coef.view(self.groups, out_g, self.rank) * s).reshape(-1, self.rank)

    def basis_matrix(self) -> torch.Tensor:
        """Basis vectors as rows, shape (groups * rank, D)."""
        raise NotImplementedError

    def reconstruct(self) -> torch.Tensor:
        """Dense weight ``U diag(S * scale * mask) V^T`` in the original layer's shape."""
        raise NotImplementedError


def _svd_per_group(weight: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (coef, basis): coef (Cout, r) = U S per group stacked, basis (g*r, D) = V^T rows."""
    cout = weight.shape[0]
    w = weight.detach().reshape(groups, cout // groups, -1)
    # float64 SVD so that the decomposition error is far below float32 resolution.
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    coef = (u * s.unsqueeze(1)).reshape(cout, -1)
    basis = vh.reshape(-1, w.shape[-1])
    return coef.to(weight.dtype), basis.to(weight.dtype)


class BasisConv2d(BasisLayer):
    """A conv split into a basis conv (orthonormal filters) and a BasisScalingConv (1x1).

    The basis conv is a copy of the original module (same class), so Conv2d subclasses that pad in
    their own ``forward`` (TensorFlow "same" ports) keep their behaviour; only its weight and
    ``out_channels`` change.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"BasisConv2d needs an nn.Conv2d, got {type(conv).__name__}")
        g = conv.groups
        coef, basis = _svd_per_group(conv.weight, g)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self._init_scaling(coef, conv.bias, g)
        self.basis = copy.deepcopy(conv)
        self.basis.weight = nn.Parameter(
            basis.reshape(-1, conv.in_channels // g, *conv.kernel_size), requires_grad=False
        )
        self.basis.bias = None
        self.basis.out_channels = basis.shape[0]

    @classmethod
    def from_factors(cls, basis: nn.Conv2d, coef: torch.Tensor, bias: torch.Tensor | None) -> "BasisConv2d":
        """The layer computing ``conv1x1(basis(x), coef) + bias``, every basis kept, scales 1.

        ``basis`` (kept as it is) has ``groups * rank`` filters without bias; ``coef`` is
        ``(out_channels, rank)``. The inverse of an unfolded :func:`basisprune.compact` pair.
        """
        layer = cls.__new__(cls)  # no SVD: the factors are given
        BasisLayer.__init__(layer)
        g = basis.groups
        layer.in_channels, layer.out_channels = basis.in_channels, coef.shape[0]
        layer.kernel_size = basis.kernel_size
        layer._init_scaling(coef, bias, g)
        layer.basis = basis
        return layer

    def basis_matrix(self) -> torch.Tensor:
        return self.basis.weight.reshape(self.basis.weight.shape[0], -1)

    def reconstruct(self) -> torch.Tensor:
        c = self.scaled_coef()
        out_g = self.out_channels // self.groups
        v = self.basis_matrix().view(self.groups, self.rank, -1)
        w = torch.bmm(c.view(self.groups, out_g, self.rank), v)
        return w.reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.basis(x)
        w = self.scaled_coef().unsqueeze(-1).unsqueeze(-1)
        return F.conv2d(z, w, self.bias, groups=self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bases={self.kept}/{self.num_bases}"


class BasisLinear(BasisLayer):
    """``nn.Linear`` split the same way: ``x -> V^T x`` (bases) then ``U S diag(scale)`` + bias."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"BasisLinear needs an nn.Linear, got {type(linear).__name__}")
        coef, basis = _svd_per_group(linear.weight, 1)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_scaling(coef, linear.bias, 1)
        self.basis = nn.Linear(linear.in_features, basis.shape[0], bias=False)
        self.basis.weight = nn.Parameter(basis, requires_grad=False)

    def basis_matrix(self) -> torch.Tensor:
        return self.basis.weight

    def reconstruct(self) -> torch.Tensor:
        return self.scaled_coef() @ self.basis.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.basis(x), self.scaled_coef(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bases={self.kept}/{self.num_bases}"


def basis_layers(model: nn.Module) -> dict[str, BasisLayer]:
    """All decomposed layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BasisLayer)}


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def decompose(
    model: nn.Module,
    *,
    include_linear: bool = False,
    exclude: Iterable[str] = (),
    inplace: bool = False,
) -> nn.Module:
    """Replace every eligible ``nn.Conv2d`` (and, opt-in, ``nn.Linear``) by its basis form.

    Args:
        model: any module; it is copied unless ``inplace``.
        include_linear: also decompose ``nn.Linear`` layers.
        exclude: qualified module names to leave alone (e.g. the classifier).
        inplace: modify ``model`` itself.

    Returns:
        The decomposed model; it gives the original's outputs (to float rounding).

    Raises:
        ValueError: ``model`` is not a module, or has no layer that can be decomposed.
    """
    _check_module(model)
    exclude = set(exclude)
    unknown = exclude - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"exclude names modules the model does not have: {sorted(unknown)}")
    targets = []
    for name, m in model.named_modules():
        if name in exclude or isinstance(m, BasisLayer) or _inside_basis_layer(model, name):
            continue
        if is_eligible_conv(m) or (include_linear and isinstance(m, nn.Linear) and min(m.weight.shape) > 1):
            targets.append(name)
    if not targets:
        raise ValueError(
            "the model has no layer that basis decomposition can use: it needs an nn.Conv2d that is "
            "not depthwise (or an nn.Linear with include_linear=True) and not excluded"
        )
    out = model if inplace else copy.deepcopy(model)
    for name in targets:
        m = out.get_submodule(name)
        set_submodule(out, name, BasisConv2d(m) if isinstance(m, nn.Conv2d) else BasisLinear(m))
    return out


def _inside_basis_layer(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), BasisLayer) for i in range(1, len(parts)))
