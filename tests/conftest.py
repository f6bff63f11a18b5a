"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: on a shared CPU, contending OpenMP threads make tiny nets very slow."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def random_basis_masks(model, keep: float, seed: int) -> None:
    """Random basis masks (at least one basis kept per group) and random scales in [0.5, 1.5)."""
    import basisprune as bp

    g = torch.Generator().manual_seed(seed)
    for layer in bp.basis_layers(model).values():
        layer.mask.copy_((torch.rand(layer.num_bases, generator=g) < keep).float())
        layer.mask.view(layer.groups, layer.rank)[:, 0] = 1  # pruning keeps >= 1 basis per group
        with torch.no_grad():
            layer.scale.uniform_(0.5, 1.5, generator=g)
