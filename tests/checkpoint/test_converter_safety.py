"""tools/convert_mmseg_checkpoint.py never destroys its input or an existing file (issue 14, item 5)."""
import os
import stat
from pathlib import Path

import pytest
import torch

from hrda_d2.checkpoint import mit_state_dict_shapes
from hrda_d2.modeling.backbone.mit import MIT_VARIANTS
from tests.helpers.paths import REPO_ROOT
from tests.helpers.scripts import import_script

REPO = REPO_ROOT


@pytest.fixture(scope="module")
def converter():
    return import_script(REPO / "tools" / "convert_mmseg_checkpoint.py", "convert_mmseg_checkpoint")


@pytest.fixture()
def segformer_file(tmp_path) -> Path:
    """An official-layout MiT-b0 ImageNet file (zeros; with the ImageNet classifier the converter drops)."""
    sd = {k: torch.zeros(s) for k, s in mit_state_dict_shapes(MIT_VARIANTS["mit_b0"]).items()}
    sd.update({"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)})
    path = tmp_path / "mit_b0.pth"
    torch.save(sd, path)
    return path


def _run(converter, capsys, *argv):
    status = converter.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_output_that_is_the_input_is_refused(converter, capsys, segformer_file, tmp_path):
    original = segformer_file.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(segformer_file)
    for same in (segformer_file, tmp_path / "sub" / ".." / "mit_b0.pth", link):
        (tmp_path / "sub").mkdir(exist_ok=True)
        status, err = _run(converter, capsys, segformer_file, same, "--force")
        assert status == 1
        assert f"output {same} is the input {segformer_file}" in err, err
    assert segformer_file.read_bytes() == original


def test_existing_output_needs_force(converter, capsys, segformer_file, tmp_path):
    out = tmp_path / "out.pth"
    out.write_bytes(b"keep me")
    status, err = _run(converter, capsys, segformer_file, out)
    assert status == 1 and f"output {out} exists; add --force to replace it" in err
    assert out.read_bytes() == b"keep me"
    config = tmp_path / "cfg.yaml"
    config.write_text("keep")
    status, err = _run(converter, capsys, segformer_file, tmp_path / "new.pth", "--config-out", config)
    assert status == 1 and f"output {config} exists" in err and not (tmp_path / "new.pth").exists()
    status, err = _run(converter, capsys, segformer_file, out, "--force")
    assert status == 0, err
    assert set(torch.load(out, weights_only=True)["model"]) == {
        "backbone." + k for k in mit_state_dict_shapes(MIT_VARIANTS["mit_b0"])}


def test_a_folder_as_input_is_a_directory(converter, capsys, tmp_path):
    status, err = _run(converter, capsys, tmp_path, tmp_path / "out.pth")
    assert status == 1 and f"{tmp_path} is a directory" in err and "no such file" not in err


def test_written_files_get_the_usual_permissions(converter, capsys, segformer_file, tmp_path):
    previous = os.umask(0o022)
    try:
        status, err = _run(converter, capsys, segformer_file, tmp_path / "out.pth")
    finally:
        os.umask(previous)
    assert status == 0, err
    assert stat.S_IMODE((tmp_path / "out.pth").stat().st_mode) == 0o644
