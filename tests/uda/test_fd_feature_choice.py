"""``UDA.FD.FEATURE``: which backbone map the ImageNet feature distance compares (DACS step 5, docs/method.md
§7.2). Default "": the deepest (smallest) map, i.e. res5 of MiT as in the original; a name picks that map (e.g.
``vit_tokens`` of a plain ViT); an unknown name is an error listing the outputs."""
import pytest
import torch
from torch import nn

from hrda_d2.uda.dacs_step import DACSStepTrainer
from hrda_d2.uda.feature_distance import imnet_feature_distance_loss


class FixedFeatures(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.features = features

    def extract_features(self, images):
        return self.features


def features(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"res2": (2, 4, 16, 16), "res3": (2, 4, 8, 8), "res4": (2, 4, 4, 4), "res5": (2, 4, 2, 2),
              "vit_tokens": (2, 6, 4, 4)}
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def step_with(fd_feature):
    """A DACSStepTrainer reduced to what ``_feature_distance`` reads (no model, loader or optimizer)."""
    trainer = DACSStepTrainer.__new__(DACSStepTrainer)
    trainer.imnet_model = FixedFeatures(features(1))
    trainer.fd_feature, trainer.fd_classes, trainer.num_classes = fd_feature, list(range(19)), 19
    trainer.fd_min_ratio, trainer.fd_lambda, trainer.ignore_value, trainer.amp_dtype = 0.0, 0.005, 255, None
    return trainer


@pytest.mark.parametrize("fd_feature, expected", [("", "res5"), ("vit_tokens", "vit_tokens"), ("res4", "res4")])
def test_the_configured_map_is_compared(fd_feature, expected):
    labels = torch.randint(0, 19, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    student, imnet = features(0), features(1)
    loss, cells = step_with(fd_feature)._feature_distance(torch.zeros(2, 3, 64, 64), labels, student)
    reference, ref_cells = imnet_feature_distance_loss(student[expected], imnet[expected], labels, list(range(19)),
                                                       19, 0.0, 0.005, 255)
    assert torch.equal(loss, reference) and cells == ref_cells == 2 * student[expected].shape[-1] ** 2


def test_unknown_map_is_named():
    with pytest.raises(KeyError, match=r"UDA.FD.FEATURE='p5'.*'res2', 'res3', 'res4', 'res5', 'vit_tokens'"):
        step_with("p5")._feature_distance(torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long),
                                          features(0))
