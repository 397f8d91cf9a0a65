"""fp16 and dynamically quantised int8 ONNX exports of the demo HRDA model: the manifest reports the argmax
agreement measured at export (at least the precision's default minimum) and the folder runs."""
import logging

import numpy as np
import pytest
import torch

from hrda_d2.export import DEFAULT_MIN_AGREEMENT
from hrda_d2_deploy import DeployPredictor
from tests.deploy.exports import compare, make_image

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.slow  # two more exports of ~10 s each


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_onnx_exports(exports, precision):
    exported = exports.get("demo_hrda", "onnx", "--precision", precision)
    manifest = exported.manifest
    assert manifest["precision"] == precision and manifest["format"] == "onnx"
    check = manifest["check"]["inference"]
    assert check["min_agreement"] == DEFAULT_MIN_AGREEMENT[precision]
    assert check["argmax_agreement"] >= DEFAULT_MIN_AGREEMENT[precision]
    for name in manifest["graphs"]:
        assert manifest["check"][name]["argmax_agreement"] >= DEFAULT_MIN_AGREEMENT[precision]
    image = make_image(512, 1024)
    ours = DeployPredictor(exported.folder)(image)["sem_seg"]
    with torch.no_grad():
        eager = exported.eager()(image)["sem_seg"].numpy()
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    diff, agreement = compare(ours, eager)
    logger.info(f"MEASURED demo_hrda onnx {precision}: export check max |diff| {check['max_abs_diff']:.3g}, agreement "
                f"{check['argmax_agreement']:.4f} %; predictor 512x1024 max |diff| {diff:.3g}, agreement {agreement:.4f} %")
    assert agreement >= DEFAULT_MIN_AGREEMENT[precision]
