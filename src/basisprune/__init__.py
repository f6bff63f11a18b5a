"""basisprune: basis scaling / basis pruning, channel scaling, double pruning and ProsPr.

The core API::

    import basisprune as bp
    d = bp.decompose(model)              # exact basis form; scales in every layer's ``scale``
    c = bp.compact(d)                    # physically smaller model after pruning masks are set
    bp.measure(c, x, reference=model)    # params, FLOPs, pruning ratios
    f = bp.inference_form(c, x)          # batch norms and scales folded, linear chains merged
    bp.export(f, "model.onnx", x)        # ONNX, written once ONNX Runtime reproduces PyTorch
    pruner = bp.Pruner(d, "basis", bp.PruningRule(fraction=0.1))  # in your loop: accumulate(), step()
    masks = bp.pai.prune(net, "prospr", 0.9, batches)   # pruning at initialization (ProsPr, SNIP, ...)
    bp.bench.latency_fold_rule(d, x)     # latency helpers: fold a basis pair only where it is faster

This package is the library and never imports the reproduction harness beside it
(:mod:`basisprune.repro`: data, models, training, experiments, results, the ``basisprune`` command).
"""

from . import bench, pai
from .channel import ChannelScale, add_channel_scales, channel_scales, l1_penalty, remove_channel_scales
from .compact import compact, load_model, save_model
from .decompose import BasisConv2d, BasisLayer, BasisLinear, basis_layers, decompose
from .deploy import export
from .inference import inference_form
from .importance import ScaleMagnitude, TaylorImportance, holders
from .measure import basis_ceiling, basis_savings, count_flops, count_params, measure, output_positions
from .prune import PruningRule, apply_masks, select
from .pruner import PruneStep, Pruner

__version__ = "0.1.0"

__all__ = [
    "BasisConv2d", "BasisLayer", "BasisLinear", "ChannelScale", "PruneStep", "Pruner", "PruningRule",
    "ScaleMagnitude", "TaylorImportance", "add_channel_scales", "apply_masks", "basis_ceiling", "basis_layers",
    "basis_savings", "bench", "channel_scales", "compact", "count_flops", "count_params", "decompose", "export",
    "holders", "inference_form", "l1_penalty", "load_model", "measure", "output_positions", "pai",
    "remove_channel_scales", "save_model", "select",
]
