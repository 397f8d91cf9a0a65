"""``UDA.FD.FEATURE``: which backbone map the ImageNet feature distance compares (DACS step 5, docs/method.md
§7.2). Default "": the deepest (smallest) map, i.e. res5 of MiT as in the original; a name picks that map (e.g.
``vit_tokens`` of a plain ViT); an unknown name is an error listing the outputs."""
import pytest
import torch
from torch import nn

from hrda_d2.uda.dacs_step import DACSStepTrainer, SourceOutputs
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
    """A DACS step whose ImageNet model returns fixed features (its student, loader and optimizer are unused)."""
    unused = nn.Linear(1, 1)
    return DACSStepTrainer(unused, [], torch.optim.SGD(unused.parameters(), lr=0.1), teacher=nn.Linear(1, 1),
                           imnet_model=FixedFeatures(features(1)), strong_augmentation=None, fd_feature=fd_feature,
                           fd_classes=range(19), num_classes=19, fd_min_ratio=0.0, fd_lambda=0.005, ignore_value=255)


def source_outputs(labels, student_features):
    return SourceOutputs(losses={}, metrics={}, images=torch.zeros(2, 3, 64, 64), labels=labels,
                         features=student_features)


@pytest.mark.parametrize("fd_feature, expected", [("", "res5"), ("vit_tokens", "vit_tokens"), ("res4", "res4")])
def test_the_configured_map_is_compared(fd_feature, expected):
    labels = torch.randint(0, 19, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    student, imnet = features(0), features(1)
    distance = step_with(fd_feature).feature_distance(source_outputs(labels, student))
    loss, cells = distance.loss, distance.num_cells
    reference, ref_cells = imnet_feature_distance_loss(student[expected], imnet[expected], labels, list(range(19)),
                                                       19, 0.0, 0.005, 255)
    assert torch.equal(loss, reference) and cells == ref_cells == 2 * student[expected].shape[-1] ** 2


def test_unknown_map_is_named():
    with pytest.raises(KeyError, match=r"UDA.FD.FEATURE='p5'.*'res2', 'res3', 'res4', 'res5', 'vit_tokens'"):
        step_with("p5").feature_distance(source_outputs(torch.zeros(2, 64, 64, dtype=torch.long), features(0)))
