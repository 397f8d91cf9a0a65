"""Config keys of hrda_d2 and their defaults.

``add_hrda_config(cfg)`` adds every key the project reads to a Detectron2 ``CfgNode`` (from
``detectron2.config.get_cfg()``). The defaults are the paper's GTA->Cityscapes HRDA setting
(``configs/gtaHR2csHR_hrda.yaml``), see docs/method.md §14 and the README's "Config reference" for the mapping
from the original mmseg config fields to these keys.

Keys are grouped by the part of the system that reads them:

* ``MODEL.MIT``          MiT backbone (``modeling/backbone/mit.py``)
* ``MODEL.TIMM``         any timm model / DINOv2 ViT (``modeling/backbone/timm_backbone.py``)
* ``MODEL.VFM``          the VFM-UDA DINOv2 backbone ``VFMViT`` (``modeling/backbone/dinov2_vit.py``)
* ``MODEL.SEM_SEG_HEAD`` the single-scale head, DAFormer (``modeling/heads/daformer_head.py``)
* ``MODEL.HRDA``         multi-resolution meta-architecture and its head (``modeling/meta_arch/hrda.py``,
                         ``hrda_head.py``)
* ``TEST``               whole / slide inference
* ``INPUT``              dataset mappers (``data/dataset_mappers``)
* ``DATASETS``           source/target splits, rare class sampling (``data/samplers``)
* ``UDA``                DACS self-training and MIC (``uda/``, ``UDA.MIC``)

The values of the keys that select one of a fixed set of choices are :mod:`.choices`' tuples.
* ``SOLVER``             AdamW, warm-up + poly schedule, AMP, clipping, checkpoints kept, pre-emption signals
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_hrda_config"]


def _add_model_config(cfg: CN) -> None:
    cfg.MODEL.META_ARCHITECTURE = "HRDA"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.BACKBONE.NAME = "build_mit_backbone"
    # torch.compile the backbone and the decode heads (in place: same parameter names); the first
    # iteration / each new input shape pays the compile time. Off by default
    cfg.MODEL.COMPILE = False

    cfg.MODEL.MIT = CN()
    cfg.MODEL.MIT.VARIANT = "mit_b5"  # mit_b0 ... mit_b5
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # recompute each transformer block's activations in the backward pass of training forwards instead of
    # storing them: exact (same gradients, same dropout / drop-path masks), less memory, ~1 extra forward
    cfg.MODEL.MIT.CHECKPOINT_ACTIVATIONS = False

    # MODEL.BACKBONE.NAME "build_timm_backbone": a timm model with outputs res2..res5 (strides 4..32)
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.NAME = "convnext_base"  # any timm name; plain ViTs (vit_*_patch14_dinov2) get a feature pyramid
    # LOCAL timm-layout weights file (model.safetensors of huggingface.co/timm/<name>); "" = random init (or
    # MODEL.WEIGHTS, e.g. a DINOv2 checkpoint converted by tools/convert_mmseg_checkpoint.py). Never downloaded.
    cfg.MODEL.TIMM.WEIGHTS = ""
    # hierarchical models: 4 feature_info indices for strides 4/8/16/32; plain ViTs: the 4 blocks (0-based) feeding
    # res2..res5; [] = automatic (the levels of those strides / the last block of each quarter of the depth)
    cfg.MODEL.TIMM.OUT_INDICES = []
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.1
    cfg.MODEL.TIMM.FREEZE_AT = 0  # 0 = train all; 1 = freeze the stem; k >= 2 = stem + stages up to res<k>
    cfg.MODEL.TIMM.CHECKPOINT_ACTIVATIONS = False  # recompute blocks/stages in backward (timm grad checkpointing)
    # plain ViTs: input size (H, W) whose token grid (H/16 x W/16) the position embedding is stored for (the
    # converter resizes official DINOv2 embeddings to it); other sizes are resampled on the fly
    cfg.MODEL.TIMM.IMG_SIZE = [512, 512]
    cfg.MODEL.TIMM.PYRAMID_CHANNELS = 256  # plain ViTs: channels of the simple-feature-pyramid maps res2..res5

    # MODEL.BACKBONE.NAME "VFMViT" (modeling/backbone/dinov2_vit.py, docs/method.md §19): the official DINOv2 ViT
    # MODEL.TIMM.NAME (vit_*_patch14[_reg4]_dinov2; MODEL.TIMM.WEIGHTS may be an official dinov2_*_pretrain.pth;
    # DROP_PATH_RATE / CHECKPOINT_ACTIVATIONS as there) on the input resized by INPUT_SCALE to a multiple of 14
    cfg.MODEL.VFM = CN()
    cfg.MODEL.VFM.INPUT_SCALE = 1.1  # VFM-UDA: int(side * 1.1) // 14 * 14 (a 1024 crop -> 1120 px, 80 x 80 tokens)
    # MODEL.BACKBONE.NAME "VFMViTAdapter" (modeling/backbone/vit_adapter.py, docs/method.md §20): VFM-UDA++'s
    # ViT-Adapter over the DINOv2 ViT MODEL.TIMM.NAME (no registers); resized sides must be multiples of 14 and 32.
    # Values of the original DinoV2ViTAdapter; the 4 groups of ViT blocks follow its rule (depth/4 blocks each)
    cfg.MODEL.VFM.ADAPTER = CN()
    cfg.MODEL.VFM.ADAPTER.CONV_INPLANE = 64  # width of the spatial prior module (64, 128, 256, 256 channels)
    cfg.MODEL.VFM.ADAPTER.N_POINTS = 4  # sampling points per head and level of the deformable attentions
    cfg.MODEL.VFM.ADAPTER.INIT_VALUES = 0.0  # initial injector gamma (0: the injectors start as identities)
    cfg.MODEL.VFM.ADAPTER.DEFORM_RATIO = 0.5  # value channels of the deformable attentions / ViT width
    cfg.MODEL.VFM.ADAPTER.WITH_CFFN = True  # ConvFFN after each extractor
    cfg.MODEL.VFM.ADAPTER.CFFN_RATIO = 0.25  # ConvFFN hidden channels / ViT width
    cfg.MODEL.VFM.ADAPTER.ADD_VIT_FEATURE = True  # add each group's ViT tokens (resized) to f1..f4
    cfg.MODEL.VFM.ADAPTER.USE_EXTRA_EXTRACTOR = True  # 2 more extractors in the last interaction block
    # BatchNorms of the spatial prior module and of f1..f4 (momentum 0.01): "SyncBN" (the original's
    # nn.SyncBatchNorm; plain BN on one process) or "BN"
    cfg.MODEL.VFM.ADAPTER.NORM = "SyncBN"
    # block side (px of the RESIZED image) of the block masking of masked forwards (token_mask): VFM-UDA++'s
    # BlockMasking(64); grid round(H' / 64) x round(W' / 64)
    cfg.MODEL.VFM.ADAPTER.MASK_BLOCK_SIZE = 64

    # MODEL.BACKBONE.NAME "build_resnet_v1c_backbone" (modeling/backbone/resnet_v1c.py): Detectron2's MODEL.RESNETS
    # keys with the values of the original's DeepLabV2 ResNet-101-V1c (output stride 8, trainable BN)
    cfg.MODEL.RESNETS.DEPTH = 101
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # stride on the 3x3 conv ("pytorch" style)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.RES4_DILATION = 2
    cfg.MODEL.RESNETS.RES5_DILATION = 4
    cfg.MODEL.RESNETS.CONTRACT_DILATION = True  # first block of a dilated stage: half the dilation (mmseg)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0

    # MODEL.SEM_SEG_HEAD exists in Detectron2's defaults; the keys of the single-scale heads are added here
    # ("DAFormerHead": every key below; "DLV2Head": IN_FEATURES ["res5"], NUM_CLASSES, ASPP_DILATIONS [6, 12])
    cfg.MODEL.SEM_SEG_HEAD.NAME = "DAFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.FUSION = "aspp"  # "aspp" (depthwise-separable ASPP) | "conv" (1x1 conv)
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [1, 6, 12, 18]
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    # loss weight of the plain (single-scale) DAFormer model; HRDA uses its own weights below
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0
    # unweighted CE losses (no per-pixel weight map) average over the non-ignored label pixels (mmseg's
    # avg_non_ignore; VFM-UDA's source loss F.cross_entropy) instead of all N*H*W pixels (docs/method.md §19.3)
    cfg.MODEL.SEM_SEG_HEAD.AVG_NON_IGNORE = False
    # the same for the decode heads (main and scale-attention head; BN running statistics stay exact)
    cfg.MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS = False

    cfg.MODEL.HRDA = CN()
    cfg.MODEL.HRDA.SCALES = [1.0, 0.5]  # [1.0] = plain single-scale DAFormer
    # the registered multi-resolution head of two-scale models (modeling/meta_arch/hrda_head.py); it wraps the
    # single-scale head MODEL.SEM_SEG_HEAD.NAME and builds a scale attention of the same type
    cfg.MODEL.HRDA.HEAD_NAME = "HRDAHead"
    cfg.MODEL.HRDA.HR_CROP_SIZE = [512, 512]
    cfg.MODEL.HRDA.CROP_COORD_DIVISIBLE = 8
    cfg.MODEL.HRDA.FEATURE_SCALE = 0.5  # scale whose features feed the ImageNet feature distance
    cfg.MODEL.HRDA.HR_SLIDE_INFERENCE = True
    cfg.MODEL.HRDA.HR_SLIDE_OVERLAPPING = True
    cfg.MODEL.HRDA.ATTENTION_CLASSWISE = True
    cfg.MODEL.HRDA.ATTENTION_EMBED_DIM = 256
    cfg.MODEL.HRDA.HR_LOSS_WEIGHT = 0.1
    cfg.MODEL.HRDA.LR_LOSS_WEIGHT = 0.0
    cfg.MODEL.HRDA.FIXED_ATTENTION = None  # None = learned attention; a float in [0, 1] otherwise
    cfg.MODEL.HRDA.BLUR_HR_CROP = False


def _add_test_config(cfg: CN) -> None:
    cfg.TEST.MODE = "slide"  # "slide" | "whole"
    cfg.TEST.SLIDE = CN()
    cfg.TEST.SLIDE.CROP_SIZE = [1024, 1024]
    cfg.TEST.SLIDE.STRIDE = [512, 512]
    cfg.TEST.SLIDE.BATCHED = True
    # compute each HR detail tile shared by overlapping test windows once (exact; only with eval-mode
    # BatchNorm, i.e. at test time); False = every window runs all of its tiles, as the original does
    cfg.TEST.SLIDE.REUSE_HR_TILES = True
    # what the windows' count-matrix average is taken over: "logits" (mmseg / HRDA) or "probabilities" (each
    # window's softmax, as VFM-UDA / VFM-UDA++; inference then returns averaged probabilities, docs/method.md §19.4)
    cfg.TEST.SLIDE.MERGE = "logits"
    # which weights --eval-only evaluates: "student" (as the original test script) or "teacher"
    cfg.TEST.WEIGHTS_SOURCE = "student"
    # also report mIoU16 (Synthia's 16 classes) in evaluations (Synthia-source configs)
    cfg.TEST.REPORT_MIOU16 = False
    # also run the official Cityscapes evaluation (cityscapesscripts) on Detectron2's Cityscapes splits
    cfg.TEST.CITYSCAPES_OFFICIAL_EVAL = True
    cfg.TEST.SAVE_PREDICTIONS = False  # colour PNGs + Cityscapes label-id PNGs under OUTPUT_DIR/inference


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.FORMAT = "RGB"
    # Source training pipeline: keep-ratio rescale to SCALE (long side, short side) like mmcv imrescale,
    # random crop of CROP_SIZE with cat_max_ratio, horizontal flip, pad with 0 (image) / 255 (label).
    cfg.INPUT.SOURCE = CN()
    cfg.INPUT.SOURCE.SCALE = [2560, 1440]
    cfg.INPUT.SOURCE.CROP_SIZE = [1024, 1024]
    cfg.INPUT.SOURCE.CAT_MAX_RATIO = 0.75
    cfg.INPUT.SOURCE.FLIP_PROB = 0.5
    # mmseg PhotoMetricDistortion after the flip (data/photometric_distortion.py): the "gtaCAug" source datasets
    # of AdvSeg / MinEnt (Table 2) and the target-only oracle's pipeline
    cfg.INPUT.SOURCE.PHOTOMETRIC_DISTORTION = False
    # [low, high]: rescale by a random factor U(low, high) after the keep-ratio rescale, before the crop
    # (VFM-UDA's scale jitter [0.9, 1.1], docs/method.md §10.1); [] = off (every HRDA / MIC config)
    cfg.INPUT.SOURCE.RATIO_RANGE = []
    # Target training pipeline (labels are not used by DACS)
    cfg.INPUT.TARGET = CN()
    cfg.INPUT.TARGET.SCALE = [2048, 1024]
    cfg.INPUT.TARGET.CROP_SIZE = [1024, 1024]
    cfg.INPUT.TARGET.CAT_MAX_RATIO = 1.0
    cfg.INPUT.TARGET.FLIP_PROB = 0.5
    cfg.INPUT.TARGET.PHOTOMETRIC_DISTORTION = False
    cfg.INPUT.TARGET.RATIO_RANGE = []
    # pseudo-label margins [top, bottom, left, right] on a mask of VALID_MASK_SIZE (H, W) built before
    # resizing and cropping; [] disables the margin mask
    cfg.INPUT.TARGET.PSEUDO_MARGINS = [30, 240, 30, 30]
    cfg.INPUT.TARGET.VALID_MASK_SIZE = [1024, 2048]
    # synchronized crop (the crop-size study's sync_crop_size, docs/method.md §10.4): one random window of this
    # (H, W) cut out of the source and the target sample of each batch position, after their own crops and
    # after rare class sampling; needs equal SOURCE / TARGET crop sizes. [] = off
    cfg.INPUT.SYNC_CROP_SIZE = []
    # Test pipeline: keep-ratio rescale to SCALE; predictions are resized back to the original size
    cfg.INPUT.TEST = CN()
    cfg.INPUT.TEST.SCALE = [2048, 1024]


def _add_datasets_config(cfg: CN) -> None:
    cfg.DATASETS.SOURCE = ("gta_train",)
    cfg.DATASETS.TARGET = ("cityscapes_fine_sem_seg_train",)
    cfg.DATASETS.TEST = ("cityscapes_fine_sem_seg_val",)
    # YAML files declaring splits of your own datasets (any number of classes; hrda_d2/data/datasets/split_files.py),
    # registered by tools/train_net.py and demo/demo.py before anything is built
    cfg.DATASETS.SPLIT_FILES = []
    cfg.DATASETS.RCS = CN()
    cfg.DATASETS.RCS.ENABLED = True
    cfg.DATASETS.RCS.CLASS_TEMP = 0.01
    cfg.DATASETS.RCS.MIN_PIXELS = 3000
    cfg.DATASETS.RCS.MIN_CROP_RATIO = 2.0
    cfg.DATALOADER.NUM_WORKERS = 1


def _add_uda_config(cfg: CN) -> None:
    cfg.UDA = CN()
    # the adaptation method (hrda_d2/uda/, docs/method.md §7 and §18): "dacs" (self-training; HRDA's and
    # DAFormer's), "advseg" (output-space adversarial training), "minent" (entropy minimisation), "source_only",
    # "target_only" (the oracle: supervised on DATASETS.TARGET's labels)
    cfg.UDA.METHOD = "dacs"
    # deprecated: the first release's switch (False = source-only). load_config reads it from old YAML files, moves it
    # to UDA.METHOD with a warning and leaves None; nothing else reads it
    cfg.UDA.ENABLED = None
    cfg.UDA.ALPHA = 0.999
    cfg.UDA.PSEUDO_THRESHOLD = 0.968
    cfg.UDA.PSEUDO_WEIGHT_IGNORE_TOP = 0
    cfg.UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM = 0
    cfg.UDA.MIX = "class"
    cfg.UDA.FD = CN()
    cfg.UDA.FD.LAMBDA = 0.005  # 0 disables the ImageNet feature distance
    cfg.UDA.FD.CLASSES = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    cfg.UDA.FD.SCALE_MIN_RATIO = 0.75
    # backbone map the feature distance compares ("" = the deepest, i.e. the smallest map: res5 of MiT);
    # e.g. "vit_tokens" for the pretrained tokens of a plain ViT instead of its newly initialised pyramid
    cfg.UDA.FD.FEATURE = ""
    # HRDA: the distance on every scale, summed (context features of the whole image + the detail crop's, labels
    # cut with the same box): the original's feature_scale='all' (Table 3 "LR0.5+HR0.5", Table S1)
    cfg.UDA.FD.ALL_SCALES = False
    cfg.UDA.AUG = CN()
    cfg.UDA.AUG.BLUR = True
    cfg.UDA.AUG.COLOR_JITTER_STRENGTH = 0.2
    # The original applies colour jitter when uniform(0, 1) > color_jitter_probability (0.2), i.e. with
    # probability 0.8. The key states what it is: the threshold a uniform draw must exceed.
    cfg.UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD = 0.2
    cfg.UDA.DEBUG_IMG_INTERVAL = 1000  # 0 disables the debug panels
    # MIC, masked image consistency (hrda_d2/uda/masked_consistency.py): after the mixed backward, one more
    # student forward/backward on block-masked images with the DACS pseudo-labels (shared teacher)
    cfg.UDA.MIC = CN()
    cfg.UDA.MIC.ENABLED = False  # False = plain HRDA/DACS (the step is unchanged)
    # which images are masked: "separatetrgaug" (colour-augmented target batch; GTA/Synthia -> Cityscapes),
    # "separate" (source image 0 + target image 0, no augmentation; Cityscapes -> ACDC / Dark Zurich), or
    # "separatetrg", "separateaug", "separatesrc", "separatesrcaug" (the original's ablation modes)
    cfg.UDA.MIC.MODE = "separatetrgaug"
    cfg.UDA.MIC.MASK_RATIO = 0.7  # share of masked blocks: a block is kept where uniform(0, 1) > MASK_RATIO
    cfg.UDA.MIC.BLOCK_SIZE = 64  # block side in input pixels (grid = round(H / BLOCK_SIZE) x round(W / ...))
    cfg.UDA.MIC.LAMBDA = 1.0  # weight of the masked fused loss term (the detail-crop term stays unscaled)
    # "blocks" (image blocks of BLOCK_SIZE, MIC) | "tokens" (the backbone replaces a random MASK_RATIO share of its
    # patch tokens by its mask token: VFM-UDA; needs a backbone with token_grid / token masking, one scale)
    cfg.UDA.MIC.MASK_TYPE = "blocks"
    # VFM-UDA / VFM-UDA++ (UDA.METHOD "vfm_uda", hrda_d2/uda/vfm_step.py, docs/method.md §22)
    cfg.UDA.VFM = CN()
    cfg.UDA.VFM.EMA_ALPHA = 0.999  # teacher EMA after the optimizer step: min(1 - 1 / (steps done + 1), EMA_ALPHA)
    cfg.UDA.VFM.EMA_BUFFERS = True  # also average the floating-point buffers (vfm-uda); False: parameters only (++)
    cfg.UDA.VFM.PSEUDO_THRESHOLD = 0.968  # confidence of the flip-averaged teacher softmax counted as confident
    # share of masked patch tokens (UDA.MIC.MASK_TYPE "tokens") or blocks ("blocks", UDA.MIC.BLOCK_SIZE) of the
    # masked target pass; 0 = no masked pass
    cfg.UDA.VFM.TOKEN_MASK_RATIO = 0.7
    cfg.UDA.VFM.STRONG_SOURCE_AUG = False  # False: weak jitter of the source (vfm-uda); True: VFM-UDA++'s strong aug
    cfg.UDA.VFM.FLIP = "per_image"  # "per_image" (vfm-uda) | "per_batch" (VFM-UDA++: one draw flips the batch)
    # frozen-DINOv2 feature distance of VFM-UDA++ (weights 0.1 / 0.1 there; 0 / 0 = off, as vfm-uda)
    cfg.UDA.VFM.FD_WEIGHT_SOURCE = 0.0
    cfg.UDA.VFM.FD_WEIGHT_TARGET = 0.0
    cfg.UDA.VFM.FD_MODEL = "vit_large_patch14_reg4_dinov2"  # timm name of the frozen DINOv2 (the original's hub name)
    cfg.UDA.VFM.FD_WEIGHTS = ""  # its weights (an official DINOv2 file, read by DINOv2ViT); "" = random (tests only)
    cfg.UDA.VFM.FD_SIZE = 406  # side the frozen DINOv2 sees (406 / 14 = 29 tokens)
    cfg.UDA.VFM.FD_FEATURE = "vit_tokens"  # student map projected by the distill head: "vit_tokens" | "res5"
    # image size of the originals' blur kernel (floor(ceil(0.1 s) - 0.5 + ceil(0.1 s) % 2)); 0 = the source crop side
    cfg.UDA.VFM.AUG_IMG_SIZE = 0
    # AdvSeg (uda/advseg_step.py, docs/method.md §18.4): a fully convolutional discriminator on the softmax of the
    # target predictions, its own Adam with poly decay (no warm-up); the original's configs/_base_/uda/advseg.py
    cfg.UDA.ADVSEG = CN()
    cfg.UDA.ADVSEG.LAMBDA_ADV = 0.001  # weight of the generator's adversarial loss on the target prediction
    cfg.UDA.ADVSEG.GAN_LOSS = "LS"  # "LS" (least squares, MSE; the paper's) | "VANILLA" (BCE with logits)
    cfg.UDA.ADVSEG.DISCRIMINATOR_CHANNELS = 64  # ndf: conv widths 64, 128, 256, 512
    cfg.UDA.ADVSEG.LR = 1e-4
    cfg.UDA.ADVSEG.LR_POWER = 0.9
    cfg.UDA.ADVSEG.LR_MIN = 0.0
    cfg.UDA.ADVSEG.BETAS = [0.9, 0.99]
    # MinEnt (uda/minent_step.py, docs/method.md §18.5): entropy of the target prediction, normalised by log2(C)
    cfg.UDA.MINENT = CN()
    cfg.UDA.MINENT.LAMBDA = 0.001


def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" | "SGD" (SGD: Detectron2's SOLVER.MOMENTUM 0.9 / SOLVER.NESTEROV False)
    cfg.SOLVER.BASE_LR = 6e-5
    cfg.SOLVER.BETAS = [0.9, 0.999]
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    cfg.SOLVER.HEAD_LR_MULTIPLIER = 10.0  # every parameter of the decode heads (norms included)
    # further parameter-name prefixes (relative to the model) trained like the decode heads, e.g. the newly
    # initialised feature pyramid of a plain ViT: ["backbone.simfp_"]
    cfg.SOLVER.HEAD_LR_PARAM_PREFIXES = []
    cfg.SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER = 0.0  # backbone LayerNorms get no weight decay
    # layer-wise lr decay of a ViT backbone with layer_decay_groups() (VFM-UDA, docs/method.md §21.1): its last
    # block gets BASE_LR, each block below LAYER_DECAY times the block above, the stems (patch / position
    # embedding, tokens, final norm) LAYER_DECAY times block 0; 1.0 = off (refused != 1.0 for other backbones)
    cfg.SOLVER.LAYER_DECAY = 1.0
    # multiply every lr by sqrt(SOLVER.IMS_PER_BATCH), the total batch (VFM-UDA: lr * sqrt(batch * devices * nodes))
    cfg.SOLVER.LR_SQRT_BATCH_SCALING = False
    # "WarmupPolyLR" (mmcv poly + linear warm-up) | "WarmupLinearLR" (VFM-UDA: factor WARMUP_FACTOR -> 1 over
    # WARMUP_ITERS, then linearly to 0 at MAX_ITER; docs/method.md §21.2)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.WARMUP_ITERS = 1500
    cfg.SOLVER.WARMUP_FACTOR = 1e-6
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.POLY_LR_POWER = 1.0
    cfg.SOLVER.POLY_LR_MIN_LR = 0.0
    cfg.SOLVER.MAX_ITER = 40000
    cfg.SOLVER.IMS_PER_BATCH = 2  # source images per step (and as many target images)
    cfg.SOLVER.CHECKPOINT_PERIOD = 40000  # 0 = no periodic checkpoints (model_final and pre-emption ones only)
    # keep only the newest N periodic checkpoints (Detectron2's PeriodicCheckpointer max_to_keep; model_final
    # and pre-emption checkpoints are never deleted); 0 keeps all
    cfg.SOLVER.CHECKPOINT_MAX_KEEP = 0
    # signals that stop training after the current iteration with a checkpoint and exit status 128 + signal
    # (engine/preemption.py; SLURM: --signal=TERM@120); [] lets them act as usual (SIGTERM kills at once)
    cfg.SOLVER.PREEMPTION_SIGNALS = ["SIGTERM", "SIGINT", "SIGUSR1"]
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.AMP.ENABLED = False
    cfg.SOLVER.AMP.DTYPE = "bfloat16"  # "bfloat16" | "float16"
    # iterations between host reads of the step's losses/metrics (each read waits for the GPU): they are
    # checked for NaN/inf and written to the event storage only then (and at the last iteration);
    # 1 = every iteration. 20 = Detectron2's logging period
    cfg.SOLVER.METRICS_PERIOD = 20
    # on those iterations (and so on every checkpoint iteration and the last one) also check the gradients before the
    # optimizer step (one reduction); a non-finite gradient stops training, naming the parameter and the losses
    cfg.SOLVER.CHECK_FINITE_GRADIENTS = True
    # skip up to this many such steps instead (gradients zeroed, a warning with the count); 0 = stop at the first.
    # With float16 AMP the GradScaler skips inf/NaN steps itself
    cfg.SOLVER.SKIP_NONFINITE_STEPS = 0
    cfg.TEST.EVAL_PERIOD = 4000
    cfg.SEED = 1


def add_hrda_config(cfg: CN) -> CN:
    """Add every hrda_d2 config key (with the paper's GTA->Cityscapes defaults) to ``cfg`` in place.

    Returns ``cfg`` for chaining. Unknown keys in a YAML file or on the command line are then rejected
    by Detectron2's ``merge_from_file``/``merge_from_list`` with a ``KeyError`` naming the key.
    """
    _add_model_config(cfg)
    _add_test_config(cfg)
    _add_input_config(cfg)
    _add_datasets_config(cfg)
    _add_uda_config(cfg)
    _add_solver_config(cfg)
    return cfg
