"""The model zoo (benchmarks/zoo.py): every stage of the pipeline equals the masked model, or is
refused in one line. Fast: tiny models with grouped convs, a shuffle and a ConvNeXt block. Slow:
every torchvision classification model, as the committed table (data/benchmarks/zoo.json)."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from test_channel import CNBlock, Shuffle, grouped_cnn

_spec = importlib.util.spec_from_file_location("zoo", Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py")
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)


def _passed(stages):
    return {k: v["status"] for k, v in stages.items()} == {k: "passed" for k in zoo.STAGES}


def test_grouped_cnn_passes_every_stage(one_thread):
    """A CNN with a grouped conv: decompose, basis, channel, double pruning and inference form all
    equal the masked model."""
    torch.manual_seed(0)
    stages = zoo.check_model(grouped_cnn(), torch.randn(1, 3, 16, 16), ["10"])
    assert _passed(stages), stages


def test_convnext_block_passes_every_stage_with_its_stream_unscaled(one_thread):
    """A ConvNeXt-like net: its channels-last Linear layers are decomposed exactly and channel
    pruned; the LayerNorm'd residual stream is recorded as unscaled, not refused."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), CNBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 5))
    stages = zoo.check_model(m, torch.randn(1, 3, 8, 8), ["4"])
    assert _passed(stages), stages
    assert stages["channel"]["unscaled_groups"] == 1 and "LayerNorm" in stages["channel"]["example"][1]


def test_shuffle_block_leaves_the_shuffled_group_unscaled_and_passes(one_thread):
    """A channel shuffle: the group whose channels it splits is left unscaled, named with the
    reshape; the group after it is scaled, and every stage equals the masked model."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), Shuffle(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    stages = zoo.check_model(m, torch.randn(1, 3, 8, 8), ["7"])
    assert _passed(stages), stages
    root, why = stages["channel"]["example"]
    assert root == "0" and "splits the channel dimension" in why


def test_vision_transformers_are_skipped_with_a_reason():
    """Models that are not CNNs are skipped, each with the reason, before any is built."""
    assert zoo.run_model("vit_b_16")["status"] == "skipped"
    assert "not a CNN" in zoo.run_model("swin_t")["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_zoo_model_passes_or_is_refused_in_one_line(name, one_thread):
    """No torchvision classification model fails: every stage equals the masked model or is refused
    with the library's one-line error (or the model is skipped with a reason)."""
    rec = zoo.run_model(name, zoo.MAX_PARAMS)
    assert rec["status"] in ("passed", "refused", "skipped"), rec
    for stage in rec.get("stages", {}).values():
        assert stage["status"] != "refused" or "\n" not in stage["line"]
