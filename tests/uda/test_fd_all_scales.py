"""UDA.FD.ALL_SCALES (the original's feature_scale='all', docs/method.md §7.2 step 5): the ImageNet feature
distance summed over the context features of the whole image and the detail crop's, labels cut with the crop."""
import torch
from detectron2.modeling import build_model

from hrda_d2.modeling.meta_arch.crop_utils import crop
from hrda_d2.uda import DACSStepTrainer
from hrda_d2.uda.dacs_step import SourceOutputs
from hrda_d2.uda.feature_distance import imnet_feature_distance_loss
from tests.helpers.tiny_configs import small_input_hrda_cfg


def test_the_distance_is_the_sum_over_both_scales_with_the_detail_labels_cropped():
    torch.manual_seed(0)
    student, imnet = (build_model(small_input_hrda_cfg(**{"MODEL.HRDA.BLUR_HR_CROP": blur})).train()
                      for blur in (False, False))
    step = DACSStepTrainer(student, [], torch.optim.SGD(student.parameters(), lr=0.1), teacher=imnet,
                           imnet_model=imnet, strong_augmentation=None, fd_all_scales=True, fd_classes=range(19),
                           num_classes=19, fd_min_ratio=0.0, fd_lambda=0.005)
    images = torch.randn(2, 3, 128, 128)
    labels = torch.randint(0, 19, (2, 128, 128))
    box = (32, 96, 64, 128)
    outputs = student(images=images, sem_seg=labels, crop_box=box)
    losses = outputs.losses
    assert len(outputs.scale_features) == 2 and outputs.scale_features[0] is outputs.features
    source = SourceOutputs(losses, {}, images, labels, outputs.features, outputs.scale_features, outputs.crop_box)
    distance = step.feature_distance(source)
    imnet.eval()
    with torch.no_grad():
        lr_ref = imnet.backbone(torch.nn.functional.interpolate(images, scale_factor=0.5, mode="bilinear",
                                                                align_corners=False))
        hr_ref = imnet.backbone(crop(images, box))
    expected = sum(imnet_feature_distance_loss(f["res5"], r["res5"], lab, list(range(19)), 19, 0.0, 0.005)[0]
                   for f, r, lab in ((outputs.scale_features[0], lr_ref, labels),
                                     (outputs.scale_features[1], hr_ref, crop(labels, box))))
    assert torch.allclose(distance.loss, expected, rtol=1e-6) and distance.num_cells == 2 * 4 + 2 * 4
    step.fd_all_scales = False  # FEATURE_SCALE only: the context term alone
    single = step.feature_distance(source).loss
    assert single < distance.loss
