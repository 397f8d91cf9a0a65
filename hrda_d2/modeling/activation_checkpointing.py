"""Activation checkpointing of training forwards (MiT blocks, DAFormer heads) without changing the numerics.

``checkpointed_call(fn, *args, module=m)`` runs ``fn(*args)`` through ``torch.utils.checkpoint`` (non-reentrant,
RNG state preserved): the activations inside ``fn`` are not kept for the backward pass but recomputed there,
with the same dropout / drop-path masks (the CPU and CUDA RNG states of the forward are restored for the
recomputation). Gradients therefore equal those of the plain call.

BatchNorm in train mode would update its running statistics a second time during the recomputation; the
recomputation runs with every BatchNorm of ``module`` frozen (``momentum`` 0 and ``num_batches_tracked``
restored afterwards), so the running statistics, too, equal those of the plain call.
"""
import contextlib
from typing import Callable, Iterator, List, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed_call", "frozen_batch_norm_statistics", "should_checkpoint"]


def should_checkpoint(enabled: bool, module: nn.Module) -> bool:
    """Checkpoint only where a backward pass follows: enabled, module in train mode and autograd recording
    (so the teacher's pseudo-labels under ``no_grad`` and inference are never affected)."""
    return enabled and module.training and torch.is_grad_enabled()


@contextlib.contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, train-mode BatchNorm layers of ``module`` normalise with batch statistics as usual
    but leave ``running_mean`` / ``running_var`` / ``num_batches_tracked`` unchanged."""
    saved: List[Tuple[nn.Module, object, torch.Tensor]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            tracked = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, tracked))
            m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def checkpointed_call(fn: Callable, *args, module: nn.Module):
    """``fn(*args)`` with activation checkpointing; ``module`` owns the layers ``fn`` runs (for BatchNorm)."""
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        preserve_rng_state=True,
        context_fn=lambda: (contextlib.nullcontext(), frozen_batch_norm_statistics(module)),
    )
