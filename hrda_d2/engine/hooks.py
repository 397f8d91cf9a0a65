"""Training hooks: the DACS debug-image panel (docs/method.md §7.2 step 10) and the periodic checkpointer."""
from __future__ import annotations

import logging
import os
from typing import List, Sequence

import numpy as np
import torch
from detectron2.engine import HookBase, hooks
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils.events import get_event_storage
from PIL import Image, ImageDraw

from ..modeling.pixel_normalizer import PixelNormalizer
from ..uda.dacs_step import DACSVisuals
from ..utils.colorize import colorize_labels, grey_image
from ..utils.rng import preserve_rng_states

__all__ = ["DebugImageHook", "PeriodicCheckpointer", "denormalize_image"]

logger = logging.getLogger(__name__)


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer, where ``SOLVER.CHECKPOINT_PERIOD`` 0 means no periodic checkpoints: only
    ``model_final`` after the last iteration (and :class:`~.preemption.PreemptionHook`'s on a signal)."""

    def step(self, iteration: int, **kwargs) -> None:
        if self.period > 0:
            super().step(iteration, **kwargs)
        elif self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=int(iteration), **kwargs)


def denormalize_image(image: torch.Tensor, normalizer: PixelNormalizer) -> np.ndarray:
    """Normalised ``3 x H x W`` image -> ``H x W x 3`` uint8 RGB."""
    x = normalizer.denormalize(image.float().cpu())
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _grid(rows: List[List[tuple]]) -> Image.Image:
    """Tiles ``(title, H x W x 3 uint8)`` in a grid with a title strip above each tile."""
    tile_h = max(t[1].shape[0] for row in rows for t in row)
    tile_w = max(t[1].shape[1] for row in rows for t in row)
    title_h = 14
    ncols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (ncols * tile_w, len(rows) * (tile_h + title_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, (title, tile) in enumerate(row):
            x0, y0 = c * tile_w, r * (tile_h + title_h)
            draw.text((x0 + 2, y0 + 1), title, fill=(0, 0, 0))
            canvas.paste(Image.fromarray(tile), (x0, y0 + title_h))
    return canvas


class DebugImageHook(HookBase):
    """After every iteration whose DACS step kept its tensors (``trainer.uda_step.visuals``, a
    :class:`~hrda_d2.uda.dacs_step.DACSVisuals`: every
    ``UDA.DEBUG_IMG_INTERVAL`` iterations), writes ``<output_dir>/debug/<iter+1:06d>_<sample>.png`` and puts the
    same panels into the event storage (``put_image``: TensorBoard): source image and label, target image,
    pseudo-label, pseudo weight, ClassMix mask, mixed image and label, and the student's LR / HR / fused
    prediction and scale attention on the target image (eval mode, no gradient). With MIC, a row with the masked
    image, its label and the student's fused prediction on it.

    The training RNG streams and the model mode are left as they were.
    """

    def __init__(self, output_dir: str, stuff_colors: Sequence[Sequence[int]], max_samples: int = 2):
        self._dir = os.path.join(output_dir, "debug")
        self._colors = [list(c) for c in stuff_colors]
        self._max_samples = max_samples

    def after_step(self) -> None:
        step = self.trainer.uda_step
        if step.visuals is None:
            return
        with preserve_rng_states():
            self._write(step.student, step.visuals)

    @torch.no_grad()
    def _write(self, student, visuals: DACSVisuals) -> None:
        os.makedirs(self._dir, exist_ok=True)
        storage = get_event_storage()
        normalizer = student.pixel_normalizer
        scales = masked_pred = None
        with inference_context(student):
            if student.is_multi_scale:
                scales = student.forward_scales(visuals.target_image[: self._max_samples])
            if visuals.masked_image is not None:  # MIC
                masked_pred = student.whole_inference(visuals.masked_image[: self._max_samples]).argmax(1)
        for i in range(min(self._max_samples, visuals.source_image.shape[0])):
            rows = [
                [("source", denormalize_image(visuals.source_image[i], normalizer)),
                 ("source label", colorize_labels(visuals.source_label[i], self._colors)),
                 ("target", denormalize_image(visuals.target_image[i], normalizer)),
                 ("pseudo-label", colorize_labels(visuals.pseudo_label[i], self._colors)),
                 ("pseudo weight", grey_image(visuals.pseudo_weight[i]))],
                [("mix mask", grey_image(visuals.mix_mask[i, 0].float())),
                 ("mixed (aug)", denormalize_image(visuals.mixed_image[i], normalizer)),
                 ("mixed label", colorize_labels(visuals.mixed_label[i], self._colors))],
            ]
            if scales is not None:
                rows.append([
                    ("LR", colorize_labels(scales["lr"][i].argmax(0), self._colors)),
                    ("HR", colorize_labels(scales["hr"][i].argmax(0), self._colors)),
                    ("fused", colorize_labels(scales["fused"][i].argmax(0), self._colors)),
                    ("attention", grey_image(scales["attention"][i, 0])),
                ])
            if masked_pred is not None and i < masked_pred.shape[0]:
                rows.append([
                    ("masked (MIC)", denormalize_image(visuals.masked_image[i], normalizer)),
                    ("masked label", colorize_labels(visuals.masked_label[i], self._colors)),
                    ("masked pred.", colorize_labels(masked_pred[i], self._colors)),
                ])
            panel = _grid(rows)
            panel.save(os.path.join(self._dir, f"{self.trainer.iter + 1:06d}_{i}.png"))
            storage.put_image(f"dacs_debug/{i}", torch.from_numpy(np.array(panel)).permute(2, 0, 1).float() / 255)
        logger.info(f"Wrote DACS debug panels to {self._dir}")
