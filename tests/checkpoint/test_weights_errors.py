"""Weights that do not fit, files that are not checkpoints, resume edge cases and a full disk (issue 14,
items 1, 2, 6 and 7).

Expectations are derived here from the two models' own state dicts (which keys differ in shape, which are
absent), not from the loader's report.
"""
import errno
import logging
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from hrda_d2 import add_hrda_config
from hrda_d2.checkpoint import (
    AtomicDetectionCheckpointer,
    CheckpointLoadError,
    IncompatibleCheckpointError,
    load_model_weights,
    mit_state_dict_shapes,
)
from hrda_d2.modeling.backbone.mit import MIT_VARIANTS
from hrda_d2.utils.file_io import DiskFullError
from tests.helpers.paths import REPO_ROOT
from tests.helpers.scripts import import_script

REPO = REPO_ROOT
CONFIG = REPO / "configs" / "demo_hrda.yaml"


def demo_cfg(*opts):
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "INPUT.TEST.SCALE", "[128, 64]"] + list(opts))
    return cfg


@pytest.fixture(scope="module")
def model():
    return build_model(demo_cfg())


@pytest.fixture(scope="module")
def five_class_checkpoint(tmp_path_factory):
    """A checkpoint of the same architecture with a 5-class head, and the keys whose shapes differ."""
    other = build_model(demo_cfg("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"))
    path = tmp_path_factory.mktemp("weights") / "five_classes.pth"
    torch.save({"model": other.state_dict()}, path)
    reference = build_model(demo_cfg()).state_dict()
    differing = sorted(k for k, v in other.state_dict().items() if v.shape != reference[k].shape)
    return path, differing


# ------------------------------------------------------------------------------------- 1. strict loading
def test_shape_mismatch_is_an_error_naming_file_and_keys(model, five_class_checkpoint):
    path, differing = five_class_checkpoint
    assert differing, "the 5-class head must differ from the 19-class one"
    with pytest.raises(IncompatibleCheckpointError) as error:
        load_model_weights(model, str(path))
    message = str(error.value)
    assert str(path) in message
    assert f"{len(differing)} key(s) with other shapes" in message
    assert all(k in message for k in differing[:10]), message
    assert "missing" not in message, "a reshaped key is reported once, not also as missing"


def test_keys_that_match_nothing_are_an_error_with_counts(model, tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"model": {"encoder.layer0.weight": torch.zeros(3), "encoder.layer1.weight": torch.zeros(3)}}, path)
    with pytest.raises(IncompatibleCheckpointError) as error:
        load_model_weights(model, str(path), source="student")
    message = str(error.value)
    # torch's BatchNorm accepts a missing num_batches_tracked counter (older files), so it is not missing
    expected_missing = len([k for k in model.state_dict() if not k.endswith(".num_batches_tracked")])
    assert f"{expected_missing} model key(s) missing" in message, message
    assert "2 checkpoint key(s) the model does not have: encoder.layer0.weight, encoder.layer1.weight" in message


def test_fitting_weights_load_strictly(model, tmp_path):
    source = build_model(demo_cfg())
    path = tmp_path / "fits.pth"
    torch.save({"model": source.state_dict()}, path)
    load_model_weights(model, str(path))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_training_from_backbone_weights_stays_tolerant(model, tmp_path, caplog):
    """MODEL.WEIGHTS for training (ImageNet backbone only): the head keys are reported, not an error."""
    path = tmp_path / "backbone.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}}, path)
    with caplog.at_level(logging.WARNING, logger="fvcore"):
        checkpointer = AtomicDetectionCheckpointer(model)
        checkpointer.logger.propagate = True
        checkpointer.load(str(path), checkpointables=[])
    assert any("sem_seg_head" in r.getMessage() for r in caplog.records)


def _tool(relative_path: str):
    """A command-line script of the repository as a module (its ``main`` runs in this process)."""
    return import_script(REPO / relative_path, Path(relative_path).stem)


def test_eval_only_and_demo_exit_with_the_mismatch(five_class_checkpoint, tmp_path):
    """tools/train_net.py --eval-only and demo/demo.py: SystemExit with a message (exit status 1) naming the file
    and a key, before any evaluation / prediction."""
    path, differing = five_class_checkpoint
    train_net = _tool("tools/train_net.py")
    args = train_net.default_argument_parser().parse_args(
        ["--eval-only", "--config-file", str(CONFIG), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(path),
         "OUTPUT_DIR", str(tmp_path / "eval")])
    with pytest.raises(SystemExit) as error:
        train_net.main(args)
    assert isinstance(error.value.code, str), "a message, i.e. exit status 1"
    assert error.value.code.startswith(f"train_net: {path} does not fit the model")
    assert differing[0] in error.value.code

    demo = _tool("demo/demo.py")
    with pytest.raises(SystemExit) as error:
        demo.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "x.png"), "--output", str(tmp_path),
                   "--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(path)])
    assert isinstance(error.value.code, str) and error.value.code.startswith(f"demo: {path} does not fit the model")
    assert differing[0] in error.value.code


# ------------------------------------------------------------------------------ 2. not a checkpoint / original
@pytest.mark.parametrize("content", [os.urandom(4096), b"<!DOCTYPE html><html><body>Sign in</body></html>\n"])
def test_a_file_that_is_no_checkpoint_is_named(model, tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointLoadError, match=rf"^{path} is not a PyTorch checkpoint \({len(content)} bytes; "):
        load_model_weights(model, str(path))


def test_an_original_segformer_file_says_to_convert_first(model, tmp_path):
    path = tmp_path / "mit_b0.pth"
    torch.save({k: torch.zeros(s) for k, s in mit_state_dict_shapes(MIT_VARIANTS["mit_b0"]).items()}, path)
    with pytest.raises(CheckpointLoadError) as error:
        load_model_weights(model, str(path))
    message = str(error.value)
    assert message.startswith(f"{path} is an official SegFormer ImageNet MiT file")
    assert f"python tools/convert_mmseg_checkpoint.py {path} converted.pth" in message


def test_a_missing_file_and_a_folder_are_named(model, tmp_path):
    with pytest.raises(CheckpointLoadError, match=rf"checkpoint {tmp_path} is a directory"):
        load_model_weights(model, str(tmp_path))
    with pytest.raises(CheckpointLoadError, match=rf"checkpoint {tmp_path}/nope.pth does not exist"):
        load_model_weights(model, str(tmp_path / "nope.pth"))


# ------------------------------------------------------------------------------------- 6. resume edge cases
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)


def _save(checkpointer, name, value):
    with torch.no_grad():
        checkpointer.model.linear.weight.fill_(value)
    checkpointer.save(name, iteration=int(value))


def test_resume_skips_a_truncated_last_checkpoint(tmp_path, caplog):
    checkpointer = AtomicDetectionCheckpointer(_Tiny(), str(tmp_path))
    _save(checkpointer, "model_0000001", 1.0)
    _save(checkpointer, "model_0000003", 3.0)
    _save(checkpointer, "model_0000005", 5.0)
    last = tmp_path / "model_0000005.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy that stopped half-way
    with caplog.at_level(logging.WARNING, logger="hrda_d2.checkpoint.detection_checkpoint"):
        chosen = checkpointer.resume_file()
    assert chosen == str(tmp_path / "model_0000003.pth")  # the newest intact one
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert f"names {last}, which is truncated" in warning and "model_0000003.pth instead" in warning
    checkpointer.load(chosen)
    assert torch.all(checkpointer.model.linear.weight == 3.0)


def test_resume_without_any_intact_checkpoint_says_what_to_do(tmp_path):
    checkpointer = AtomicDetectionCheckpointer(_Tiny(), str(tmp_path))
    _save(checkpointer, "model_0000001", 1.0)
    (tmp_path / "model_0000001.pth").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(RuntimeError, match=r"holds no other complete checkpoint.*delete .*last_checkpoint"):
        checkpointer.resume_file()
    assert AtomicDetectionCheckpointer(_Tiny(), str(tmp_path / "empty")).resume_file() == ""


# ----------------------------------------------------------------------------------------- 7. disk full
@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")])
def test_disk_full_names_the_file_and_the_intact_previous_checkpoint(tmp_path, monkeypatch, failure):
    checkpointer = AtomicDetectionCheckpointer(_Tiny(), str(tmp_path))
    _save(checkpointer, "model_0000001", 1.0)
    previous = (tmp_path / "model_0000001.pth").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError) as error:
        _save(checkpointer, "model_0000002", 2.0)
    assert str(error.value).startswith(f"no space left on device writing {tmp_path}/model_0000002.pth; previous "
                                       f"checkpoint {tmp_path}/model_0000001.pth is intact")
    assert error.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no partial file left
    assert (tmp_path / "model_0000001.pth").read_bytes() == previous
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    checkpointer = AtomicDetectionCheckpointer(_Tiny(), str(tmp_path))

    def broken(obj, f, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError) as error:
        _save(checkpointer, "model_0000001", 1.0)
    assert not isinstance(error.value, DiskFullError) and error.value.errno == errno.EIO
