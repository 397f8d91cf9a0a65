"""The step of ``UDA.METHOD`` (:func:`~hrda_d2.config.uda_method`): one class per method, built from the config.

=================  ====================================  =======================================================
method             step                                  models besides the student
=================  ====================================  =======================================================
``dacs``           :class:`.dacs_step.DACSStepTrainer`   EMA teacher, frozen ImageNet model (``UDA.FD.LAMBDA``)
``advseg``         :class:`.advseg_step.AdvSegStepTrainer`  discriminator (+ its Adam); with MIC: MIC's EMA teacher
``minent``         :class:`.minent_step.MinEntStepTrainer`  none; with MIC: MIC's EMA teacher
``source_only``    :class:`.supervised_step.SupervisedStepTrainer`  none (the source stream)
``target_only``    :class:`.supervised_step.SupervisedStepTrainer`  none (the labelled target stream)
``vfm_uda``        :class:`.vfm_step.VFMUDAStepTrainer`  EMA teacher; frozen DINOv2 + distill head (``UDA.VFM.FD_*``)
=================  ====================================  =======================================================
"""
from typing import Optional

import torch
from torch import nn

from ..config import MIC_WITH_OWN_TEACHER, SELF_TRAINING, VFM_UDA, uda_method
from .advseg_step import AdvSegStepTrainer
from .dacs_step import DACSStepTrainer
from .minent_step import MinEntStepTrainer
from .step_base import UDAStepTrainer
from .supervised_step import SupervisedStepTrainer
from .vfm_step import VFMUDAStepTrainer

__all__ = ["build_uda_step", "uses_discriminator", "uses_imnet_model", "uses_teacher", "uses_vfm_feature_distance"]


def uses_teacher(cfg) -> bool:
    """Whether the method trains with an EMA teacher: DACS's, or MIC's own on AdvSeg / MinEnt."""
    method = uda_method(cfg)
    return method in (SELF_TRAINING, VFM_UDA) or (method in MIC_WITH_OWN_TEACHER and bool(cfg.UDA.MIC.ENABLED))


def uses_imnet_model(cfg) -> bool:
    """Whether the method compares features with a frozen ImageNet model (DACS with ``UDA.FD.LAMBDA > 0``)."""
    return uda_method(cfg) == SELF_TRAINING and cfg.UDA.FD.LAMBDA > 0


def uses_vfm_feature_distance(cfg) -> bool:
    """Whether the method compares features with a frozen DINOv2 (VFM-UDA++: ``UDA.VFM.FD_WEIGHT_*`` > 0)."""
    return uda_method(cfg) == VFM_UDA and (cfg.UDA.VFM.FD_WEIGHT_SOURCE > 0 or cfg.UDA.VFM.FD_WEIGHT_TARGET > 0)


def uses_discriminator(cfg) -> bool:
    return uda_method(cfg) == "advseg"


def build_uda_step(cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                   teacher: Optional[nn.Module] = None, imnet_model: Optional[nn.Module] = None,
                   discriminator: Optional[nn.Module] = None,
                   discriminator_optimizer: Optional[torch.optim.Optimizer] = None,
                   fd_model: Optional[nn.Module] = None, fd_head: Optional[nn.Module] = None) -> UDAStepTrainer:
    """The step of ``cfg``'s method over the (possibly DDP-wrapped) student ``model``; the extra models as the
    method needs them (module docstring)."""
    method = uda_method(cfg)
    if method == SELF_TRAINING:
        return DACSStepTrainer(cfg, model=model, data_loader=data_loader, optimizer=optimizer, teacher=teacher,
                               imnet_model=imnet_model)
    if method == VFM_UDA:
        return VFMUDAStepTrainer(cfg, model=model, data_loader=data_loader, optimizer=optimizer, teacher=teacher,
                                 fd_model=fd_model, fd_head=fd_head)
    if method == "advseg":
        return AdvSegStepTrainer(cfg, model=model, data_loader=data_loader, optimizer=optimizer,
                                 discriminator=discriminator, discriminator_optimizer=discriminator_optimizer,
                                 teacher=teacher)
    if method == "minent":
        return MinEntStepTrainer(cfg, model=model, data_loader=data_loader, optimizer=optimizer, teacher=teacher)
    return SupervisedStepTrainer(cfg, model=model, data_loader=data_loader, optimizer=optimizer)  # *_only
