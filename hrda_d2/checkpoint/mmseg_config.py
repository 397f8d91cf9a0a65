"""Translate the original mmseg config stored in a checkpoint (``meta["config"]``, the ``cfg.pretty_text`` of
mmcv: Python assignments of dict/list literals) into this project's yacs config keys.

The text is parsed with :mod:`ast` and only literals are accepted (numbers, strings, booleans, None, lists,
tuples, dicts and ``dict(key=value, ...)`` calls); nothing is executed.

Use: ``values, notes = mmseg_config_to_cfg_values(parse_mmseg_config_text(text), weights=OUT)`` then
``cfg_values_to_yaml(values)``. ``values`` maps full keys (``"MODEL.MIT.VARIANT"``) to values; ``notes`` lists
settings of the original that have no key here and were left at this project's defaults. Settings that would
build a different network than the original's raise :class:`MmsegConfigError`.
"""
import ast
import logging
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import MIC_MODE_NAMES, add_hrda_config
from ..modeling.backbone.mit import MIT_VARIANTS

__all__ = ["MmsegConfigError", "cfg_values_to_yaml", "mmseg_config_to_cfg_values", "parse_mmseg_config_text"]

logger = logging.getLogger(__name__)

_MISSING = object()


class MmsegConfigError(ValueError):
    """The stored config text cannot be parsed or has settings this project cannot express."""


# ------------------------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------------------------
def _literal(node: ast.AST) -> Any:
    """Value of a literal expression node; ``dict(a=1)`` calls are literals here. Raises ValueError otherwise."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("'**' unpacking in a dict literal")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError("'**' unpacking in dict(...)")
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def parse_mmseg_config_text(text: str) -> Dict[str, Any]:
    """``name = <literal>`` statements of an mmcv pretty-text config -> ``{name: value}``.

    Statements that are not such assignments are skipped with a warning (they never occur in mmcv's output).
    """
    if not isinstance(text, str) or not text.strip():
        raise MmsegConfigError("the checkpoint's meta['config'] is empty or not a text")
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise MmsegConfigError(f"meta['config'] is not valid Python config text (line {e.lineno}: {e.msg})") from e
    values: Dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                values[stmt.targets[0].id] = _literal(stmt.value)
            except ValueError as e:
                logger.warning("meta['config'] line %d: %s is not a literal (%s); skipped",
                               stmt.lineno, stmt.targets[0].id, e)
        else:
            logger.warning("meta['config'] line %d: not a plain assignment; skipped", stmt.lineno)
    return values


# ------------------------------------------------------------------------------------------------------------
# translation
# ------------------------------------------------------------------------------------------------------------
def _get(tree: Any, path: str, default: Any = _MISSING) -> Any:
    """``_get(cfg, "model.decode_head.num_classes")``; ``default`` when a step is missing."""
    for part in path.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return default
        tree = tree[part]
    return tree


def _pipeline_step(pipeline: Any, step_type: str) -> Optional[Mapping[str, Any]]:
    """First step of that type in an mmseg pipeline list, looking inside MultiScaleFlipAug's transforms."""
    for step in pipeline if isinstance(pipeline, Sequence) else ():
        if isinstance(step, Mapping):
            if step.get("type") == step_type:
                return step
            inner = _pipeline_step(step.get("transforms"), step_type)
            if inner is not None:
                return inner
    return None


def _unsupported(what: str) -> MmsegConfigError:
    return MmsegConfigError(f"the original config has {what}, which this project cannot express; "
                            f"convert the weights without --config-out and write the config by hand")


class _Translation:
    """Collects ``key -> value`` and notes while walking the original config."""

    def __init__(self) -> None:
        self.values: "OrderedDict[str, Any]" = OrderedDict()
        self.notes: List[str] = []

    def put(self, key: str, tree: Any, path: str, default: Any = _MISSING,
            convert: Callable[[Any], Any] = lambda v: v) -> None:
        """Set ``key`` from ``path`` of ``tree`` (or ``default`` = the original class default when absent)."""
        value = _get(tree, path, default)
        if value is _MISSING:
            return
        self.values[key] = convert(value)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _translate_model(t: _Translation, model: Mapping[str, Any]) -> None:
    backbone_type = _get(model, "backbone.type")
    if backbone_type not in MIT_VARIANTS:
        raise _unsupported(f"model.backbone.type={backbone_type!r} (supported: {sorted(MIT_VARIANTS)})")
    t.values["MODEL.META_ARCHITECTURE"] = "HRDA"
    t.values["MODEL.BACKBONE.NAME"] = "build_mit_backbone"
    t.values["MODEL.MIT.VARIANT"] = backbone_type
    t.put("MODEL.MIT.DROP_PATH_RATE", model, "backbone.drop_path_rate", 0.1)  # MixVisionTransformer default

    segmentor = model.get("type")
    head = model.get("decode_head", {})
    if segmentor == "HRDAEncoderDecoder":
        if head.get("type") != "HRDAHead" or head.get("single_scale_head", "DAFormerHead") != "DAFormerHead":
            raise _unsupported(f"decode_head type {head.get('type')!r} / single_scale_head "
                               f"{head.get('single_scale_head')!r} (expected HRDAHead over DAFormerHead)")
        if model.get("hr_crop_size") is None:
            raise _unsupported("hr_crop_size=None (no detail crop)")
        if not isinstance(model.get("feature_scale", 1), (int, float)):
            raise _unsupported(f"feature_scale={model.get('feature_scale')!r}")
        t.put("MODEL.HRDA.SCALES", model, "scales")
        t.put("MODEL.HRDA.HR_CROP_SIZE", model, "hr_crop_size")
        t.put("MODEL.HRDA.CROP_COORD_DIVISIBLE", model, "crop_coord_divisible", 1)
        t.put("MODEL.HRDA.FEATURE_SCALE", model, "feature_scale", 1.0)
        t.put("MODEL.HRDA.HR_SLIDE_INFERENCE", model, "hr_slide_inference", True)
        t.put("MODEL.HRDA.HR_SLIDE_OVERLAPPING", model, "hr_slide_overlapping", True)
        t.put("MODEL.HRDA.BLUR_HR_CROP", model, "blur_hr_crop", False)
        # HRDAHead constructor defaults (docs/method.md §5.1) where the config leaves them out
        t.put("MODEL.HRDA.ATTENTION_CLASSWISE", head, "attention_classwise", True)
        t.put("MODEL.HRDA.ATTENTION_EMBED_DIM", head, "attention_embed_dim", 256)
        t.put("MODEL.HRDA.HR_LOSS_WEIGHT", head, "hr_loss_weight", 0.0)
        t.put("MODEL.HRDA.LR_LOSS_WEIGHT", head, "lr_loss_weight", 0.0)
        t.put("MODEL.HRDA.FIXED_ATTENTION", head, "fixed_attention", None)
    elif segmentor == "EncoderDecoder":
        if head.get("type") != "DAFormerHead":
            raise _unsupported(f"decode_head.type={head.get('type')!r} (expected DAFormerHead)")
        t.values["MODEL.HRDA.SCALES"] = [1.0]
    else:
        raise _unsupported(f"model.type={segmentor!r} (expected HRDAEncoderDecoder or EncoderDecoder)")
    if model.get("auxiliary_head"):
        raise _unsupported("an auxiliary_head")
    _translate_daformer_head(t, head, MIT_VARIANTS[backbone_type].embed_dims)

    test_cfg = model.get("test_cfg") or {}
    mode = test_cfg.get("mode", "whole")
    t.values["TEST.MODE"] = mode
    if mode == "slide":
        t.put("TEST.SLIDE.CROP_SIZE", test_cfg, "crop_size")
        t.put("TEST.SLIDE.STRIDE", test_cfg, "stride")
        t.put("TEST.SLIDE.BATCHED", test_cfg, "batched_slide", False)


def _translate_daformer_head(t: _Translation, head: Mapping[str, Any], backbone_dims: Sequence[int]) -> None:
    embed_dims = _get(head, "decoder_params.embed_dims", _MISSING)
    if list(head.get("in_channels", backbone_dims)) != list(backbone_dims):
        raise _unsupported(f"decode_head.in_channels={head.get('in_channels')} (the backbone gives {list(backbone_dims)})")
    if list(head.get("in_index", [0, 1, 2, 3])) != [0, 1, 2, 3]:
        raise _unsupported(f"decode_head.in_index={head.get('in_index')}")
    if embed_dims is _MISSING or head.get("channels") != embed_dims:
        raise _unsupported(f"decode_head.channels={head.get('channels')} != decoder_params.embed_dims={embed_dims} "
                           f"(MODEL.SEM_SEG_HEAD.EMBED_DIM sets both)")
    for name in ("embed_cfg", "embed_neck_cfg"):
        if _get(head, f"decoder_params.{name}.type", "mlp") != "mlp":
            raise _unsupported(f"decoder_params.{name}.type={_get(head, f'decoder_params.{name}.type')!r}")
    fusion = _get(head, "decoder_params.fusion_cfg", {})
    if fusion.get("type") == "aspp" and fusion.get("sep") and fusion.get("pool") is False:
        t.values["MODEL.SEM_SEG_HEAD.FUSION"] = "aspp"
        t.put("MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", fusion, "dilations")
    elif fusion.get("type") == "conv" and fusion.get("kernel_size", 1) == 1:
        t.values["MODEL.SEM_SEG_HEAD.FUSION"] = "conv"
    else:
        raise _unsupported(f"decoder_params.fusion_cfg={fusion} (supported: sep. ASPP without pooling, 1x1 conv)")
    t.values["MODEL.SEM_SEG_HEAD.NAME"] = "DAFormerHead"
    t.values["MODEL.SEM_SEG_HEAD.EMBED_DIM"] = embed_dims
    t.put("MODEL.SEM_SEG_HEAD.NUM_CLASSES", head, "num_classes")
    t.put("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", head, "ignore_index", 255)  # BaseDecodeHead default
    t.put("MODEL.SEM_SEG_HEAD.DROPOUT", head, "dropout_ratio", 0.1)
    t.put("MODEL.SEM_SEG_HEAD.NORM", head, "norm_cfg.type")
    if _get(head, "loss_decode.type", "CrossEntropyLoss") != "CrossEntropyLoss" or _get(
            head, "loss_decode.use_sigmoid", False):
        raise _unsupported(f"decode_head.loss_decode={head.get('loss_decode')}")
    t.put("MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", head, "loss_decode.loss_weight", 1.0)


def _translate_data(t: _Translation, mm: Mapping[str, Any]) -> None:
    t.put("MODEL.PIXEL_MEAN", mm, "img_norm_cfg.mean")
    t.put("MODEL.PIXEL_STD", mm, "img_norm_cfg.std")
    if _get(mm, "img_norm_cfg.to_rgb", True) is not True:
        t.note("img_norm_cfg.to_rgb=False (BGR input) is not supported; INPUT.FORMAT stays RGB")
    t.put("SOLVER.IMS_PER_BATCH", mm, "data.samples_per_gpu")
    t.put("DATALOADER.NUM_WORKERS", mm, "data.workers_per_gpu")
    train = _get(mm, "data.train", {})
    if train.get("type") == "UDADataset":
        parts = (("SOURCE", train.get("source", {})), ("TARGET", train.get("target", {})))
        rcs = train.get("rare_class_sampling")
        t.values["DATASETS.RCS.ENABLED"] = rcs is not None
        if rcs is not None:
            t.put("DATASETS.RCS.CLASS_TEMP", rcs, "class_temp")
            t.put("DATASETS.RCS.MIN_PIXELS", rcs, "min_pixels")
            t.put("DATASETS.RCS.MIN_CROP_RATIO", rcs, "min_crop_ratio")
        t.put("INPUT.TARGET.PSEUDO_MARGINS", train, "target.crop_pseudo_margins", [])
    else:
        parts = (("SOURCE", train),)
        t.values["DATASETS.RCS.ENABLED"] = False
    for name, dataset in parts:
        pipeline = dataset.get("pipeline") if isinstance(dataset, Mapping) else None
        resize, crop, flip = (_pipeline_step(pipeline, s) for s in ("Resize", "RandomCrop", "RandomFlip"))
        if resize is not None:
            t.put(f"INPUT.{name}.SCALE", resize, "img_scale")
        if crop is not None:
            t.put(f"INPUT.{name}.CROP_SIZE", crop, "crop_size")
            t.put(f"INPUT.{name}.CAT_MAX_RATIO", crop, "cat_max_ratio", 1.0)
        if flip is not None:
            t.put(f"INPUT.{name}.FLIP_PROB", flip, "prob", 0.0)
    test_aug = _pipeline_step(_get(mm, "data.test.pipeline", None), "MultiScaleFlipAug")
    if test_aug is not None:
        t.put("INPUT.TEST.SCALE", test_aug, "img_scale")
        if test_aug.get("flip"):
            t.note("test-time flip augmentation has no key here; it is not used")


def _translate_uda(t: _Translation, mm: Mapping[str, Any]) -> None:
    uda = mm.get("uda")
    if uda is None:
        t.values["UDA.ENABLED"] = False
        return
    if uda.get("type") != "DACS":
        raise _unsupported(f"uda.type={uda.get('type')!r} (only DACS is implemented)")
    t.values["UDA.ENABLED"] = True
    t.put("UDA.ALPHA", uda, "alpha")
    t.put("UDA.PSEUDO_THRESHOLD", uda, "pseudo_threshold")
    t.put("UDA.PSEUDO_WEIGHT_IGNORE_TOP", uda, "pseudo_weight_ignore_top", 0)
    t.put("UDA.PSEUDO_WEIGHT_IGNORE_BOTTOM", uda, "pseudo_weight_ignore_bottom", 0)
    t.put("UDA.MIX", uda, "mix")
    t.put("UDA.FD.LAMBDA", uda, "imnet_feature_dist_lambda", 0.0)
    if uda.get("imnet_feature_dist_classes") is None and uda.get("imnet_feature_dist_lambda", 0) > 0:
        raise _unsupported("imnet_feature_dist_classes=None (feature distance over all classes)")
    t.put("UDA.FD.CLASSES", uda, "imnet_feature_dist_classes")
    t.put("UDA.FD.SCALE_MIN_RATIO", uda, "imnet_feature_dist_scale_min_ratio")
    t.put("UDA.AUG.BLUR", uda, "blur")
    t.put("UDA.AUG.COLOR_JITTER_STRENGTH", uda, "color_jitter_strength")
    t.put("UDA.AUG.COLOR_JITTER_SKIP_THRESHOLD", uda, "color_jitter_probability")
    t.put("UDA.DEBUG_IMG_INTERVAL", uda, "debug_img_interval")
    _translate_mic(t, uda)


def _translate_mic(t: _Translation, uda: Mapping[str, Any]) -> None:
    """MIC fields of the original DACS config (lhoyer/MIC; absent in HRDA / DAFormer configs): ``mask_mode``
    (None = no MIC), ``mask_lambda``, ``mask_generator`` (``type='block'``, ``mask_ratio``, ``mask_block_size``).
    Only MIC sharing the DACS teacher and pseudo-labels is implemented (``mask_alpha`` and
    ``mask_pseudo_threshold`` ``'same'``, the released configs); anything else is refused."""
    if "mask_mode" not in uda:
        return
    mode = uda["mask_mode"]
    t.values["UDA.MIC.ENABLED"] = mode is not None
    if mode is None:
        return
    if mode not in MIC_MODE_NAMES:
        raise _unsupported(f"uda.mask_mode={mode!r} (MIC modes implemented: {sorted(MIC_MODE_NAMES)})")
    if uda.get("source_only", False):
        raise _unsupported("MIC with uda.source_only=True (MIC here trains on the DACS pseudo-labels)")
    for field, meaning in (("mask_alpha", "EMA teacher"), ("mask_pseudo_threshold", "pseudo-label threshold")):
        if uda.get(field, "same") != "same":
            raise _unsupported(
                f"uda.{field}={uda[field]!r} (a separate MIC {meaning}; only 'same' = sharing the DACS teacher and "
                f"its pseudo-labels is implemented)")
    generator = uda.get("mask_generator") or {}
    if generator.get("type") != "block":
        raise _unsupported(f"uda.mask_generator={generator} (only type='block' masking is implemented)")
    t.values["UDA.MIC.MODE"] = mode
    t.put("UDA.MIC.MASK_RATIO", generator, "mask_ratio")
    t.put("UDA.MIC.BLOCK_SIZE", generator, "mask_block_size")
    t.put("UDA.MIC.LAMBDA", uda, "mask_lambda", 1.0)


def _translate_schedule(t: _Translation, mm: Mapping[str, Any]) -> None:
    optimizer = mm.get("optimizer") or {}
    if optimizer.get("type") != "AdamW":
        raise _unsupported(f"optimizer.type={optimizer.get('type')!r} (only AdamW is implemented)")
    t.values["SOLVER.OPTIMIZER"] = "ADAMW"
    t.put("SOLVER.BASE_LR", optimizer, "lr")
    t.put("SOLVER.BETAS", optimizer, "betas", [0.9, 0.999])
    t.put("SOLVER.WEIGHT_DECAY", optimizer, "weight_decay", 0.01)  # torch AdamW default
    keys = _get(optimizer, "paramwise_cfg.custom_keys", {})
    t.put("SOLVER.HEAD_LR_MULTIPLIER", keys, "head.lr_mult", 1.0)
    t.put("SOLVER.BACKBONE_NORM_DECAY_MULTIPLIER", keys, "norm.decay_mult", 1.0)
    lr = mm.get("lr_config") or {}
    if lr.get("policy") != "poly":
        raise _unsupported(f"lr_config.policy={lr.get('policy')!r} (only poly is implemented)")
    t.values["SOLVER.LR_SCHEDULER_NAME"] = "WarmupPolyLR"
    if lr.get("warmup") is None:
        t.values["SOLVER.WARMUP_ITERS"] = 0
    elif lr.get("warmup") != "linear":
        raise _unsupported(f"lr_config.warmup={lr.get('warmup')!r}")
    else:
        t.values["SOLVER.WARMUP_METHOD"] = "linear"
        t.put("SOLVER.WARMUP_ITERS", lr, "warmup_iters")
        t.put("SOLVER.WARMUP_FACTOR", lr, "warmup_ratio")
    t.put("SOLVER.POLY_LR_POWER", lr, "power", 1.0)
    t.put("SOLVER.POLY_LR_MIN_LR", lr, "min_lr", 0.0)
    t.put("SOLVER.MAX_ITER", mm, "runner.max_iters")
    t.put("SOLVER.CHECKPOINT_PERIOD", mm, "checkpoint_config.interval")
    t.put("TEST.EVAL_PERIOD", mm, "evaluation.interval")
    t.put("SEED", mm, "seed")


# type names of early HRDA/DAFormer checkpoints, renamed as the original tools/test.py does (update_legacy_cfg)
_LEGACY_TYPE_NAMES = {
    "UniHead": "DAFormerHead",
    "MultiResEncoderDecoder": "HRDAEncoderDecoder",
    "MultiResAttentionWrapper": "HRDAHead",
}


def _rename_legacy_types(tree: Any) -> Any:
    """A copy of ``tree`` with every ``type`` / ``single_scale_head`` value of ``_LEGACY_TYPE_NAMES`` renamed."""
    if isinstance(tree, Mapping):
        return {k: (_LEGACY_TYPE_NAMES.get(v, v) if k in ("type", "single_scale_head") and isinstance(v, str)
                    else _rename_legacy_types(v)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rename_legacy_types(v) for v in tree)
    return tree


def mmseg_config_to_cfg_values(
    mm: Mapping[str, Any], weights: Optional[str] = None
) -> Tuple["OrderedDict[str, Any]", List[str]]:
    """Original config (from :func:`parse_mmseg_config_text`) -> (``{full key: value}``, notes).

    ``weights`` (the converted checkpoint's path) becomes ``MODEL.WEIGHTS``.
    """
    mm = _rename_legacy_types(mm)
    model = mm.get("model") or _get(mm, "uda.model", None)
    if not isinstance(model, Mapping):
        raise MmsegConfigError("the original config has no 'model' dict")
    t = _Translation()
    _translate_model(t, model)
    _translate_data(t, mm)
    _translate_uda(t, mm)
    _translate_schedule(t, mm)
    if weights is not None:
        t.values["MODEL.WEIGHTS"] = str(weights)
    return t.values, t.notes


# ------------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------------
def _coerce(value: Any, default: Any) -> Any:
    """``value`` in the type of the key's default where YAML/yacs would not convert it (tuple -> list,
    int -> float, int elements of a float list -> float); other mismatches are left for yacs to reject."""
    if isinstance(value, tuple):
        value = [list(v) if isinstance(v, tuple) else v for v in value]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float) and is_int:
        return float(value)
    if isinstance(default, (list, tuple)) and default and all(isinstance(d, float) for d in default):
        if isinstance(value, list):
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _flat_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for name, value in node.items():
        keys += _flat_keys(value, f"{prefix}{name}.") if isinstance(value, CfgNode) else [prefix + name]
    return keys


class _FlowListDumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def cfg_values_to_yaml(values: Mapping[str, Any], header: str = "") -> str:
    """YAML text (self-contained, no ``_BASE_``) setting exactly ``values``, in the order of the project's keys.

    Every key must exist in ``add_hrda_config(get_cfg())``; values are coerced to the defaults' types and the
    result is checked by merging it into a fresh config (raises MmsegConfigError otherwise).
    """
    reference = add_hrda_config(get_cfg())
    order = {key: i for i, key in enumerate(_flat_keys(reference))}
    unknown = [key for key in values if key not in order]
    if unknown:
        raise MmsegConfigError(f"{unknown} are not config keys of this project (add_hrda_config(get_cfg()))")
    nested: Dict[str, Any] = {"VERSION": 2}
    for key in sorted(values, key=order.__getitem__):
        *parents, leaf = key.split(".")
        target, default = nested, reference
        for part in parents:
            target, default = target.setdefault(part, {}), default[part]
        target[leaf] = _coerce(values[key], default[leaf])
    try:
        reference.clone().merge_from_other_cfg(CfgNode(nested))
    except (KeyError, ValueError, AssertionError) as e:
        raise MmsegConfigError(f"the translated config does not merge into add_hrda_config(get_cfg()): {e}") from e
    text = yaml.dump(nested, Dumper=_FlowListDumper, sort_keys=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + text
