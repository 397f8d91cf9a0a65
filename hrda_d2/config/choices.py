"""The values of every key that selects one of a fixed set of choices, each set defined once here.

The config checks (:mod:`.validation`, every key of :data:`CHOICES`), the constructors that branch on a value, the
experiment naming and the converters of the original's configs all read these tuples; nothing else lists them.
Values are compared exactly (case included), as Detectron2 compares its own names.
"""
from typing import Dict, Tuple

__all__ = ["AMP_DTYPES", "CHOICES", "GAN_LOSSES", "HEAD_FUSIONS", "INPUT_FORMATS", "LR_SCHEDULERS", "MIC_MASK_TYPES", "MIC_METHODS", "MIC_MODE_NAMES",
           "MIC_WITH_OWN_TEACHER", "OPTIMIZERS", "SELF_TRAINING", "TEST_MODES", "UDA_METHODS", "UDA_MIXES",
           "VFM_FD_FEATURES", "VFM_FLIPS", "VFM_UDA", "WARMUP_METHODS", "WEIGHTS_SOURCES"]

# UDA.METHOD (hrda_d2/uda/, docs/method.md §7 and §18)
UDA_METHODS = ("dacs", "advseg", "minent", "source_only", "target_only", "vfm_uda")
SELF_TRAINING = "dacs"  # the method with an EMA teacher, pseudo-labels, ClassMix (and optionally FD, MIC)
# the methods MIC (UDA.MIC.ENABLED) can extend: DACS shares its teacher with MIC; AdvSeg and MinEnt get MIC's own
# EMA teacher (docs/method.md §17.6)
MIC_WITH_OWN_TEACHER = ("advseg", "minent")
MIC_METHODS = (SELF_TRAINING,) + MIC_WITH_OWN_TEACHER
# UDA.MIC.MODE: the original MIC's ``mask_mode``s "separate[src|trg][aug]" (docs/method.md §17.2): the masked batch
# is the source batch ("src"), the target batch ("trg") or source image 0 + target image 0 (neither), colour-augmented
# with the "aug" suffix
MIC_MODE_NAMES = ("separate", "separateaug", "separatesrc", "separatesrcaug", "separatetrg", "separatetrgaug")
# UDA.MIC.MASK_TYPE: image blocks (MIC; the default) or the backbone's patch tokens (VFM-UDA's token masking)
MIC_MASK_TYPES = ("blocks", "tokens")
VFM_UDA = "vfm_uda"  # UDA.METHOD of the VFM-UDA / VFM-UDA++ iteration (hrda_d2/uda/vfm_step.py, docs/method.md §22)
VFM_FLIPS = ("per_image", "per_batch")  # UDA.VFM.FLIP: vfm-uda flips each image, VFM-UDA++ the whole batch
VFM_FD_FEATURES = ("vit_tokens", "res5")  # UDA.VFM.FD_FEATURE: the student map of the frozen-DINOv2 distance
UDA_MIXES = ("class",)  # UDA.MIX: DACS mixes with ClassMix
GAN_LOSSES = ("LS", "VANILLA")  # UDA.ADVSEG.GAN_LOSS: least squares (MSE; the paper's) or BCE with logits
OPTIMIZERS = ("ADAMW", "SGD")  # SOLVER.OPTIMIZER (hrda_d2/solver/build.py)
LR_SCHEDULERS = ("WarmupPolyLR", "WarmupLinearLR")  # SOLVER.LR_SCHEDULER_NAME (hrda_d2/solver/lr_scheduler.py)
WARMUP_METHODS = ("linear",)  # SOLVER.WARMUP_METHOD
AMP_DTYPES = ("bfloat16", "float16")  # SOLVER.AMP.DTYPE: names of torch dtypes (getattr(torch, name))
TEST_MODES = ("slide", "whole")  # TEST.MODE: sliding-window or whole-image inference
# TEST.SLIDE.MERGE: what slide inference averages over the windows, their logits (mmseg / HRDA) or their softmax
# probabilities (VFM-UDA / VFM-UDA++, docs/method.md §19.4)
SLIDE_MERGES = ("logits", "probabilities")
WEIGHTS_SOURCES = ("student", "teacher")  # TEST.WEIGHTS_SOURCE: the entry of a training checkpoint evaluated
HEAD_FUSIONS = ("aspp", "conv")  # MODEL.SEM_SEG_HEAD.FUSION of the DAFormer head
INPUT_FORMATS = ("RGB",)  # INPUT.FORMAT: the mappers give RGB images (MODEL.PIXEL_MEAN / PIXEL_STD are RGB)

# key -> (its values, what one is): the config checks refuse any other value with
# "KEY=value: is not <what>; use one of <values>" (:func:`~.validation.check_choice`)
CHOICES: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "UDA.METHOD": (UDA_METHODS, "a method of hrda_d2"),
    "UDA.MIC.MODE": (MIC_MODE_NAMES, "a MIC mode"),
    "UDA.MIC.MASK_TYPE": (MIC_MASK_TYPES, "a masking of MIC"),
    "UDA.VFM.FLIP": (VFM_FLIPS, "a flip rule of VFM-UDA"),
    "UDA.VFM.FD_FEATURE": (VFM_FD_FEATURES, "a student map of the VFM-UDA++ feature distance"),
    "UDA.MIX": (UDA_MIXES, "a mixing this project implements (DACS mixes with ClassMix)"),
    "UDA.ADVSEG.GAN_LOSS": (GAN_LOSSES, "a GAN loss of AdvSeg"),
    "SOLVER.OPTIMIZER": (OPTIMIZERS, "an optimizer of hrda_d2"),
    "SOLVER.LR_SCHEDULER_NAME": (LR_SCHEDULERS, "a learning-rate schedule of hrda_d2"),
    "SOLVER.WARMUP_METHOD": (WARMUP_METHODS, "a warm-up of hrda_d2"),
    "SOLVER.AMP.DTYPE": (AMP_DTYPES, "an autocast dtype"),
    "TEST.MODE": (TEST_MODES, "an inference mode"),
    "TEST.SLIDE.MERGE": (SLIDE_MERGES, "a merge of the slide-inference windows"),
    "TEST.WEIGHTS_SOURCE": (WEIGHTS_SOURCES, "a model of a training checkpoint"),
    "MODEL.SEM_SEG_HEAD.FUSION": (HEAD_FUSIONS, "a fusion of the DAFormer head"),
    "INPUT.FORMAT": (INPUT_FORMATS, "a channel order of the dataset mappers"),
}
