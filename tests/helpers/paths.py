"""Paths the tests share: the checkout, its configs and tools, and the original implementation's reference outputs."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
TOOLS_DIR = REPO_ROOT / "tools"
# outputs of the original implementation for generated weights (see its README.md)
REFERENCE_DIR = REPO_ROOT / "tests" / "fixtures" / "hrda_reference"
# outputs of the original implementation for the paper's Table 2 components (DeepLabV2, AdvSeg, MinEnt, ...)
DLV2_REFERENCE_DIR = REPO_ROOT / "tests" / "fixtures" / "dlv2_reference"
MIC_TEACHER_REFERENCE_DIR = REPO_ROOT / "tests" / "fixtures" / "mic_teacher_reference"
