"""Test set-up: CPU only, deterministic, one OpenMP thread per process.

CI machines have 2 cores, and tests start subprocesses (training runs, data-loader workers): with more than one
OpenMP thread per process the cores are oversubscribed and OpenMP's spinning makes small models 10x slower.

Shared fixtures live here; test data generated on the fly goes to pytest's tmp_path.
"""
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on CPU, also on a GPU machine
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# subprocesses (tools/*.py, demo/demo.py) import this checkout too, also when the tests run with an interpreter that
# is not this checkout's .venv (scripts/setup_env.sh)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
# the benchmark library of tools/benchmark.py (tools/benchmarking: its DDP counters, FLOPs, ratio table), imported
# as the scripts import it; tools/ itself is no package (the detectron2 wheel ships a top-level `tools`)
sys.path.append(str(REPO_ROOT / "tools"))

torch.set_num_threads(1)

# fixtures shared by several test folders
pytest_plugins = ["tests.helpers.training_fixtures", "tests.helpers.checkpoint_fixtures", "tests.helpers.dlv2_reference"]


@pytest.fixture(autouse=True)
def _deterministic_seed():
    """Every test starts from the same Python, NumPy and torch RNG states."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
