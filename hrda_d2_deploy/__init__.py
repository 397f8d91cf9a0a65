"""hrda_d2_deploy: run a model exported by ``tools/deploy/export_model.py`` without Detectron2 (and, with ONNX,
without PyTorch).

Needs only NumPy and the graphs' runtime (``onnxruntime``, or ``torch`` for TorchScript folders; OpenCV when the
exported test rescale changes an image's size). The folder can be copied on its own beside an application::

    from hrda_d2_deploy import DeployPredictor, RuntimeOptions
    predictor = DeployPredictor("exported/demo_hrda_onnx", RuntimeOptions(threads=4))
    sem_seg = predictor(bgr_image)["sem_seg"].argmax(axis=0)   # H x W class ids

:mod:`.geometry` (windows, tiles, test rescale) is shared with the eager model of :mod:`hrda_d2`; nothing here
imports :mod:`hrda_d2` or Detectron2 (``tests/test_layering.py``).
"""
from .predictor import DeployPredictor, ExportedModel
from .runtime import ExportedModelError, RuntimeOptions

__all__ = ["DeployPredictor", "ExportedModel", "ExportedModelError", "RuntimeOptions"]
