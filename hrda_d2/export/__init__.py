"""Export to ONNX / TorchScript for the runtime without Detectron2 (:mod:`hrda_d2_deploy`); see :mod:`.exporter`."""
from .exporter import (DEFAULT_MIN_AGREEMENT, DEFAULT_TOLERANCE, ExportCheck, ExportCheckError, ExportError,
                       export_model, graph_modules, sample_image)

__all__ = ["DEFAULT_MIN_AGREEMENT", "DEFAULT_TOLERANCE", "ExportCheck", "ExportCheckError", "ExportError",
           "export_model", "graph_modules", "sample_image"]
