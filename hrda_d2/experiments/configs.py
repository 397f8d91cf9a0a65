"""Every run of an experiment as a YAML that ``tools/train_net.py --config-file`` accepts as it is, and its
``--tiny`` CPU version (docs/experiments.md §4, §5).

``configs/generated/<exp>/<run name>.yaml`` holds ``_BASE_`` (the paper config the run starts from, as a path
relative to the file), the keys where the run differs from it, ``SEED`` and ``OUTPUT_DIR``
(``<work dir>/<exp>/<run name>``). With ``tiny``, ``configs/generated/<exp>/tiny/<run name>.yaml`` adds the tiny
overlay to the full file (``OUTPUT_DIR`` ``<work dir>/tiny/<exp>/<run name>``). Before a file replaces an older
one it is loaded with :func:`hrda_d2.config.load_config` (every key, type and check across keys) and its model is
built on the meta device (no memory, no weights; each distinct ``MODEL`` / ``TEST`` configuration once per
process), so a run that cannot build is never written: :class:`GenerationError` names the run and the problem.

``--tiny`` divides every pixel size by :data:`TINY_FACTOR` (8), which maps the paper's image sizes onto the generated
replicas of ``datasets/prepare_synthetic.py ROOT --prepare`` (Cityscapes-like 128x256 = 1024x2048 / 8, GTA-like
132x239, Synthia-like 95x160, ACDC-like 135x240) and the 1024 crops onto the 128 crops of ``configs/demo_hrda.yaml``.
Crop-like sizes stay >= :data:`MIN_SIDE` (32 px, the smallest MiT input); where the context crop (crop x context
scale) would be smaller, the crop and the test window grow until it is 32 px (HRDA Table S1's s_c 4: 128 instead
of 64). The model becomes the demo's: MiT-b0 (DINOv2 runs: ViT-S/14, DeepLabV2 runs: ResNet-50 V1c) with 64-wide
heads, random weights (nothing is downloaded), hence no ImageNet feature distance; a few iterations, one evaluation
at the end, no loader workers, no debug panels. Everything else (method, scales, loss weights, attention, RCS,
margins, MIC, seed) is the run's own.
"""
import contextlib
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from ..config import ConfigError, add_hrda_config, load_config
from .catalog import experiment
from .runs import Run

__all__ = ["CONFIG_DIR", "GeneratedRun", "GenerationError", "MIN_SIDE", "REPO_ROOT", "TINY_FACTOR",
           "generate_experiment", "load_run_config", "run_output_dir", "tiny_overrides"]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
TINY_FACTOR = 8
VFM_ADAPTER_TINY_INPUT = 224  # the smallest side the ViT-Adapter takes (a multiple of its patch 14 and stride 32)
MIN_SIDE = 32  # MiT's first stage reduces its stride-4 map by 8: inputs below 32 px have no key/value rows


class GenerationError(RuntimeError):
    """A generated run does not load or its model does not build; names the run, the file and the problem."""


@dataclass
class GeneratedRun:
    """A run, its generated file (the tiny one with ``--tiny``) and its ``OUTPUT_DIR``."""

    run: Run
    output_dir: str
    config_file: str


# ------------------------------------------------------------------------------------------------ loading
@contextlib.contextmanager
def quiet_config_loading() -> Iterator[None]:
    """``load_config``'s "CUDA is not available" warning is about running, not about the generated file."""
    loading = logging.getLogger("hrda_d2.config.loading")
    level = loading.level
    loading.setLevel(logging.ERROR)
    try:
        yield
    finally:
        loading.setLevel(level)


def load_run_config(path: str, opts: Sequence[str] = ()) -> CfgNode:
    """``load_config(path, opts)`` without its running-environment warnings; a config problem raises
    :class:`GenerationError` naming the file (``load_config`` raises ``ConfigError``)."""
    try:
        with quiet_config_loading():
            return load_config(path, list(opts))
    except ConfigError as e:
        raise GenerationError(f"{path}: {e}") from None


_BUILD_PROBLEMS: Dict[Tuple[str, str], Optional[str]] = {}  # (MODEL, TEST) dumps -> why it does not build


def model_build_problem(cfg: CfgNode) -> Optional[str]:
    """Why the model of ``cfg`` does not build (None: it builds), built on the meta device: shapes only, no
    memory and no weights. Each distinct ``MODEL`` / ``TEST`` configuration is built once per process."""
    key = (cfg.MODEL.dump(), cfg.TEST.dump())
    if key not in _BUILD_PROBLEMS:
        probe = cfg.clone()
        probe.defrost()
        probe.MODEL.DEVICE = "meta"
        probe.MODEL.TIMM.WEIGHTS = ""  # weight files the constructor would read (the run's machine has them)
        try:
            with torch.device("meta"):
                build_model(probe)
            _BUILD_PROBLEMS[key] = None
        except (ValueError, KeyError, AssertionError, TypeError, RuntimeError, NotImplementedError) as e:
            _BUILD_PROBLEMS[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return _BUILD_PROBLEMS[key]


# ------------------------------------------------------------------------------------------------ writing
_ABSENT = object()


def _value(cfg: CfgNode, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg`` (``_ABSENT`` when ``cfg`` has no such key)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def differences(overrides: Mapping[str, Any], base: CfgNode) -> "OrderedDict[str, Any]":
    """The entries of ``overrides`` whose value differs from ``base`` (keys ``base`` lacks are kept)."""
    return OrderedDict((k, v) for k, v in overrides.items() if not _same(_value(base, k), v))


def nested(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"A.B": 1}`` -> ``{"A": {"B": 1}}`` (tuples become lists, as YAML has no tuples)."""
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return out


def run_output_dir(work_dir: str, run: Run, tiny: bool = False, startup_test: bool = False) -> str:
    """``<work dir>[/tiny][/startup-test]/<exp>/<run name>``."""
    parts = [work_dir] + (["tiny"] if tiny else []) + (["startup-test"] if startup_test else [])
    return os.path.join(*parts, run.exp, run.name)


class _YamlDumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (``CROP_SIZE: [512, 512]``)."""


_YamlDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def _write_checked(path: str, run: Run, header: Sequence[str], content: Dict[str, Any]) -> CfgNode:
    """Write ``path`` via a temporary file whose config must load and whose model must build (else
    :class:`GenerationError` naming the run); returns the loaded config."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = yaml.dump(content, Dumper=_YamlDumper, sort_keys=False, width=120, default_flow_style=False)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("".join(f"# {line}\n" for line in header) + body)
    try:
        cfg = load_run_config(tmp)
        problem = model_build_problem(cfg)
        if problem:
            raise GenerationError(f"run {run.name} (experiment {run.exp}): its model does not build: {problem}; "
                                  f"nothing written (fix the run in hrda_d2/experiments/runs.py)")
    except GenerationError as e:
        os.unlink(tmp)
        raise GenerationError(str(e).replace(tmp, path)) from None
    os.replace(tmp, path)
    return cfg


def _header(run: Run, what: str) -> List[str]:
    config = run.config
    return [f"{what} by tools/experiments.py --exp {run.exp}: regenerated on demand, do not edit",
            f"run {run.name} (seed {run.seed})",
            f"{config.item.title}",
            f"row: {config.label}; paper: {config.expected} ({config.metric})"]


def generate_experiment(exp: str, generated_dir: Optional[str] = None, work_dir: str = "output/experiments",
                        tiny: bool = False, tiny_iterations: int = 4) -> List[GeneratedRun]:
    """Write the YAML of every run of ``exp`` (and, with ``tiny``, its tiny overlay: the returned
    ``config_file`` is then the tiny one). Raises :class:`GenerationError` for a run that does not load or build."""
    generated_dir = generated_dir or os.path.join(CONFIG_DIR, "generated")
    folder = os.path.join(generated_dir, exp)
    out: List[GeneratedRun] = []
    for config in experiment(exp):
        base = add_hrda_config(get_cfg())
        base.merge_from_file(os.path.join(CONFIG_DIR, config.base))
        keys = differences(config.overrides, base)
        for run in config.runs():
            path = os.path.join(folder, f"{run.name}.yaml")
            content = {"_BASE_": os.path.relpath(os.path.join(CONFIG_DIR, config.base), folder), **nested(keys),
                       "SEED": run.seed, "OUTPUT_DIR": run_output_dir(work_dir, run)}
            cfg = _write_checked(path, run, _header(run, "Generated"), content)
            output_dir = run_output_dir(work_dir, run, tiny=tiny)
            if tiny:
                path = _write_tiny(path, run, cfg, output_dir, tiny_iterations)
            out.append(GeneratedRun(run, output_dir, path))
    logger.info("experiment %s: %d runs written under %s", exp, len(out), folder)
    return out


# ------------------------------------------------------------------------------------------------- --tiny
_SCALED = ("INPUT.SOURCE.SCALE", "INPUT.TARGET.SCALE", "INPUT.TEST.SCALE", "INPUT.TARGET.VALID_MASK_SIZE",
           "INPUT.TARGET.PSEUDO_MARGINS")
_CROPS = ("INPUT.SOURCE.CROP_SIZE", "INPUT.TARGET.CROP_SIZE", "INPUT.SYNC_CROP_SIZE", "MODEL.HRDA.HR_CROP_SIZE",
          "MODEL.TIMM.IMG_SIZE")
_CONTEXT_CROPS = ("INPUT.SOURCE.CROP_SIZE", "INPUT.TARGET.CROP_SIZE", "INPUT.SYNC_CROP_SIZE")  # seen at scale s


def _scaled(values: Sequence[int]) -> List[int]:
    return [max(0, int(round(v / TINY_FACTOR))) for v in values]


def _crop(values: Sequence[int], smallest: int = MIN_SIDE) -> List[int]:
    return [max(smallest, int(v) // TINY_FACTOR) for v in values]


def tiny_overrides(cfg: CfgNode, iterations: int = 4) -> "OrderedDict[str, Any]":
    """The keys that shrink the loaded full-size run config ``cfg`` (``iterations`` training iterations)."""
    context_scale = min(float(s) for s in cfg.MODEL.HRDA.SCALES)
    context_side = MIN_SIDE if context_scale >= 1 else int(math.ceil(MIN_SIDE / context_scale))
    out: "OrderedDict[str, Any]" = OrderedDict()
    for key in _SCALED:
        out[key] = _scaled(_value(cfg, key))
    for key in _CROPS:
        values = list(_value(cfg, key))
        out[key] = _crop(values, context_side if key in _CONTEXT_CROPS else MIN_SIDE) if values else []
    window = list(cfg.TEST.SLIDE.CROP_SIZE)
    tiny_window = _crop(window, context_side)
    out["TEST.SLIDE.CROP_SIZE"] = tiny_window
    out["TEST.SLIDE.STRIDE"] = [max(1, t * s // w) for t, s, w in zip(tiny_window, cfg.TEST.SLIDE.STRIDE, window)]
    out["UDA.MIC.BLOCK_SIZE"] = max(1, int(cfg.UDA.MIC.BLOCK_SIZE) // TINY_FACTOR)
    # the demo's model (configs/demo_hrda.yaml), random weights
    out["MODEL.DEVICE"] = "cpu"
    out["MODEL.WEIGHTS"] = ""
    if cfg.MODEL.BACKBONE.NAME == "build_mit_backbone":
        out["MODEL.MIT.VARIANT"] = "mit_b0"
        out["MODEL.MIT.DROP_PATH_RATE"] = 0.0
        out["MODEL.MIT.CHECKPOINT_ACTIVATIONS"] = False
    elif cfg.MODEL.BACKBONE.NAME == "build_timm_backbone":
        if "dinov2" in cfg.MODEL.TIMM.NAME:
            out["MODEL.TIMM.NAME"] = "vit_small_patch14_dinov2"
        out["MODEL.TIMM.WEIGHTS"] = ""
        out["MODEL.TIMM.DROP_PATH_RATE"] = 0.0
        out["MODEL.TIMM.CHECKPOINT_ACTIVATIONS"] = False
        out["MODEL.TIMM.PYRAMID_CHANNELS"] = 64
    elif cfg.MODEL.BACKBONE.NAME in ("VFMViT", "VFMViTAdapter"):  # the VFM recipes: ViT-S/14, random weights
        out["MODEL.TIMM.NAME"] = "vit_small_patch14_dinov2"
        out["MODEL.TIMM.WEIGHTS"] = ""
        out["MODEL.TIMM.DROP_PATH_RATE"] = 0.0
        out["MODEL.TIMM.CHECKPOINT_ACTIVATIONS"] = False
        if cfg.MODEL.BACKBONE.NAME == "VFMViTAdapter":  # its resized input must be a multiple of 14 and 32: 224
            out["MODEL.VFM.INPUT_SCALE"] = VFM_ADAPTER_TINY_INPUT / out["INPUT.SOURCE.CROP_SIZE"][0]
        out["UDA.VFM.FD_MODEL"] = "vit_small_patch14_reg4_dinov2"
        out["UDA.VFM.FD_WEIGHTS"] = ""
        out["UDA.VFM.FD_SIZE"] = 56  # 4 x 4 tokens (406 / 8 rounded to the patch)
    elif cfg.MODEL.BACKBONE.NAME == "build_resnet_v1c_backbone":  # the DeepLabV2 rows: the smallest V1c ResNet
        out["MODEL.RESNETS.DEPTH"] = 50
    out["MODEL.SEM_SEG_HEAD.EMBED_DIM"] = 64
    out["MODEL.HRDA.ATTENTION_EMBED_DIM"] = 64
    out["UDA.FD.LAMBDA"] = 0.0  # the ImageNet model would be a random network
    out["UDA.DEBUG_IMG_INTERVAL"] = 0
    out["DATASETS.RCS.MIN_PIXELS"] = 10  # as the demo: the replicas' classes are small
    out["DATALOADER.NUM_WORKERS"] = 0
    out["SOLVER.MAX_ITER"] = int(iterations)
    out["SOLVER.IMS_PER_BATCH"] = 2
    out["SOLVER.CHECKPOINT_PERIOD"] = int(iterations)
    out["TEST.EVAL_PERIOD"] = int(iterations)
    out["TEST.CITYSCAPES_OFFICIAL_EVAL"] = False
    return out


def _write_tiny(full_path: str, run: Run, cfg: CfgNode, output_dir: str, iterations: int) -> str:
    folder = os.path.join(os.path.dirname(full_path), "tiny")
    path = os.path.join(folder, os.path.basename(full_path))
    content = {"_BASE_": os.path.relpath(full_path, folder), **nested(tiny_overrides(cfg, iterations)),
               "OUTPUT_DIR": output_dir}
    _write_checked(path, run, _header(run, "Tiny CPU version (--tiny)"), content)
    return path
