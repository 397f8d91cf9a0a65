"""The DeepLabV2 reference set (tests/fixtures/dlv2_reference): original-layout files written once per session,
converted with the project's converter, and the configs of the fixture's models (its README, "Model settings")."""
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint.resnet_conversion import resnet_v1c_key
from tests.fixtures.dlv2_reference import make_original_files as mof
from tests.helpers.paths import DLV2_REFERENCE_DIR, TOOLS_DIR
from tests.helpers.scripts import import_script


def dlv2_cfg(hrda: bool, **overrides):
    """ResNet-101-V1c + DeepLabV2 head (dilations 6, 12), plain (one scale, whole inference) or HRDA with the
    fixture's 128 detail crop; the Table 2 training settings otherwise (configs/Base-DeepLabV2.yaml values)."""
    cfg = add_hrda_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_v1c_backbone"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "DLV2Head"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res5"]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12]
    cfg.MODEL.HRDA.SCALES = [1.0, 0.5] if hrda else [1.0]
    cfg.MODEL.HRDA.HR_CROP_SIZE = [128, 128]
    cfg.TEST.MODE = "whole"
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for name in path:
            node = node[name]
        node[leaf] = value
    return cfg


def our_name(original: str) -> str:
    """The fixture's parameter names (``backbone.*``, ``decode_head.*``, ``D.*``) -> names in our step."""
    if original.startswith("backbone."):
        return "student.backbone." + resnet_v1c_key(original[len("backbone."):])
    if original.startswith("decode_head."):
        name = original[len("decode_head."):].replace(".conv.", ".")
        # the plain segmentor's decode_head.X is its SingleScaleHead's head.X (HRDAHead: decode_head.head.X already)
        return "student.sem_seg_head." + (name if name.startswith(("head.", "scale_attention.")) else "head." + name)
    return "discriminator." + original[len("D."):]


def batches(io, hrda: bool):
    step = 1 if hrda else 2  # plain steps use 128 x 128 inputs, exact subsampling (README)
    source = [{"image": torch.from_numpy(np.ascontiguousarray(img[::step, ::step])).permute(2, 0, 1),
               "sem_seg": torch.from_numpy(np.ascontiguousarray(lbl[::step, ::step])).long()}
              for img, lbl in zip(io["train_image_rgb_uint8"], io["train_label"])]
    target = [{"image": torch.from_numpy(np.ascontiguousarray(img[::step, ::step])).permute(2, 0, 1)}
              for img in io["target_image_rgb_uint8"]]
    return source, target


@pytest.fixture(scope="session")
def dlv2_io() -> Dict[str, np.ndarray]:
    inputs, outputs = (np.load(DLV2_REFERENCE_DIR / f"dlv2_{k}.npz") for k in ("inputs", "outputs"))
    return {**{k: inputs[k] for k in inputs.files}, **{k: outputs[k] for k in outputs.files}}


@pytest.fixture(scope="session")
def dlv2_ref():
    return json.loads((DLV2_REFERENCE_DIR / "dlv2_ref.json").read_text())


@pytest.fixture(scope="session")
def dlv2_originals(tmp_path_factory) -> Dict[str, Path]:
    """{file name: path} of every original-layout file of the fixture (~0.9 GB, ~10 s)."""
    return mof.write_original_files(tmp_path_factory.mktemp("dlv2_original"), files=mof.DEFAULT_FILES + mof.MINENT_FILES)


@pytest.fixture(scope="session")
def dlv2_converted(dlv2_originals, tmp_path_factory) -> Dict[str, Path]:
    """The fixture's ImageNet file and the two AdvSeg checkpoints (student) converted by
    tools/convert_mmseg_checkpoint.py: keys ``imagenet``, ``plain``, ``hrda``."""
    tool = import_script(TOOLS_DIR / "convert_mmseg_checkpoint.py", "convert_mmseg_checkpoint")
    out = tmp_path_factory.mktemp("dlv2_converted")
    sources = {"imagenet": mof.IMAGENET_FILE, "plain": "dlv2red_advseg_checkpoint.pth",
               "hrda": "hrda_dlv2red_advseg_checkpoint.pth"}
    converted = {}
    for key, name in sources.items():
        converted[key] = out / f"{key}.pth"
        assert tool.main([str(dlv2_originals[name]), str(converted[key])]) == 0
    return converted

