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
from collections import OrderedDict
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.evaluation import print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.build import build_source_only_train_loader, build_test_loader, build_uda_train_loader
from ..data.datasets.cityscapes_classes import SYNTHIA_MIOU16_CLASSES
from ..evaluation import OfficialCityscapesSemSegEvaluator, SemSegMIoUEvaluator, SemSegPredictionWriter
from ..solver import build_lr_scheduler, build_optimizer
from .checkpointer import AtomicDetectionCheckpointer, remove_stale_partial_files
from .dacs_trainer import DACSTrainer, amp_dtype_from_config
from .hooks import DebugImageHook
from .rng import preserve_rng_states
from .strong_augmentation import StrongAugmentation

__all__ = ["HRDATrainer", "SourceOnlyPairs", "broadcast_from_main_process", "load_model_weights"]

logger = logging.getLogger(__name__)


class SourceOnlyPairs:
    """Adapts a source loader to the ``(source_batch, None)`` pairs the DACS step reads."""

    def __init__(self, source_loader):
        self.source_loader = source_loader

    def __iter__(self):
        for batch in self.source_loader:
            yield batch, None


def load_model_weights(model: torch.nn.Module, path: str, source: str = "student") -> None:
    """Load ``path`` into ``model``: the student (``"model"`` entry) or the EMA teacher (``"teacher"`` entry of a
    training checkpoint written by this project). Missing/unexpected keys are reported by Detectron2."""
    if source not in ("student", "teacher"):
        raise ValueError(f"TEST.WEIGHTS_SOURCE must be 'student' or 'teacher', got '{source}'")
    checkpointer = DetectionCheckpointer(model)
    if source == "student":
        checkpointer.load(path)
        return
    # Detectron2's _load_file may only run inside load(); _torch_load is its plain torch.load (weights_only)
    data = checkpointer._torch_load(path)
    if "teacher" not in data:
        raise KeyError(
            f"'{path}' holds no 'teacher' entry (keys: {sorted(data)}). Use a training checkpoint of this "
            f"project, or convert an original checkpoint with `tools/convert_mmseg_checkpoint.py IN OUT --teacher` "
            f"and evaluate it as the student.")
    checkpointer._load_model({"model": data["teacher"], "__author__": "hrda_d2"})


def broadcast_from_main_process(module: torch.nn.Module) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank 0's (no-op without DDP)."""
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


class HRDATrainer(DefaultTrainer):
    """Trainer for every config in ``configs/`` (DACS, or source-only with ``UDA.ENABLED False``)."""

    def __init__(self, cfg):  # noqa: D401 - same construction as DefaultTrainer, with the DACS step
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        uda = cfg.UDA.ENABLED
        if uda and cfg.UDA.MIX != "class":
            raise ValueError(f"UDA.MIX={cfg.UDA.MIX!r} is not supported; DACS mixes with ClassMix: use 'class'")
        student = self.build_model(cfg)
        teacher = self.build_model(cfg, log=False) if uda else None
        imnet_model = self.build_model(cfg, log=False) if uda and cfg.UDA.FD.LAMBDA > 0 else None
        for frozen in (teacher, imnet_model):
            if frozen is not None:
                frozen.requires_grad_(False)
        optimizer = self.build_optimizer(cfg, student)
        data_loader = self.build_train_loader(cfg)
        # CPU (gloo) DDP takes no device_ids; Detectron2's default ([local rank]) is for CUDA modules only
        device_ids = [comm.get_local_rank()] if student.device.type == "cuda" else None
        ddp_student = create_ddp_model(student, broadcast_buffers=False, device_ids=device_ids)
        amp_dtype = amp_dtype_from_config(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE)
        grad_scaler = torch.amp.GradScaler(student.device.type) if amp_dtype == torch.float16 else None
        self._trainer = DACSTrainer(
            ddp_student, data_loader, optimizer,
            teacher=teacher,
            imnet_model=imnet_model,
            strong_augmentation=StrongAugmentation(cfg) if uda else None,
            alpha=cfg.UDA.ALPHA,
            pseudo_threshold=cfg.UDA.PSEUDO_THRESHOLD,
            pseudo_ignore_top=cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP,
            pseudo_ignore_bottom=cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM,
            fd_lambda=cfg.UDA.FD.LAMBDA,
            fd_classes=cfg.UDA.FD.CLASSES,
            fd_min_ratio=cfg.UDA.FD.SCALE_MIN_RATIO,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            amp_dtype=amp_dtype,
            grad_scaler=grad_scaler,
            debug_interval=cfg.UDA.DEBUG_IMG_INTERVAL if uda else 0,
            metrics_period=cfg.SOLVER.METRICS_PERIOD,
            max_iter=cfg.SOLVER.MAX_ITER,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = {"trainer": weakref.proxy(self)}
        if teacher is not None:
            checkpointables["teacher"] = teacher
        if imnet_model is not None:
            checkpointables["imnet_model"] = imnet_model
        self.checkpointer = AtomicDetectionCheckpointer(student, cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> Optional[torch.nn.Module]:
        return self._trainer.teacher

    @property
    def imnet_model(self) -> Optional[torch.nn.Module]:
        return self._trainer.imnet_model

    @property
    def student(self) -> torch.nn.Module:
        return self._trainer.student

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume everything from the last checkpoint in ``OUTPUT_DIR`` (student, teacher, ImageNet model,
        optimizer, scheduler, iteration, RNG streams, data position), or start from ``MODEL.WEIGHTS``: the
        student and the ImageNet model load it (the teacher is a copy of the student at iteration 0)."""
        if comm.is_main_process() and self.cfg.OUTPUT_DIR and os.path.isdir(self.cfg.OUTPUT_DIR):
            remove_stale_partial_files(self.cfg.OUTPUT_DIR)
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=True)
            self.start_iter = self.iter + 1
            self._trainer.reset_data_loader(lambda: self.build_train_loader(self.cfg, start_iter=self.start_iter))
            logger.info(f"Resumed from {self.checkpointer.get_checkpoint_file()} at iteration {self.start_iter}")
            return
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            self.checkpointer.load(weights, checkpointables=[])
            if self.imnet_model is not None:
                DetectionCheckpointer(self.imnet_model).load(weights)
        else:
            logger.warning("MODEL.WEIGHTS is empty: training starts from random weights (no ImageNet backbone)")
        if self.imnet_model is not None:
            # every rank must compare against the same frozen model (ranks seed differently, so randomly
            # initialised parts would differ); the student is synchronised by DDP, the teacher copies it
            broadcast_from_main_process(self.imnet_model)

    def build_hooks(self):
        """Detectron2's hooks, with the periodic checkpointer on EVERY rank (Detectron2 registers it on the main
        process only): saving gathers each rank's RNG streams, a collective; only rank 0 writes the file.
        Plus the DACS debug-image hook (main process)."""
        ret = super().build_hooks()
        if not comm.is_main_process():
            position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
            ret.insert(position, hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        if self.cfg.UDA.ENABLED and self.cfg.UDA.DEBUG_IMG_INTERVAL > 0 and comm.is_main_process():
            colors = MetadataCatalog.get(self.cfg.DATASETS.SOURCE[0]).get("stuff_colors")
            debug = DebugImageHook(self.cfg.UDA.DEBUG_IMG_INTERVAL, self.cfg.OUTPUT_DIR, colors)
            ret.insert(2, debug)  # after the LR scheduler, before the checkpointer
        return ret

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg, log: bool = True):
        model = build_model(cfg)
        if log:
            logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        if cfg.UDA.ENABLED:
            return build_uda_train_loader(cfg, start_iter=start_iter)
        return SourceOnlyPairs(build_source_only_train_loader(cfg, start_iter=start_iter))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

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
        """Evaluate ``model`` on every ``DATASETS.TEST`` split (without disturbing the training RNG streams)."""
        results = OrderedDict()
        with preserve_rng_states():
            for dataset_name in cfg.DATASETS.TEST:
                data_loader = cls.build_test_loader(cfg, dataset_name)
                evaluator = cls.build_evaluator(cfg, dataset_name)
                results[dataset_name] = inference_on_dataset(model, data_loader, evaluator)
                if comm.is_main_process():
                    logger.info(f"Evaluation results for {dataset_name} in csv format:")
                    print_csv_format(results[dataset_name])
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results
