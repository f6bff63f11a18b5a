"""The ``torch.fx`` graph of a model and the exact rewrites :func:`basisprune.inference.inference_form`
starts with: tracing (submodules that cannot be traced become leaves), dropping identities, folding
batch norms into the convolution or linear layer they alone read, and the graph queries the later
passes share (:func:`module_calls`, :func:`only_input`, :func:`single_use`).
"""

from __future__ import annotations

import collections
from typing import Sequence

import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .decompose import set_submodule

__all__ = ["drop_identities", "fold_batchnorms", "module_calls", "only_input", "single_use", "trace"]

_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
               nn.FeatureAlphaDropout)
_CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def module_calls(gm: fx.GraphModule) -> collections.Counter:
    """How often the graph calls each submodule (by target name)."""
    return collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")


def only_input(node: fx.Node) -> fx.Node | None:
    """The node's single tensor input when it is called as ``module(x)``, else None."""
    if len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def single_use(gm: fx.GraphModule, calls: collections.Counter, node: fx.Node) -> bool:
    """A call_module node whose module is called nowhere else and whose output one node reads."""
    return node.op == "call_module" and calls[node.target] == 1 and len(node.users) == 1


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, also keeping instances of ``leaf_types`` as single calls."""

    def __init__(self, leaf_types: Sequence[type] = ()):  # no-argument form: GraphModule's unpickling
        super().__init__()
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)


def _failing_module(exc: BaseException, model: nn.Module) -> nn.Module | None:
    """The innermost submodule of ``model`` (not ``model`` itself) whose ``forward`` was running
    when tracing failed, from the traceback's frames."""
    inside = {id(m) for m in model.modules() if m is not model}
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        this = frame.f_locals.get("self")
        if isinstance(this, nn.Module) and id(this) in inside:
            return this
    return None


def trace(model: nn.Module) -> fx.GraphModule:
    """``model``'s fx graph. Where a submodule's forward cannot be traced (control flow on the
    shapes of traced values, as in EfficientNet-Lite's "SAME"-padding convs), the submodule's
    class is kept as one opaque call (a leaf) and tracing starts again, so the rest of the model
    is still rewritten. The leaf classes are listed in the graph module's ``leaf_types``."""
    leaves: list[type] = []
    while True:
        tracer = _LeafTracer(leaves)
        try:
            graph = tracer.trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means the same thing to the user
            culprit = _failing_module(e, model)
            if culprit is not None and type(culprit) not in leaves:
                leaves.append(type(culprit))
                continue
            raise ValueError(
                f"model: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                "inference_form needs a model whose forward has no data-dependent control flow outside its submodules"
            ) from e
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        gm.leaf_types = [f"{t.__module__}.{t.__qualname__}" for t in leaves]
        return gm


# ----------------------------------------------------------------------------------- passes
def drop_identities(gm: fx.GraphModule) -> list[str]:
    """Remove identities and eval-mode dropouts from the graph; returns their names."""
    modules = dict(gm.named_modules())
    dropped = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], _IDENTITIES):
            src = only_input(node)
            if src is not None:
                node.replace_all_uses_with(src)
                gm.graph.erase_node(node)
                dropped.append(node.target)
    return dropped


def fold_batchnorms(gm: fx.GraphModule) -> list[str]:
    """Fold every batch norm into the conv / linear layer feeding only it; returns their names."""
    modules = dict(gm.named_modules())
    calls = module_calls(gm)
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = modules[node.target]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            continue  # without running statistics a batch norm normalises by the batch even in eval
        prev = only_input(node)
        if prev is None or not single_use(gm, calls, prev):
            continue
        layer = modules[prev.target]
        if type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d:
            fused = fuse_linear_bn_eval(layer, bn)
        elif any(isinstance(layer, c) and type(bn) is b for c, b in _CONV_BN.items()):
            fused = fuse_conv_bn_eval(layer, bn)
        else:
            continue
        set_submodule(gm, prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append(node.target)
    return folded
