"""``HRDATrainer``: Detectron2's ``DefaultTrainer`` workflow around the DACS step.

It builds the student, the EMA teacher and the frozen ImageNet model (three separate ``HRDA`` instances from
one config), the AdamW optimizer over the student only, the warm-up + poly schedule, the (source, target)
loader, and Detectron2's hooks (iteration timer with ETA, LR scheduler, periodic atomic checkpointer,
evaluation every ``TEST.EVAL_PERIOD``, console / ``metrics.json`` / TensorBoard writers) plus the DACS
debug-image hook.

Checkpoints (``AtomicDetectionCheckpointer``) hold ``model`` (student), ``teacher``, ``imnet_model``, and
``trainer`` (iteration, optimizer, LR-scheduler state, the RNG streams, AMP scaler): ``--resume`` continues
exactly where the run stopped.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import AtomicDetectionCheckpointer, load_model_weights
from ..config import SELF_TRAINING, uda_method, validate_config
from ..data.build import build_test_loader, build_train_loader
from ..data.datasets.cityscapes_classes import SYNTHIA_MIOU16_CLASSES
from ..evaluation import OfficialCityscapesSemSegEvaluator, SemSegMIoUEvaluator, SemSegPredictionWriter
from ..solver import build_lr_scheduler, build_optimizer
from ..uda import (
    FCDiscriminator,
    UDAStepTrainer,
    build_uda_step,
    uses_discriminator,
    uses_imnet_model,
    uses_teacher,
    uses_vfm_feature_distance,
)
from ..uda.feature_distance import DistillFeatureHead, FrozenDINOv2Features
from ..uda.advseg_step import build_discriminator_optimizer
from ..utils.file_io import atomic_write_text, remove_stale_partial_files
from ..utils.rng import preserve_rng_states
from .hooks import DebugImageHook, PeriodicCheckpointer
from .preemption import PreemptionHook, ignore_signals_in_loader_workers, parse_signals

__all__ = ["HRDATrainer", "broadcast_from_main_process"]

logger = logging.getLogger(__name__)


def broadcast_from_main_process(module: torch.nn.Module) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank 0's (no-op without DDP)."""
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


class HRDATrainer(DefaultTrainer):
    """Trainer for every config in ``configs/``: the step of ``UDA.METHOD`` (DACS, AdvSeg, MinEnt, source-only,
    target-only; :func:`hrda_d2.uda.build_uda_step`) and the models it needs."""

    def __init__(self, cfg):
        """Mirrors ``DefaultTrainer.__init__`` of Detectron2 0.7 (upstream commit a59f0563), which cannot be reused
        through ``super()``: it hard-codes one model, ``SimpleTrainer``/``AMPTrainer`` as the step and
        ``create_ddp_model``'s CUDA device ids. Differences: three models (student, EMA teacher, frozen ImageNet
        model; AdvSeg: a discriminator), the step of the method (``build_uda_step``), CPU (gloo) DDP without device
        ids, and the atomic checkpointer holding the teacher, the ImageNet model and the discriminator."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        validate_config(cfg, "HRDATrainer config")
        self.cfg = cfg
        student = self.build_model(cfg)
        self.teacher = self.build_model(cfg, log=False) if uses_teacher(cfg) else None
        self.imnet_model = self.build_model(cfg, log=False) if uses_imnet_model(cfg) else None
        self.discriminator = self.build_discriminator(cfg, student.device) if uses_discriminator(cfg) else None
        self.fd_model, self.fd_head = (self.build_vfm_feature_distance(cfg, student) if uses_vfm_feature_distance(cfg)
                                       else (None, None))
        optimizer = self.build_optimizer(cfg, student, self.discriminator, self.fd_head)
        data_loader = self.build_train_loader(cfg)
        # CPU (gloo) DDP takes no device_ids; Detectron2's default ([local rank]) is for CUDA modules only
        device_ids = [comm.get_local_rank()] if student.device.type == "cuda" else None
        ddp_student = create_ddp_model(student, broadcast_buffers=False, device_ids=device_ids)
        extra = {}
        if self.discriminator is not None:
            extra = {"discriminator": create_ddp_model(self.discriminator, broadcast_buffers=False,
                                                       device_ids=device_ids),
                     "discriminator_optimizer": build_discriminator_optimizer(cfg, self.discriminator)}
        if self.fd_model is not None:
            extra.update(fd_model=self.fd_model, fd_head=self.fd_head)
        self._trainer = build_uda_step(cfg, ddp_student, data_loader, optimizer, teacher=self.teacher,
                                       imnet_model=self.imnet_model, **extra)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = {"trainer": weakref.proxy(self)}
        for name in ("teacher", "imnet_model", "discriminator", "fd_model", "fd_head"):
            if getattr(self, name) is not None:
                checkpointables[name] = getattr(self, name)
        self.checkpointer = AtomicDetectionCheckpointer(student, cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------------------------------------------
    @property
    def uda_step(self) -> UDAStepTrainer:
        """The step that runs each iteration, the method's (Detectron2 keeps it as ``_trainer``)."""
        return self._trainer

    @property
    def student(self) -> torch.nn.Module:
        return self._trainer.student

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume everything from the last checkpoint in ``OUTPUT_DIR`` (student, teacher, ImageNet model,
        optimizer, scheduler, iteration, RNG streams, data position), or start from ``MODEL.WEIGHTS``: the
        student and the ImageNet model load it (the teacher is a copy of the student at iteration 0)."""
        if comm.is_main_process() and self.cfg.OUTPUT_DIR and os.path.isdir(self.cfg.OUTPUT_DIR):
            remove_stale_partial_files(self.cfg.OUTPUT_DIR)
        path = self.checkpointer.resume_file() if resume else ""
        if path:
            self.checkpointer.load(path)
            self.start_iter = self.iter + 1
            self._trainer.reset_data_loader(lambda: self.build_train_loader(self.cfg, start_iter=self.start_iter))
            logger.info(f"Resumed from {path} at iteration {self.start_iter}")
            if self.start_iter >= self.max_iter:
                logger.warning(
                    f"--resume: {path} is at iteration {self.start_iter} >= SOLVER.MAX_ITER {self.max_iter}: this "
                    f"run is complete and trains nothing more (only the final evaluation runs). Raise "
                    f"SOLVER.MAX_ITER to train longer, or choose a new OUTPUT_DIR for a new run.")
            return
        if resume:  # Detectron2's --resume: continue if possible, else start (the same command on every requeue)
            logger.warning(f"--resume: no checkpoint in OUTPUT_DIR {self.cfg.OUTPUT_DIR} (no last_checkpoint "
                           f"file): starting from iteration 0" + (f" with MODEL.WEIGHTS {self.cfg.MODEL.WEIGHTS}"
                                                                 if self.cfg.MODEL.WEIGHTS else ""))
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            self.checkpointer.load(weights, checkpointables=[])  # tolerant (new head); Detectron2 logs the keys
            if self.imnet_model is not None:  # same file, same keys: not reported twice
                load_model_weights(self.imnet_model, weights, strict=False, log_incompatible=False)
        else:
            logger.warning("MODEL.WEIGHTS is empty: training starts from random weights (no ImageNet backbone)")
        if self.fd_model is not None:
            self.load_vfm_fd_weights()
        if self.imnet_model is not None:
            # every rank must compare against the same frozen model (ranks seed differently, so randomly
            # initialised parts would differ); the student is synchronised by DDP, the teacher copies it
            broadcast_from_main_process(self.imnet_model)

    def build_hooks(self):
        """Detectron2's hooks, with the periodic checkpointer (:class:`~.hooks.PeriodicCheckpointer`: period 0 =
        ``model_final`` only) on EVERY rank (Detectron2 registers it on the main process only): saving gathers each
        rank's RNG streams, a collective; only rank 0 writes the file (and deletes old ones, CHECKPOINT_MAX_KEEP).
        Plus the DACS debug-image hook (main process), before the writers so its panels reach TensorBoard in the
        same iteration."""
        ret = super().build_hooks()
        keep = self.cfg.SOLVER.CHECKPOINT_MAX_KEEP
        checkpointer = PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD,
                                            max_to_keep=keep if keep > 0 and comm.is_main_process() else None)
        ours = [i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicCheckpointer)]  # Detectron2's: main only
        if ours:
            ret[ours[0]] = checkpointer
        else:
            ret.insert(next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)), checkpointer)
        if uda_method(self.cfg) == SELF_TRAINING and self.cfg.UDA.DEBUG_IMG_INTERVAL > 0 and comm.is_main_process():
            colors = MetadataCatalog.get(self.cfg.DATASETS.SOURCE[0]).get("stuff_colors")
            position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter))
            ret.insert(position, DebugImageHook(self.cfg.OUTPUT_DIR, colors))
        if self.cfg.SOLVER.PREEMPTION_SIGNALS:  # last: it saves the state the other hooks leave
            ret.append(PreemptionHook.from_config(self.cfg))
        return ret

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg, log: bool = True):
        """Detectron2's ``build_model``; with ``log``, one summary line, and the architecture (hundreds of lines)
        written to ``OUTPUT_DIR/model.txt`` by the main process instead of the console."""
        model = build_model(cfg)
        if log:
            num_params = sum(p.numel() for p in model.parameters())
            where = ""
            if cfg.OUTPUT_DIR and comm.is_main_process():
                os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
                where = os.path.join(cfg.OUTPUT_DIR, "model.txt")
                atomic_write_text(where, f"{model}\n")
                where = f"; architecture written to {where}"
            logger.info(f"Model: {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.MIT.VARIANT}, "
                        f"{num_params / 1e6:.2f} M parameters){where}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model, discriminator: Optional[torch.nn.Module] = None,
                        fd_head: Optional[torch.nn.Module] = None):
        """The optimizer over the student and, for AdvSeg, the discriminator (the original's optimizer covers the
        whole AdvSeg module, docs/method.md §18.4); for VFM-UDA++, the distill head (§22.4)."""
        extra = {name: m for name, m in (("discriminator", discriminator), ("fd_head", fd_head)) if m is not None}
        return build_optimizer(cfg, model, extra or None)

    @classmethod
    def build_vfm_feature_distance(cls, cfg, student: torch.nn.Module):
        """VFM-UDA++'s frozen DINOv2 ``UDA.VFM.FD_MODEL`` (eval mode, no gradient; official DINOv2 weights
        ``UDA.VFM.FD_WEIGHTS``, read by ``DINOv2ViT``; a resume restores it from the checkpoint) and the trained
        distill head from the student's map ``UDA.VFM.FD_FEATURE`` to its width, on the student's device
        (docs/method.md §22.4)."""
        from ..modeling.backbone.dinov2_vit import DINOv2ViT

        vfm = cfg.UDA.VFM
        if not vfm.FD_WEIGHTS:
            logger.warning("UDA.VFM.FD_WEIGHTS is empty: the frozen DINOv2 of the feature distance has random weights")
        encoder = DINOv2ViT(vfm.FD_MODEL, weights=vfm.FD_WEIGHTS)
        fd_model = FrozenDINOv2Features(encoder, vfm.FD_SIZE).to(student.device).eval()
        shapes = student.backbone.output_shape()
        if vfm.FD_FEATURE not in shapes:
            raise ValueError(f"UDA.VFM.FD_FEATURE={vfm.FD_FEATURE!r} is not an output of the backbone "
                             f"{cfg.MODEL.BACKBONE.NAME} ({sorted(shapes)}); use one of them")
        fd_head = DistillFeatureHead(shapes[vfm.FD_FEATURE].channels, fd_model.embed_dim).to(student.device)
        broadcast_from_main_process(fd_head)
        return fd_model, fd_head

    def load_vfm_fd_weights(self) -> None:
        """Every rank compares against rank 0's frozen DINOv2 (its weights ``UDA.VFM.FD_WEIGHTS`` are read when it is
        built; a resume restores it from the checkpoint instead)."""
        broadcast_from_main_process(self.fd_model)

    @classmethod
    def build_discriminator(cls, cfg, device: torch.device) -> torch.nn.Module:
        """AdvSeg's discriminator on the softmax of ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` classes, on the student's
        device; every rank starts from rank 0's weights."""
        discriminator = FCDiscriminator(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                                        cfg.UDA.ADVSEG.DISCRIMINATOR_CHANNELS).to(device)
        broadcast_from_main_process(discriminator)
        return discriminator

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """The (source, target) pairs; the loader workers ignore ``SOLVER.PREEMPTION_SIGNALS``."""
        pairs = build_train_loader(cfg, start_iter=start_iter)
        signals = parse_signals(cfg.SOLVER.PREEMPTION_SIGNALS)
        for loader in (pairs.source_loader, pairs.target_loader):
            if loader is not None:
                ignore_signals_in_loader_workers(loader, signals)
        return pairs

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_test_loader(cfg, dataset_name)
        ignore_signals_in_loader_workers(loader, parse_signals(cfg.SOLVER.PREEMPTION_SIGNALS))
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder: Optional[str] = None):
        """mIoU with the original's semantics (+ mIoU16 for Synthia-source configs); the official Cityscapes
        evaluation for Detectron2's Cityscapes splits when ``TEST.CITYSCAPES_OFFICIAL_EVAL``; prediction PNGs
        (colour + Cityscapes label ids / train ids) when ``TEST.SAVE_PREDICTIONS``."""
        meta = MetadataCatalog.get(dataset_name)
        subsets = {"mIoU16": SYNTHIA_MIOU16_CLASSES} if cfg.TEST.REPORT_MIOU16 else None
        evaluators = [SemSegMIoUEvaluator(dataset_name, distributed=True, subsets=subsets)]
        is_cityscapes = meta.get("evaluator_type") == "cityscapes_sem_seg"
        if is_cityscapes and cfg.TEST.CITYSCAPES_OFFICIAL_EVAL:
            evaluators.append(OfficialCityscapesSemSegEvaluator(dataset_name))
        if cfg.TEST.SAVE_PREDICTIONS:
            folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            evaluators.append(SemSegPredictionWriter(folder, meta.stuff_colors, to_label_id=is_cityscapes))
        return DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """``DefaultTrainer.test`` on every ``DATASETS.TEST`` split, without disturbing the training RNG streams."""
        with preserve_rng_states():
            return super().test(cfg, model, evaluators)
