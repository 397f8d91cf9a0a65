"""The ``vfm_infer`` phase: VFM-UDA against MIC(HRDA) slide inference with the same DINOv2 ViT, in one process.

The VFM-UDA paper (tue-mps/vfm-uda README, abstract) reports an 8.4x inference speed-up of VFM-UDA over the prior
non-VFM state of the art (MIC(HRDA) with MiT-b5) at an equivalent model size. This phase measures the part of that
claim that is about the inference scheme, with the encoder held fixed: both models get the same DINOv2 ViT
(``MODEL.TIMM.NAME`` of :data:`VIT_NAMES`, random weights) and the same test image.

* ``mic_hrda``: :data:`MIC_HRDA_CONFIG` (HRDA context 0.5 + detail 1.0, DAFormer head on a simple feature
  pyramid, scale attention; slide windows 1024 / stride 512, each window's detail branch on overlapping HR tiles
  512 / stride 256; the original's per-window tile passes, ``TEST.SLIDE.REUSE_HR_TILES`` off as in the baseline
  of every phase);
* ``vfm_uda``: :data:`VFM_UDA_CONFIG` (``VFMViT`` at 1.1 x the window size + the lightweight head, slide windows
  1024 / stride 512, window probabilities averaged).

Image sizes other than 1024 x 2048 scale the test geometry with the image height ``H`` (factor ``H / 1024``):
slide window ``H`` and stride ``H / 2`` for both models, and for MIC(HRDA) the HR tiles ``H / 2`` (stride
``H / 4``) and ``MODEL.TIMM.IMG_SIZE`` (the stored position grid, the context / tile input size) ``H / 2``; the
HRDA scales, VFM-UDA's ``MODEL.VFM.INPUT_SCALE`` 1.1 and the patch size stay. ``H`` must be a multiple of 64.

Timing: one warm-up call of each model, then ``infer_runs`` rounds that call both models once, in alternating
order (VFM-UDA first in even rounds), through the Detectron2 API ``model([{"image", "height", "width"}])`` in
eval mode under ``torch.no_grad()``; the medians of the rounds are reported. FLOPs: fvcore multiply-adds of the
same call (:mod:`.flops`) and the ViT's share of them, with the ops fvcore could not count named. The ViT inputs
of one call (images through the patch embedding and their tokens) are recorded by a forward hook on the patch
embedding.
"""
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from detectron2.modeling import build_model

from hrda_d2.config import load_config
from .flops import flop_analysis
from .settings import BenchmarkSettings
from .timing import synchronize

__all__ = ["MIC_HRDA_CONFIG", "MODEL_LABELS", "VFM_UDA_CONFIG", "VIT_NAMES", "build_vfm_cfgs", "phase_vfm_infer",
           "scaled_geometry"]

_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MIC_HRDA_CONFIG = _CONFIGS / "gtaHR2csHR_mic_hrda_dinov2_vitb.yaml"
VFM_UDA_CONFIG = _CONFIGS / "vfm_uda" / "gta2cs_vfm_uda_vitb.yaml"
MODEL_LABELS = {"mic_hrda": "MIC(HRDA)", "vfm_uda": "VFM-UDA"}
VIT_NAMES = {"s": "vit_small_patch14_dinov2", "b": "vit_base_patch14_dinov2", "l": "vit_large_patch14_dinov2"}
# the configs' test geometry at a 1024 x 2048 image (Cityscapes)
_REFERENCE_HEIGHT = 1024


def scaled_geometry(image_hw: Sequence[int]) -> Dict[str, int]:
    """Slide window / stride (both models) and HR tile (MIC(HRDA); its stride is half of it) for an image of
    ``image_hw``: the configs' 1024 / 512 / 512 scaled by ``H / 1024``. ``ValueError`` if ``H`` is not a
    positive multiple of 64 (the HR tiles, their half-tile stride and the 0.5 context must stay multiples of 16)."""
    h = int(image_hw[0])
    if h <= 0 or h % 64:
        raise ValueError(f"--image-size height {h} must be a positive multiple of 64 for the vfm_infer phase "
                         f"(the windows scale with it: window = H, stride = HR tile = H / 2)")
    return {"window": h, "stride": h // 2, "hr_tile": h // 2}


def build_vfm_cfgs(settings: BenchmarkSettings) -> Dict[str, Any]:
    """The frozen configs ``{"mic_hrda", "vfm_uda"}`` of :func:`phase_vfm_infer`: the two recipes with the ViT
    of ``settings.vit``, no weights, the baseline's switches (fp32, no tile reuse, no compile), the scaled test
    geometry (:func:`scaled_geometry`), then ``settings.opts`` (applied to both)."""
    if settings.vit not in VIT_NAMES:
        raise ValueError(f"--vit {settings.vit!r}: choose from {sorted(VIT_NAMES)}")
    g = scaled_geometry(settings.image_size)
    window, stride, tile = f"[{g['window']}, {g['window']}]", f"[{g['stride']}, {g['stride']}]", \
        f"[{g['hr_tile']}, {g['hr_tile']}]"
    common = ["MODEL.DEVICE", settings.device, "MODEL.WEIGHTS", "", "MODEL.TIMM.WEIGHTS", "",
              "MODEL.TIMM.NAME", VIT_NAMES[settings.vit], "MODEL.COMPILE", "False", "SOLVER.AMP.ENABLED", "False",
              "TEST.MODE", "slide", "TEST.SLIDE.CROP_SIZE", window, "TEST.SLIDE.STRIDE", stride,
              "OUTPUT_DIR", tempfile.mkdtemp(prefix="hrda_bench_vfm_")]
    mic = ["MODEL.HRDA.HR_CROP_SIZE", tile, "MODEL.TIMM.IMG_SIZE", tile, "TEST.SLIDE.REUSE_HR_TILES", "False"]
    return {"mic_hrda": load_config(str(MIC_HRDA_CONFIG), common + mic + list(settings.opts), freeze=True),
            "vfm_uda": load_config(str(VFM_UDA_CONFIG), common + list(settings.opts), freeze=True)}


def _vit_module_name(model: torch.nn.Module) -> str:
    """Name in ``model`` of the ViT (the module holding the ``patch_embed``), e.g. ``backbone.vit``."""
    name = next((n for n, _ in model.named_modules() if n.split(".")[-1] == "patch_embed"), None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no patch_embed module (the vfm_infer phase needs a ViT)")
    return name.rsplit(".", 1)[0]


class _PatchEmbedRecorder:
    """Forward hook on a ViT's patch embedding: ``calls`` = ``(images, tokens per image)`` of every call."""

    def __init__(self, model: torch.nn.Module):
        embed = model.get_submodule(_vit_module_name(model) + ".patch_embed")
        self.calls: List[Tuple[int, int]] = []
        self.active = False
        embed.register_forward_hook(self._record)

    def _record(self, _module, _inputs, out: torch.Tensor) -> None:
        if self.active:  # out: N x L x C or N x h x w x C
            self.calls.append((int(out.shape[0]), int(out.numel() // (out.shape[0] * out.shape[-1]))))


def _vit_inputs(calls: Sequence[Tuple[int, int]]) -> Dict[str, int]:
    """``{"images": ViT images of one call, "tokens": their tokens, "by_tokens": {tokens per image: images}}``."""
    by_tokens: Counter = Counter()
    for n, tokens in calls:
        by_tokens[tokens] += n
    return {"images": sum(by_tokens.values()), "tokens": sum(t * n for t, n in by_tokens.items()),
            "by_tokens": {str(t): n for t, n in sorted(by_tokens.items())}}


def phase_vfm_infer(settings: BenchmarkSettings) -> Dict[str, Any]:
    """Both models on one random 0..255 image of ``settings.image_size`` (see the module docstring):
    ``{"models": {name: {"s_per_image", "img_s", "runs_s", "first_s", "vit_inputs", "config", ["flops",
    "flops_vit" (the ViT's share; the rest: feature pyramid, heads, fusion), "flops_unsupported"]}},
    "ratio_img_s": vfm_uda / mic_hrda images/s, ["ratio_flops": vfm_uda / mic_hrda], "vit", "image_size",
    "geometry", "rounds"}``."""
    cfgs = build_vfm_cfgs(settings)
    torch.manual_seed(0)
    models = {name: build_model(cfg).eval() for name, cfg in cfgs.items()}
    h, w = settings.image_size
    device = next(iter(models.values())).device
    image = (torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255).to(device)
    inputs = [{"image": image, "height": h, "width": w}]
    out: Dict[str, Dict[str, Any]] = {name: {"runs_s": []} for name in models}

    def timed(name: str) -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            models[name](inputs)
        synchronize(device)
        return time.perf_counter() - start

    for name, model in models.items():  # warm-up, with the ViT inputs recorded
        recorder = _PatchEmbedRecorder(model)
        recorder.active = True
        out[name]["first_s"] = timed(name)
        recorder.active = False
        out[name]["vit_inputs"] = _vit_inputs(recorder.calls)
    order = list(models)
    for r in range(max(1, settings.infer_runs)):
        for name in (reversed(order) if r % 2 else order):
            out[name]["runs_s"].append(timed(name))
    for name, path in (("mic_hrda", MIC_HRDA_CONFIG), ("vfm_uda", VFM_UDA_CONFIG)):
        seconds = statistics.median(out[name]["runs_s"])
        out[name].update(s_per_image=seconds, img_s=1.0 / seconds, config=str(path.relative_to(_CONFIGS.parent)))
    result: Dict[str, Any] = {
        "models": out, "ratio_img_s": out["vfm_uda"]["img_s"] / out["mic_hrda"]["img_s"],
        "vit": VIT_NAMES[settings.vit], "image_size": [h, w], "rounds": max(1, settings.infer_runs), "geometry": scaled_geometry(settings.image_size)}
    if settings.flops:
        for name, model in models.items():
            analysis = flop_analysis(model, lambda x, m=model: m([{"image": x, "height": h, "width": w}])[0]["sem_seg"],
                                     image)
            with torch.no_grad():
                out[name]["flops"] = int(analysis.total())
            out[name]["flops_vit"] = int(analysis.by_module()["owner." + _vit_module_name(model)])
            out[name]["flops_unsupported"] = dict(sorted(analysis.unsupported_ops().items()))
        result["ratio_flops"] = out["vfm_uda"]["flops"] / out["mic_hrda"]["flops"]
    return result

