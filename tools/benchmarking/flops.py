"""FLOP counts with fvcore's ``FlopCountAnalysis`` (one multiply-add = one FLOP, fvcore's convention).

``F.scaled_dot_product_attention`` is counted as its two matrix products (:func:`attention_flop_handle`).
Detectron2's ``detectron2.utils.analysis.FlopCountAnalysis`` is not used: it drops ``aten::batch_norm`` (and
other element-wise ops) from the count, which would change the figures measured so far (README
"Performance"), and it traces ``model(*inputs)`` only, while the benchmark counts other entry points
(``forward_train`` with a fixed crop, ``generate_pseudo_label``, ``slide_inference``).
"""
from typing import Callable

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

__all__ = ["attention_flop_handle", "count_flops", "flop_analysis"]


def attention_flop_handle(inputs, outputs) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: the ``q k^T`` and ``attn v`` multiply-adds of
    ``q``: ``... x Lq x E`` and ``k``: ``... x Lk x E``."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return 2 * batch * q[-2] * k[-2] * q[-1]


class _Traced(torch.nn.Module):
    """``fn`` as the forward of a module holding ``owner``, so that ``owner``'s parameters are graph inputs of
    the trace, not constants; a dict output is reduced to one tensor."""

    def __init__(self, owner: torch.nn.Module, fn: Callable):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *args):
        out = self.fn(*args)
        if isinstance(out, dict):
            return sum(v.float().sum() for v in out.values())
        return out


def flop_analysis(owner: torch.nn.Module, fn: Callable, *inputs) -> FlopCountAnalysis:
    """fvcore's analysis of ``fn(*inputs)`` (traced on the first query, e.g. ``.total()`` under
    ``torch.no_grad()``; ``.unsupported_ops()`` then names the ops it did not count); ``owner`` is the module
    whose parameters ``fn`` uses."""
    analysis = FlopCountAnalysis(_Traced(owner, fn), inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", attention_flop_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def count_flops(owner: torch.nn.Module, fn: Callable, *inputs) -> int:
    """fvcore multiply-adds of ``fn(*inputs)``; ``owner`` is the module whose parameters ``fn`` uses."""
    analysis = flop_analysis(owner, fn, *inputs)
    with torch.no_grad():
        return int(analysis.total())
