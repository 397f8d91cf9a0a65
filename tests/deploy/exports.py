"""Models exported once per test session for the deploy tests, and the comparison with eager PyTorch.

Every export goes through ``tools/deploy/export_model.py``'s ``main(argv)`` (in this process) with a checkpoint of
seeded random weights (``torch.save({"model": state_dict})``) as MODEL.WEIGHTS, so the eager
``SemSegPredictor`` of the same config and checkpoint has exactly the exported weights. Families:

* ``demo_hrda``: configs/demo_hrda.yaml as it is (two-scale MiT-b0 HRDA; slide windows 128 / 64, HR tiles 64 / 32,
  test rescale [256, 128]): graphs ``tiles`` + ``window``;
* ``daformer``: configs/gta2cs_daformer.yaml, tiny, TEST.MODE whole (one-scale MiT-b0 DAFormer, one ``whole`` graph);
* ``dlv2``: configs/gta2cs_dacs_dlv2.yaml, tiny (ResNet-50 V1c DeepLabV2, whole inference);
* ``dinov2_hrda``: configs/gtaHR2csHR_hrda_dinov2_vitb.yaml, tiny (timm ViT-S/14 DINOv2 HRDA: fixed-shape graphs);
* ``vfm_uda``: configs/vfm_uda/gta2cs_vfm_uda_vitb.yaml, tiny (single-pass ViT-S/14, slide windows merged as
  probabilities: a fixed-shape ``whole`` graph).

"tiny" is ``hrda_d2.experiments.configs.tiny_overrides`` (the ``--tiny`` runs: sizes / 8, small backbones).
"""
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from hrda_d2.engine.predictor import SemSegPredictor
from hrda_d2.experiments.configs import load_run_config, tiny_overrides
from hrda_d2_deploy.runtime import read_manifest
from tests.helpers.paths import CONFIG_DIR, TOOLS_DIR
from tests.helpers.scripts import import_script

logger = logging.getLogger(__name__)

FAMILIES: Dict[str, Tuple[str, bool, Tuple[str, ...]]] = {  # name -> (config, tiny, extra overrides)
    "demo_hrda": ("demo_hrda.yaml", False, ()),
    "daformer": ("gta2cs_daformer.yaml", True, ("TEST.MODE", "whole")),
    "dlv2": ("gta2cs_dacs_dlv2.yaml", True, ()),
    "dinov2_hrda": ("gtaHR2csHR_hrda_dinov2_vitb.yaml", True, ()),
    "vfm_uda": ("vfm_uda/gta2cs_vfm_uda_vitb.yaml", True, ()),
}
FORMATS = ("onnx", "torchscript")
# the issue's bound on |deploy - eager| logits, relative to the logits' magnitude as the exporter's check
# (hrda_d2.export.DEFAULT_TOLERANCE): 1e-4 x max(1, max |eager logit|). All models here stay below 1e-4 absolute
# except the randomly initialised DeepLabV2 in ONNX, whose logits reach 62 (ResNet-50 with untrained BN statistics):
# 1.4e-4 there, 2.3e-6 of the largest logit (float32 rounding of onnxruntime's convolutions).
MAX_ABS_DIFF = 1e-4
MIN_AGREEMENT = 99.99  # % of argmax pixels


def export_tool():
    """tools/deploy/export_model.py as a module; ``main(argv)`` -> exit status."""
    return import_script(TOOLS_DIR / "deploy" / "export_model.py", "export_model")


def family_opts(family: str, opts: Sequence[str] = ()) -> Tuple[str, List[str]]:
    """(config file, overrides) of a family, tiny where it is, with ``opts`` last."""
    name, tiny, extra = FAMILIES[family]
    path = str(CONFIG_DIR / name)
    out: List[str] = []
    if tiny:
        for key, value in tiny_overrides(load_run_config(path)).items():
            out += [key, str(value)]
    return path, out + list(extra) + ["MODEL.DEVICE", "cpu"] + list(opts)


def family_cfg(family: str, opts: Sequence[str] = ()) -> CfgNode:
    path, all_opts = family_opts(family, opts)
    return load_run_config(path, all_opts)


def write_weights(family: str, path: Path, seed: int = 0) -> str:
    """A checkpoint ``{"model": state_dict}`` of the family's model with seeded random weights."""
    torch.manual_seed(seed)
    model = build_model(family_cfg(family))
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def make_image(height: int, width: int, seed: int = 1) -> np.ndarray:
    """An ``H x W x 3`` uint8 image: random colours at 1/16 of the size, enlarged bilinearly (smooth regions)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def make_batch(height: int, width: int, seed: int = 2, n: int = 1) -> np.ndarray:
    """``n x 3 x H x W`` float32 RGB 0..255 for ``inference`` (``n`` different images)."""
    images = [make_image(height, width, seed + i).transpose(2, 0, 1) for i in range(n)]
    return np.ascontiguousarray(np.stack(images), dtype=np.float32)


def compare(deployed: np.ndarray, eager: np.ndarray) -> Tuple[float, float]:
    """(largest |deployed - eager|, argmax agreement in %) of ``[N x] K x H x W`` logits (classes on axis -3)."""
    assert deployed.shape == eager.shape, (deployed.shape, eager.shape)
    diff = float(np.abs(deployed.astype(np.float64) - eager.astype(np.float64)).max())
    agreement = float((deployed.argmax(axis=-3) == eager.argmax(axis=-3)).mean() * 100.0)
    return diff, agreement


def assert_equal_to_eager(what: str, deployed: np.ndarray, eager: np.ndarray) -> Tuple[float, float]:
    diff, agreement = compare(deployed, eager)
    magnitude = float(np.abs(eager).max())
    logger.info("MEASURED %s: max |diff| %.3g (max |eager| %.3g), argmax agreement %.5f %%", what, diff, magnitude,
                agreement)
    bound = MAX_ABS_DIFF * max(1.0, magnitude)
    assert diff <= bound, f"{what}: largest logit difference {diff:.3g} > {MAX_ABS_DIFF} x max(1, {magnitude:.3g})"
    assert agreement >= MIN_AGREEMENT, f"{what}: argmax agreement {agreement:.5f} % < {MIN_AGREEMENT} %"
    return diff, agreement


@dataclass
class Exported:
    """An exported folder, its config (with MODEL.WEIGHTS) and manifest; ``eager()``: the SemSegPredictor of the
    same config (built once)."""

    family: str
    fmt: str
    folder: str
    cfg: CfgNode
    manifest: dict
    _eager: Optional[SemSegPredictor] = field(default=None, repr=False)

    def eager(self) -> SemSegPredictor:
        if self._eager is None:
            self._eager = SemSegPredictor(self.cfg)
        return self._eager

    def eager_inference(self, batch: np.ndarray) -> np.ndarray:
        model = self.eager().model
        with torch.no_grad():
            return model.inference(model.normalize(torch.from_numpy(batch))).numpy()


class ExportCache:
    """Exports made on first use and kept for the session (``root``: a session temp folder)."""

    def __init__(self, root: Path):
        self.root = root
        self._weights: Dict[str, str] = {}
        self._exports: Dict[tuple, Exported] = {}
        self.tool = export_tool()

    def weights(self, family: str) -> str:
        if family not in self._weights:
            self._weights[family] = write_weights(family, self.root / f"{family}.pth")
        return self._weights[family]

    def export_argv(self, family: str, fmt: str, output: str, *flags: str, opts: Sequence[str] = ()) -> List[str]:
        config, all_opts = family_opts(family, opts)
        return (["--config-file", config, "--format", fmt, "--output", output, *flags] + all_opts
                + ["MODEL.WEIGHTS", self.weights(family)])

    def get(self, family: str, fmt: str, *flags: str, opts: Sequence[str] = ()) -> Exported:
        key = (family, fmt, flags, tuple(opts))
        if key not in self._exports:
            name = "-".join([family, fmt, *(f.strip("-") for f in flags), *map(str, opts)])
            folder = str(self.root / name.replace("/", "_").replace(" ", ""))
            # the folder exists: --overwrite replaces it (tests/deploy/test_errors.py checks the stale file is gone)
            os.makedirs(folder)
            Path(folder, "stale.txt").write_text("from an earlier export\n")
            with torch.enable_grad():  # main() must leave autograd as it found it
                status = self.tool.main(self.export_argv(family, fmt, folder, "--overwrite", *flags, opts=opts))
                assert torch.is_grad_enabled()
            assert status == 0, f"export of {key} failed"
            cfg = family_cfg(family, list(opts) + ["MODEL.WEIGHTS", self.weights(family)])
            self._exports[key] = Exported(family, fmt, folder, cfg, read_manifest(folder))
        return self._exports[key]
