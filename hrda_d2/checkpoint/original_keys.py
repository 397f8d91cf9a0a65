"""The original's settings -> this project's config keys, once: the table that the converter's config translation
(:mod:`.mmseg_config`, a checkpoint's stored mmseg config) and the experiment generator (:mod:`hrda_d2.experiments`,
the original generator's runs) both read.

A setting is named by its path in the original's resolved mmseg config (``uda.mask_mode``,
``model.decode_head.hr_loss_weight``); :data:`ORIGINAL_KEYS` gives the key that does its job here (the behaviour of
each key: docs/method.md; the experiment mapping: docs/experiments.md §3). Choices whose values differ by name
(the adaptation method, the optimizer) have their own tables.
"""
from typing import Dict, Optional

__all__ = ["ORIGINAL_KEYS", "ORIGINAL_OPTIMIZERS", "ORIGINAL_UDA_METHODS", "original_key", "uda_method_key"]

ORIGINAL_KEYS: Dict[str, str] = {
    # the segmentor (HRDAEncoderDecoder) and its head (HRDAHead)
    "model.scales": "MODEL.HRDA.SCALES",
    "model.hr_crop_size": "MODEL.HRDA.HR_CROP_SIZE",
    "model.crop_coord_divisible": "MODEL.HRDA.CROP_COORD_DIVISIBLE",
    "model.feature_scale": "MODEL.HRDA.FEATURE_SCALE",
    "model.hr_slide_inference": "MODEL.HRDA.HR_SLIDE_INFERENCE",
    "model.hr_slide_overlapping": "MODEL.HRDA.HR_SLIDE_OVERLAPPING",
    "model.blur_hr_crop": "MODEL.HRDA.BLUR_HR_CROP",
    "model.decode_head.attention_classwise": "MODEL.HRDA.ATTENTION_CLASSWISE",
    "model.decode_head.attention_embed_dim": "MODEL.HRDA.ATTENTION_EMBED_DIM",
    "model.decode_head.hr_loss_weight": "MODEL.HRDA.HR_LOSS_WEIGHT",
    "model.decode_head.lr_loss_weight": "MODEL.HRDA.LR_LOSS_WEIGHT",
    "model.decode_head.fixed_attention": "MODEL.HRDA.FIXED_ATTENTION",
    # the encoder and the single-scale head (DAFormerHead, DLV2Head)
    "model.backbone.drop_path_rate": "MODEL.MIT.DROP_PATH_RATE",
    "model.backbone.depth": "MODEL.RESNETS.DEPTH",
    "model.decode_head.num_classes": "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    "model.decode_head.ignore_index": "MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
    "model.decode_head.dropout_ratio": "MODEL.SEM_SEG_HEAD.DROPOUT",
    "model.decode_head.norm_cfg.type": "MODEL.SEM_SEG_HEAD.NORM",
    "model.decode_head.loss_decode.loss_weight": "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",
    "model.decode_head.decoder_params.fusion_cfg.dilations": "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS",
    "model.decode_head.dilations": "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS",
    "model.test_cfg.mode": "TEST.MODE",
    "model.test_cfg.crop_size": "TEST.SLIDE.CROP_SIZE",
    "model.test_cfg.stride": "TEST.SLIDE.STRIDE",
    "model.test_cfg.batched_slide": "TEST.SLIDE.BATCHED",
    # data
    "data.train.source.pipeline.Resize.img_scale": "INPUT.SOURCE.SCALE",
    "data.train.source.pipeline.RandomCrop.crop_size": "INPUT.SOURCE.CROP_SIZE",
    "data.train.source.pipeline.RandomCrop.cat_max_ratio": "INPUT.SOURCE.CAT_MAX_RATIO",
    "data.train.source.pipeline.RandomFlip.prob": "INPUT.SOURCE.FLIP_PROB",
    "data.train.source.pipeline.PhotoMetricDistortion": "INPUT.SOURCE.PHOTOMETRIC_DISTORTION",
    "data.train.target.pipeline.Resize.img_scale": "INPUT.TARGET.SCALE",
    "data.train.target.pipeline.RandomCrop.crop_size": "INPUT.TARGET.CROP_SIZE",
    "data.train.target.pipeline.RandomCrop.cat_max_ratio": "INPUT.TARGET.CAT_MAX_RATIO",
    "data.train.target.pipeline.RandomFlip.prob": "INPUT.TARGET.FLIP_PROB",
    "data.train.target.pipeline.PhotoMetricDistortion": "INPUT.TARGET.PHOTOMETRIC_DISTORTION",
    "data.test.pipeline.MultiScaleFlipAug.img_scale": "INPUT.TEST.SCALE",
    "data.train.rare_class_sampling.class_temp": "DATASETS.RCS.CLASS_TEMP",
    "data.train.rare_class_sampling.min_pixels": "DATASETS.RCS.MIN_PIXELS",
    "data.train.rare_class_sampling.min_crop_ratio": "DATASETS.RCS.MIN_CROP_RATIO",
    "data.train.target.crop_pseudo_margins": "INPUT.TARGET.PSEUDO_MARGINS",
    "data.train.sync_crop_size": "INPUT.SYNC_CROP_SIZE",
    # the adaptation method (DACS fields) and MIC
    "uda.type": "UDA.METHOD",
    "uda.alpha": "UDA.ALPHA",
    "uda.pseudo_threshold": "UDA.PSEUDO_THRESHOLD",
    "uda.pseudo_weight_ignore_top": "UDA.PSEUDO_WEIGHT_IGNORE_TOP",
    "uda.pseudo_weight_ignore_bottom": "UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM",
    "uda.mix": "UDA.MIX",
    "uda.imnet_feature_dist_lambda": "UDA.FD.LAMBDA",
    "uda.imnet_feature_dist_classes": "UDA.FD.CLASSES",
    "uda.imnet_feature_dist_scale_min_ratio": "UDA.FD.SCALE_MIN_RATIO",
    "uda.blur": "UDA.AUG.BLUR",
    "uda.color_jitter_strength": "UDA.AUG.COLOR_JITTER_STRENGTH",
    "uda.color_jitter_probability": "UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD",
    "uda.debug_img_interval": "UDA.DEBUG_IMG_INTERVAL",
    "uda.mask_mode": "UDA.MIC.MODE",
    "uda.mask_lambda": "UDA.MIC.LAMBDA",
    "uda.mask_generator.mask_ratio": "UDA.MIC.MASK_RATIO",
    "uda.mask_generator.mask_block_size": "UDA.MIC.BLOCK_SIZE",
    # optimizer and schedule
    "optimizer.type": "SOLVER.OPTIMIZER",
    "optimizer.lr": "SOLVER.BASE_LR",
    "optimizer.betas": "SOLVER.BETAS",
    "optimizer.weight_decay": "SOLVER.WEIGHT_DECAY",
    "optimizer.paramwise_cfg.custom_keys.head.lr_mult": "SOLVER.HEAD_LR_MULTIPLIER",
    "optimizer.paramwise_cfg.custom_keys.norm.decay_mult": "SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER",
    "lr_config.warmup_iters": "SOLVER.WARMUP_ITERS",
    "lr_config.warmup_ratio": "SOLVER.WARMUP_FACTOR",
    "lr_config.power": "SOLVER.POLY_LR_POWER",
    "lr_config.min_lr": "SOLVER.POLY_LR_MIN_LR",
    "runner.max_iters": "SOLVER.MAX_ITER",
    "checkpoint_config.interval": "SOLVER.CHECKPOINT_PERIOD",
    "evaluation.interval": "TEST.EVAL_PERIOD",
    "data.samples_per_gpu": "SOLVER.IMS_PER_BATCH",
    "data.workers_per_gpu": "DATALOADER.NUM_WORKERS",
    "img_norm_cfg.mean": "MODEL.PIXEL_MEAN",
    "img_norm_cfg.std": "MODEL.PIXEL_STD",
    "seed": "SEED",
}

# ``uda.type`` -> ``UDA.METHOD`` (no ``uda`` dict: supervised training on the labelled stream)
ORIGINAL_UDA_METHODS: Dict[Optional[str], str] = {"DACS": "dacs", "AdvSeg": "advseg", "MinEnt": "minent",
                                                  None: "source_only"}
# ``optimizer.type`` -> ``SOLVER.OPTIMIZER``
ORIGINAL_OPTIMIZERS: Dict[str, str] = {"AdamW": "ADAMW", "SGD": "SGD"}


def original_key(path: str) -> str:
    """The key of the original setting ``path`` (``KeyError`` naming it when the table has none)."""
    try:
        return ORIGINAL_KEYS[path]
    except KeyError:
        raise KeyError(f"the original setting {path!r} has no key in hrda_d2/checkpoint/original_keys.py") from None


def uda_method_key(uda_type: Optional[str]) -> str:
    """``UDA.METHOD`` of the original's ``uda.type`` (None: no ``uda`` dict)."""
    try:
        return ORIGINAL_UDA_METHODS[uda_type]
    except KeyError:
        known = ", ".join(repr(t) for t in ORIGINAL_UDA_METHODS if t)
        raise KeyError(f"uda.type={uda_type!r} has no UDA.METHOD here (known: {known})") from None
