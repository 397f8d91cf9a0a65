"""MODEL.COMPILE: backbone and heads compiled in place; parameter names (checkpoints) unchanged."""
import pytest
import torch
from detectron2.modeling import build_model
from tests.helpers.tiny_configs import small_input_hrda_cfg



def test_compile_keeps_parameter_names():
    plain, compiled = build_model(small_input_hrda_cfg()), build_model(small_input_hrda_cfg(**{"MODEL.COMPILE": True}))
    assert list(plain.state_dict()) == list(compiled.state_dict())
    assert all(m._compiled_call_impl is not None
               for m in (compiled.backbone, compiled.sem_seg_head.head, compiled.sem_seg_head.scale_attention))
    assert plain.backbone._compiled_call_impl is None


@pytest.mark.slow
def test_compiled_inference_equals_eager():
    plain = build_model(small_input_hrda_cfg()).eval()
    compiled = build_model(small_input_hrda_cfg(**{"MODEL.COMPILE": True})).eval()
    compiled.load_state_dict(plain.state_dict())
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        diff = (compiled.whole_inference(images) - plain.whole_inference(images)).abs().max().item()
    assert diff <= 1e-4
