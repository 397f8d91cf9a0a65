"""Mean-teacher helpers of DACS: the EMA weight update and the teacher's pseudo-label mode.

Source: docs/method.md §7.2 steps 1 and 6, §15 Q3, §15 Q11.
"""

import torch
from timm.layers import DropPath, PatchDropout
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["ema_alpha", "ema_update_", "set_pseudo_label_mode"]



def ema_alpha(iteration: int, alpha: float) -> float:
    """EMA coefficient of DACS at 0-based ``iteration``: ``min(1 - 1 / (iteration + 1), alpha)``.

    Iteration 0 gives 0 (the teacher becomes a copy of the student), iteration 1 gives 0.5, iteration 2
    gives 2/3, ...; from ``iteration = 1 / (1 - alpha) - 1`` on (999 for alpha 0.999) it stays at ``alpha``.
    """
    if iteration < 0:
        raise ValueError(f"ema_alpha: iteration must be >= 0, got {iteration}")
    return min(1 - 1 / (iteration + 1), alpha)


def _check_same_parameters(teacher: nn.Module, student: nn.Module) -> None:
    """Raise ``ValueError`` unless both modules list parameters with equal names and shapes, in order."""
    teacher_params = list(teacher.named_parameters())
    student_params = list(student.named_parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"EMA update: the teacher has {len(teacher_params)} parameters but the student has "
            f"{len(student_params)}; build both from the same config"
        )
    for (t_name, t_param), (s_name, s_param) in zip(teacher_params, student_params):
        if t_name != s_name or t_param.shape != s_param.shape:
            raise ValueError(
                f"EMA update: teacher parameter {t_name} {tuple(t_param.shape)} does not match student "
                f"parameter {s_name} {tuple(s_param.shape)}; build both from the same config"
            )


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, iteration: int, alpha: float) -> float:
    """Update the teacher's parameters in place from the student's (DACS step 1).

    At ``iteration == 0`` every student parameter is copied into the teacher. Otherwise, with
    ``alpha_t = ema_alpha(iteration, alpha)``, every teacher parameter becomes
    ``alpha_t * teacher + (1 - alpha_t) * student``. Parameters are paired in ``parameters()`` order (names
    and shapes are checked to agree). Buffers (BatchNorm running statistics, ``num_batches_tracked``) are
    neither copied nor averaged. Every teacher parameter is left with ``requires_grad == False``.

    Called at the start of iteration ``iteration`` (0-based), i.e. after ``iteration`` optimizer steps.

    Returns:
        ``alpha_t`` used (0.0 at iteration 0), for logging.
    """
    _check_same_parameters(teacher, student)
    alpha_t = ema_alpha(iteration, alpha)
    for teacher_param, student_param in zip(teacher.parameters(), student.parameters()):
        teacher_param.requires_grad_(False)
        if iteration == 0:
            teacher_param.copy_(student_param)
        else:
            # the original's expression (``DACS._update_ema``), term by term (not a fused lerp), for equal rounding
            teacher_param.copy_(alpha_t * teacher_param + (1 - alpha_t) * student_param)
    return alpha_t


def set_pseudo_label_mode(teacher: nn.Module) -> int:
    """Put the teacher in the mode DACS uses to predict pseudo-labels (docs/method.md §7.2 step 6, §15 Q3).

    ``teacher.train()`` is called, then every dropout module (``torch.nn.modules.dropout._DropoutNd``:
    Dropout, Dropout2d, ...), every timm ``DropPath`` and timm ``PatchDropout`` (the VFM-UDA originals' teacher mode;
    no MiT / ResNet / paper config has one) is switched to eval mode. Everything else stays in
    train mode: BatchNorm normalises with the statistics of the current batch and updates its running
    statistics. The mode persists until the caller changes it; nothing is saved or restored.

    Returns:
        The number of dropout/drop-path modules switched to eval mode.
    """
    teacher.train()
    num_switched = 0
    for module in teacher.modules():
        if isinstance(module, (_DropoutNd, DropPath, PatchDropout)):
            module.eval()
            num_switched += 1
    return num_switched
