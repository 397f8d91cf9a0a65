"""Fixtures of the experiment tests."""
import pytest

from hrda_d2.data.preparation import prepare_cityscapes, prepare_gta
from hrda_d2.data.synthetic import generate_synthetic_datasets


@pytest.fixture(scope="session")
def tiny_replica(tmp_path_factory):
    """Generated GTA-like / Cityscapes-like data at the default size (Cityscapes-like 128x256 = 1024x2048 / 8, the
    size --tiny is made for), prepared: use it as $DETECTRON2_DATASETS of --tiny runs."""
    root = tmp_path_factory.mktemp("tiny_replica")
    generated = generate_synthetic_datasets(str(root), num_train=4, num_val=2, seed=0)
    prepare_gta(generated.gta, nproc=1)
    prepare_cityscapes(generated.cityscapes, nproc=1)
    return root
