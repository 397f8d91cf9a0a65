"""Fixtures of the checkpoint tests: files in the original (mmseg / SegFormer) layouts and the converter tool.
Registered for the whole suite by tests/conftest.py."""
import pytest
import torch

from tests.fixtures.hrda_reference import make_original_files as mof
from tests.helpers.paths import TOOLS_DIR
from tests.helpers.scripts import import_script


@pytest.fixture(scope="session")
def originals(tmp_path_factory):
    """(mit_b0 ImageNet-format file, HRDA DACS training checkpoint) in the original layouts."""
    return mof.write_original_files(tmp_path_factory.mktemp("original"))


@pytest.fixture(scope="session")
def original_checkpoint(originals):
    return torch.load(originals[1], map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def tool():
    """The command-line tool's module (tools/ is a script folder, not a package); main(argv) -> exit status."""
    return import_script(TOOLS_DIR / "convert_mmseg_checkpoint.py", "convert_mmseg_checkpoint")
