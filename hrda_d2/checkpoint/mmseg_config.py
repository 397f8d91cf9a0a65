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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import MIC_MODE_NAMES, add_hrda_config
from ..modeling.backbone.mit import MIT_VARIANTS
from .original_keys import ORIGINAL_OPTIMIZERS, original_key, uda_method_key

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

    def put(self, tree: Any, prefix: str, path: str, default: Any = _MISSING) -> None:
        """Set the key of the original setting ``<prefix>.<path>`` (:data:`.original_keys.ORIGINAL_KEYS`) from
        ``path`` of ``tree`` (the subtree at ``prefix``), or ``default`` (the original class default) when absent."""
        value = _get(tree, path, default)
        if value is _MISSING:
            return
        self.values[original_key(f"{prefix}.{path}" if prefix else path)] = value

    def note(self, text: str) -> None:
        self.notes.append(text)


def _translate_model(t: _Translation, model: Mapping[str, Any]) -> None:
    backbone_type = _get(model, "backbone.type")
    if backbone_type not in MIT_VARIANTS:
        raise _unsupported(f"model.backbone.type={backbone_type!r} (supported: {sorted(MIT_VARIANTS)})")
    t.values["MODEL.META_ARCHITECTURE"] = "HRDA"
    t.values["MODEL.BACKBONE.NAME"] = "build_mit_backbone"
    t.values["MODEL.MIT.VARIANT"] = backbone_type
    t.put(model, "model", "backbone.drop_path_rate", 0.1)  # MixVisionTransformer default

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
        for path, default in (("scales", _MISSING), ("hr_crop_size", _MISSING), ("crop_coord_divisible", 1),
                              ("feature_scale", 1.0), ("hr_slide_inference", True), ("hr_slide_overlapping", True),
                              ("blur_hr_crop", False)):
            t.put(model, "model", path, default)
        # HRDAHead constructor defaults (docs/method.md §5.1) where the config leaves them out
        for path, default in (("attention_classwise", True), ("attention_embed_dim", 256), ("hr_loss_weight", 0.0),
                              ("lr_loss_weight", 0.0), ("fixed_attention", None)):
            t.put(head, "model.decode_head", path, default)
    elif segmentor == "EncoderDecoder":
        if head.get("type") != "DAFormerHead":
            raise _unsupported(f"decode_head.type={head.get('type')!r} (expected DAFormerHead)")
        t.values[original_key("model.scales")] = [1.0]
    else:
        raise _unsupported(f"model.type={segmentor!r} (expected HRDAEncoderDecoder or EncoderDecoder)")
    if model.get("auxiliary_head"):
        raise _unsupported("an auxiliary_head")
    _translate_daformer_head(t, head, MIT_VARIANTS[backbone_type].embed_dims)

    test_cfg = model.get("test_cfg") or {}
    mode = test_cfg.get("mode", "whole")
    t.values[original_key("model.test_cfg.mode")] = mode
    if mode == "slide":
        for path, default in (("crop_size", _MISSING), ("stride", _MISSING), ("batched_slide", False)):
            t.put(test_cfg, "model.test_cfg", path, default)


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
        t.put(fusion, "model.decode_head.decoder_params.fusion_cfg", "dilations")
    elif fusion.get("type") == "conv" and fusion.get("kernel_size", 1) == 1:
        t.values["MODEL.SEM_SEG_HEAD.FUSION"] = "conv"
    else:
        raise _unsupported(f"decoder_params.fusion_cfg={fusion} (supported: sep. ASPP without pooling, 1x1 conv)")
    t.values["MODEL.SEM_SEG_HEAD.NAME"] = "DAFormerHead"
    t.values["MODEL.SEM_SEG_HEAD.EMBED_DIM"] = embed_dims
    # BaseDecodeHead defaults where the config leaves them out
    for path, default in (("num_classes", _MISSING), ("ignore_index", 255), ("dropout_ratio", 0.1),
                          ("norm_cfg.type", _MISSING)):
        t.put(head, "model.decode_head", path, default)
    if _get(head, "loss_decode.type", "CrossEntropyLoss") != "CrossEntropyLoss" or _get(
            head, "loss_decode.use_sigmoid", False):
        raise _unsupported(f"decode_head.loss_decode={head.get('loss_decode')}")
    t.put(head, "model.decode_head", "loss_decode.loss_weight", 1.0)


def _translate_data(t: _Translation, mm: Mapping[str, Any]) -> None:
    t.put(mm, "", "img_norm_cfg.mean")
    t.put(mm, "", "img_norm_cfg.std")
    if _get(mm, "img_norm_cfg.to_rgb", True) is not True:
        t.note("img_norm_cfg.to_rgb=False (BGR input) is not supported; INPUT.FORMAT stays RGB")
    t.put(mm, "", "data.samples_per_gpu")
    t.put(mm, "", "data.workers_per_gpu")
    train = _get(mm, "data.train", {})
    if train.get("type") == "UDADataset":
        parts = (("SOURCE", train.get("source", {})), ("TARGET", train.get("target", {})))
        rcs = train.get("rare_class_sampling")
        t.values["DATASETS.RCS.ENABLED"] = rcs is not None
        if rcs is not None:
            for path in ("class_temp", "min_pixels", "min_crop_ratio"):
                t.put(rcs, "data.train.rare_class_sampling", path)
        t.put(train, "data.train", "target.crop_pseudo_margins", [])
    else:
        parts = (("SOURCE", train),)
        t.values["DATASETS.RCS.ENABLED"] = False
    for name, dataset in parts:
        pipeline = dataset.get("pipeline") if isinstance(dataset, Mapping) else None
        resize, crop, flip = (_pipeline_step(pipeline, s) for s in ("Resize", "RandomCrop", "RandomFlip"))
        prefix = f"data.train.{name.lower()}.pipeline"
        if resize is not None:
            t.put(resize, f"{prefix}.Resize", "img_scale")
        if crop is not None:
            t.put(crop, f"{prefix}.RandomCrop", "crop_size")
            t.put(crop, f"{prefix}.RandomCrop", "cat_max_ratio", 1.0)
        if flip is not None:
            t.put(flip, f"{prefix}.RandomFlip", "prob", 0.0)
    test_aug = _pipeline_step(_get(mm, "data.test.pipeline", None), "MultiScaleFlipAug")
    if test_aug is not None:
        t.put(test_aug, "data.test.pipeline.MultiScaleFlipAug", "img_scale")
        if test_aug.get("flip"):
            t.note("test-time flip augmentation has no key here; it is not used")


def _translate_uda(t: _Translation, mm: Mapping[str, Any]) -> None:
    uda = mm.get("uda")
    if uda is None:
        t.values[original_key("uda.type")] = uda_method_key(None)
        return
    if uda.get("type") != "DACS":
        raise _unsupported(f"uda.type={uda.get('type')!r} (only DACS is implemented)")
    t.values[original_key("uda.type")] = uda_method_key("DACS")
    for path, default in (("alpha", _MISSING), ("pseudo_threshold", _MISSING), ("pseudo_weight_ignore_top", 0),
                          ("pseudo_weight_ignore_bottom", 0), ("mix", _MISSING), ("imnet_feature_dist_lambda", 0.0)):
        t.put(uda, "uda", path, default)
    if uda.get("imnet_feature_dist_classes") is None and uda.get("imnet_feature_dist_lambda", 0) > 0:
        raise _unsupported("imnet_feature_dist_classes=None (feature distance over all classes)")
    for path in ("imnet_feature_dist_classes", "imnet_feature_dist_scale_min_ratio", "blur", "color_jitter_strength",
                 "color_jitter_probability", "debug_img_interval"):
        t.put(uda, "uda", path)
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
    t.values[original_key("uda.mask_mode")] = mode
    t.put(generator, "uda.mask_generator", "mask_ratio")
    t.put(generator, "uda.mask_generator", "mask_block_size")
    t.put(uda, "uda", "mask_lambda", 1.0)


def _translate_schedule(t: _Translation, mm: Mapping[str, Any]) -> None:
    optimizer = mm.get("optimizer") or {}
    if optimizer.get("type") != "AdamW":
        raise _unsupported(f"optimizer.type={optimizer.get('type')!r} (only AdamW is implemented)")
    t.values[original_key("optimizer.type")] = ORIGINAL_OPTIMIZERS["AdamW"]
    t.put(optimizer, "optimizer", "lr")
    t.put(optimizer, "optimizer", "betas", [0.9, 0.999])
    t.put(optimizer, "optimizer", "weight_decay", 0.01)  # torch AdamW default
    t.put(optimizer, "optimizer", "paramwise_cfg.custom_keys.head.lr_mult", 1.0)
    t.put(optimizer, "optimizer", "paramwise_cfg.custom_keys.norm.decay_mult", 1.0)
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
        t.put(lr, "lr_config", "warmup_iters")
        t.put(lr, "lr_config", "warmup_ratio")
    t.put(lr, "lr_config", "power", 1.0)
    t.put(lr, "lr_config", "min_lr", 0.0)
    for path in ("runner.max_iters", "checkpoint_config.interval", "evaluation.interval", "seed"):
        t.put(mm, "", path)


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
