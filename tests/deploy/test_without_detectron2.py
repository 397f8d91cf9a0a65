"""The deploy predictor in a process where Detectron2 (and hrda_d2; and PyTorch for an ONNX folder) cannot be
imported: a bootstrap puts a ``sys.meta_path`` finder in front that refuses them with ImportError, checks that
``import detectron2`` (and the others) really fails, then imports ``hrda_d2_deploy.DeployPredictor``, predicts an
image and saves the logits; the test compares them with the eager ``SemSegPredictor`` in this process."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.deploy.exports import assert_equal_to_eager, make_image
from tests.helpers.paths import REPO_ROOT

BOOTSTRAP = textwrap.dedent('''
    import importlib.abc
    import sys

    BLOCKED = sys.argv[1].split(",")


    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not importable in this process (deploy test)")
            return None


    sys.meta_path.insert(0, Refuse())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError as e:
            print("REFUSED", name, e)
        else:
            sys.exit(f"import {name} did not fail")

    import numpy as np

    import hrda_d2_deploy
    from hrda_d2_deploy import DeployPredictor

    folder, image_file, out_file = sys.argv[2:5]
    np.save(out_file, DeployPredictor(folder)(np.load(image_file))["sem_seg"])
    print("DEPLOY", hrda_d2_deploy.__file__)
    print("LOADED", sorted({m.partition(".")[0] for m in sys.modules} & set(BLOCKED)))
''')


@pytest.mark.parametrize("fmt,blocked", [
    ("onnx", ["detectron2", "hrda_d2", "torch", "torchvision"]),
    pytest.param("torchscript", ["detectron2", "hrda_d2"], marks=pytest.mark.slow),
])
def test_deploy_predictor_runs_without_detectron2(exports, tmp_path, fmt, blocked):
    exported = exports.get("demo_hrda", fmt)
    image = make_image(333, 517)
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / "sem_seg.npy"
    proc = subprocess.run([sys.executable, "-c", BOOTSTRAP, ",".join(blocked), exported.folder,
                           str(tmp_path / "image.npy"), str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in blocked:
        assert any(line.startswith(f"REFUSED {name} ") for line in lines), proc.stdout
    assert f"DEPLOY {REPO_ROOT / 'hrda_d2_deploy' / '__init__.py'}" in lines, proc.stdout
    assert "LOADED []" in lines, proc.stdout
    with torch.no_grad():
        eager = exported.eager()(image)["sem_seg"].numpy()
    assert_equal_to_eager(f"demo_hrda {fmt} predictor without detectron2 333x517", np.load(out), eager)
