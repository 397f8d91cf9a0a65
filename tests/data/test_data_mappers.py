"""Source / target / test dataset mappers on tiny generated PNGs (reference 10.1-10.3).

Images encode their own coordinates (R = row, G = column), so the crop box and flip applied to a
sample can be read back from its output image and compared with the margin mask and label.
"""
import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from PIL import Image

from hrda_d2.config import add_hrda_config
from hrda_d2.data.dataset_mappers import SourceTrainMapper, TargetTrainMapper, TestMapper
from hrda_d2.data.dataset_mappers.train_mappers import make_margin_mask


def _coordinate_image(h, w):
    """H x W x 3 RGB uint8 with R = row, G = column, B = 7."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None]
    img[..., 1] = np.arange(w)[None, :]
    img[..., 2] = 7
    return img


def _write_rgb(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def _write_label(path, label, mode="L"):
    if mode == "I;16":  # 16-bit grayscale PNG (Pillow cannot write mode I as PNG)
        cv2.imwrite(str(path), label.astype(np.uint16))
    else:
        Image.fromarray(label, "L").convert(mode).save(str(path))
    return str(path)


def _cfg(**input_overrides):
    cfg = add_hrda_config(get_cfg())
    for key, value in input_overrides.items():
        node, name = key.rsplit("__", 1)
        getattr(cfg.INPUT, node)[name] = value
    return cfg


@pytest.fixture
def sample(tmp_path):
    h, w = 40, 64
    label = (np.arange(h)[:, None] // 4 % 19 + np.zeros((1, w), np.int64)).astype(np.uint8)
    label[:, :3] = 255
    return {
        "file_name": _write_rgb(tmp_path / "img.png", _coordinate_image(h, w)),
        "sem_seg_file_name": _write_label(tmp_path / "lbl.png", label),
        "label": label,
    }


def test_margin_mask_layout():
    mask = make_margin_mask((1024, 2048), [30, 240, 30, 30])
    assert mask.shape == (1024, 2048) and mask.dtype == np.uint8
    assert mask.sum() == (1024 - 30 - 240) * (2048 - 60)
    assert mask[:30].max() == 0 and mask[-240:].max() == 0 and mask[:, :30].max() == 0 and mask[:, -30:].max() == 0
    assert mask[30, 30] == 1 and mask[1024 - 241, 2048 - 31] == 1
    # zero margins are skipped (a bare [-0:] slice would zero everything)
    assert make_margin_mask((4, 5), [0, 0, 0, 0]).min() == 1


def test_source_mapper_outputs_and_crop_consistency(sample):
    cfg = _cfg(SOURCE__SCALE=[64, 40], SOURCE__CROP_SIZE=[16, 24], SOURCE__CAT_MAX_RATIO=0.75, SOURCE__FLIP_PROB=0.0)
    mapper = SourceTrainMapper(cfg)
    out = mapper({"file_name": sample["file_name"], "sem_seg_file_name": sample["sem_seg_file_name"]})
    assert str(out["image"].dtype) == "torch.uint8"
    assert tuple(out["image"].shape) == (3, 16, 24)
    assert str(out["sem_seg"].dtype) == "torch.int64" and tuple(out["sem_seg"].shape) == (16, 24)
    assert (out["height"], out["width"]) == (40, 64)  # original size
    assert "valid_pseudo_mask" not in out
    img = out["image"].numpy()
    y1, x1 = int(img[0, 0, 0]), int(img[1, 0, 0])
    assert (img[2] == 7).all()  # RGB order: blue channel is the constant
    np.testing.assert_array_equal(out["sem_seg"].numpy(), sample["label"][y1 : y1 + 16, x1 : x1 + 24])


def test_target_margin_mask_cropped_with_the_image(tmp_path):
    h, w = 48, 80
    margins = [5, 12, 4, 6]
    full = np.ones((h, w), np.uint8)
    full[:5], full[-12:], full[:, :4], full[:, -6:] = 0, 0, 0, 0  # reference 10.3, by hand
    path = _write_rgb(tmp_path / "t.png", _coordinate_image(h, w))
    saw_top = saw_no_top = saw_left = 0
    for flip in (0.0, 1.0):
        mapper = TargetTrainMapper(
            _cfg(TARGET__SCALE=[80, 48], TARGET__CROP_SIZE=[20, 30], TARGET__FLIP_PROB=flip,
                 TARGET__PSEUDO_MARGINS=margins, TARGET__VALID_MASK_SIZE=[h, w])
        )
        for seed in range(30):
            np.random.seed(seed)
            out = mapper({"file_name": path})
            img = out["image"].numpy()
            mask = out["valid_pseudo_mask"].numpy()
            assert str(out["valid_pseudo_mask"].dtype) == "torch.uint8" and mask.shape == (20, 30)
            assert "sem_seg" not in out  # no label file in the dict
            y1 = int(img[0, 0, 0])
            x1 = int(img[1, 0, :].min())
            expected = full[y1 : y1 + 20, x1 : x1 + 30]
            if flip:
                assert img[1, 0, 0] > img[1, 0, -1]  # flipped columns
                expected = expected[:, ::-1]
            np.testing.assert_array_equal(mask, expected)
            # top margin rows appear only when the crop includes rows 0..4
            assert (mask[0] == 0).all() == (y1 < 5)
            saw_top += y1 < 5
            saw_no_top += y1 >= 5
            if flip and x1 < 4:  # the left image margin is on the right after the flip
                assert (mask[:, -1] == 0).all()
                saw_left += 1
    assert saw_top and saw_no_top and saw_left


def test_margin_mask_built_before_rescale(tmp_path):
    # mask size with the image's aspect ratio but twice as large: halved by the nearest rescale,
    # like the 1024x2048 Cityscapes mask in the DAFormer-512 configs (reference 10.1 table)
    path = _write_rgb(tmp_path / "t.png", _coordinate_image(32, 64))
    mapper = TargetTrainMapper(
        _cfg(TARGET__SCALE=[64, 32], TARGET__CROP_SIZE=[32, 64], TARGET__FLIP_PROB=0.0,
             TARGET__PSEUDO_MARGINS=[4, 20, 4, 6], TARGET__VALID_MASK_SIZE=[64, 128])
    )
    mask = mapper({"file_name": path})["valid_pseudo_mask"].numpy()
    full = make_margin_mask((64, 128), [4, 20, 4, 6])
    np.testing.assert_array_equal(mask, full[::2, ::2])  # cv2 nearest x0.5 takes even rows/columns
    assert mask[:2].max() == 0 and mask[2, 2:61].min() == 1 and mask[-10:].max() == 0 and mask[:, -3:].max() == 0
    # upscaling: image 16x32 rescaled x2, mask at the image's own size ([] = image size)
    path = _write_rgb(tmp_path / "small.png", _coordinate_image(16, 32))
    mapper = TargetTrainMapper(
        _cfg(TARGET__SCALE=[64, 32], TARGET__CROP_SIZE=[32, 64], TARGET__FLIP_PROB=0.0,
             TARGET__PSEUDO_MARGINS=[3, 2, 1, 1], TARGET__VALID_MASK_SIZE=[])
    )
    mask = mapper({"file_name": path})["valid_pseudo_mask"].numpy()
    np.testing.assert_array_equal(mask, np.repeat(np.repeat(make_margin_mask((16, 32), [3, 2, 1, 1]), 2, 0), 2, 1))


def test_margin_mask_size_mismatch_is_an_error(tmp_path):
    path = _write_rgb(tmp_path / "t.png", _coordinate_image(30, 64))
    cfg = _cfg(TARGET__SCALE=[64, 30], TARGET__CROP_SIZE=[16, 16], TARGET__VALID_MASK_SIZE=[32, 64])
    mapper = TargetTrainMapper(cfg)
    with pytest.raises(ValueError, match="VALID_MASK_SIZE"):
        mapper({"file_name": path})


def test_no_mask_without_margins(tmp_path):
    path = _write_rgb(tmp_path / "t.png", _coordinate_image(30, 64))
    mapper = TargetTrainMapper(_cfg(TARGET__SCALE=[64, 30], TARGET__CROP_SIZE=[16, 16], TARGET__PSEUDO_MARGINS=[]))
    assert "valid_pseudo_mask" not in mapper({"file_name": path})


def test_padding_values(tmp_path, sample):
    # image 40x64 with crop 48x72: padded bottom/right with 0 / 255 / mask 0
    cfg = _cfg(TARGET__SCALE=[64, 40], TARGET__CROP_SIZE=[48, 72], TARGET__FLIP_PROB=0.0,
               TARGET__PSEUDO_MARGINS=[1, 1, 1, 1], TARGET__VALID_MASK_SIZE=[])
    out = TargetTrainMapper(cfg)({"file_name": sample["file_name"], "sem_seg_file_name": sample["sem_seg_file_name"]})
    img, lbl, mask = out["image"].numpy(), out["sem_seg"].numpy(), out["valid_pseudo_mask"].numpy()
    assert img.shape == (3, 48, 72) and lbl.shape == (48, 72) and mask.shape == (48, 72)
    assert img[:, 40:].max() == 0 and img[:, :, 64:].max() == 0
    assert (lbl[40:] == 255).all() and (lbl[:, 64:] == 255).all()
    np.testing.assert_array_equal(lbl[:40, :64], sample["label"])
    assert mask[40:].max() == 0 and mask[:, 64:].max() == 0 and mask[1:39, 1:63].min() == 1


def test_rescale_in_mapper_gives_mmcv_sizes(tmp_path):
    # GTA-like 1052x1914 is too big for a unit test; same ratio rule on 263x478 with (640, 360):
    # f = min(640/478, 360/263) = 1.3389 -> (int(263 f + .5), int(478 f + .5)) = (352, 640)
    path = _write_rgb(tmp_path / "g.png", np.zeros((263, 478, 3), np.uint8))
    out = TestMapper(scale=(640, 360))({"file_name": path})
    f = min(640 / 478, 360 / 263)
    assert tuple(out["image"].shape) == (3, int(263 * f + 0.5), int(478 * f + 0.5)) == (3, 352, 640)


def test_test_mapper_keeps_original_size_and_rgb(tmp_path):
    rgb = _coordinate_image(24, 40)
    path = _write_rgb(tmp_path / "v.png", rgb)
    cfg = _cfg(TEST__SCALE=[80, 48])
    out = TestMapper(cfg)({"file_name": path, "sem_seg_file_name": "unused.png"})
    assert (out["height"], out["width"]) == (24, 40)
    assert out["sem_seg_file_name"] == "unused.png"
    expected = cv2.resize(rgb, (80, 48), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(out["image"].numpy(), expected)


# --- bad input: clear errors naming the file ---------------------------------------------------------


def _source_mapper():
    return SourceTrainMapper(_cfg(SOURCE__SCALE=[64, 40], SOURCE__CROP_SIZE=[16, 16]))


def test_corrupt_and_truncated_image(tmp_path, sample):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image" * 20)
    with pytest.raises(OSError, match="garbage.png"):
        _source_mapper()({"file_name": str(garbage), "sem_seg_file_name": sample["sem_seg_file_name"]})
    data = open(sample["file_name"], "rb").read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="truncated.png"):
        _source_mapper()({"file_name": str(truncated), "sem_seg_file_name": sample["sem_seg_file_name"]})
    jpeg = tmp_path / "cut.jpg"
    cv2.imwrite(str(jpeg), _coordinate_image(40, 64))
    jpeg.write_bytes(jpeg.read_bytes()[:-50])
    with pytest.raises(OSError, match="cut.jpg"):
        _source_mapper()({"file_name": str(jpeg), "sem_seg_file_name": sample["sem_seg_file_name"]})
    with pytest.raises(OSError, match="missing.png"):
        _source_mapper()({"file_name": str(tmp_path / "missing.png"), "sem_seg_file_name": sample["sem_seg_file_name"]})


def test_truncated_label(tmp_path, sample):
    data = open(sample["sem_seg_file_name"], "rb").read()
    bad = tmp_path / "cut_label.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="cut_label.png"):
        _source_mapper()({"file_name": sample["file_name"], "sem_seg_file_name": str(bad)})


@pytest.mark.parametrize("bad_value", [19, 33, 254])
def test_label_value_out_of_range(tmp_path, sample, bad_value):
    label = sample["label"].copy()
    label[10, 20] = bad_value
    path = _write_label(tmp_path / "unconverted.png", label)
    with pytest.raises(ValueError, match=rf"unconverted\.png.*\[{bad_value}\]"):
        _source_mapper()({"file_name": sample["file_name"], "sem_seg_file_name": path})


def test_label_wrong_mode(tmp_path, sample):
    path = _write_label(tmp_path / "colour.png", sample["label"], mode="RGB")
    with pytest.raises(ValueError, match=r"colour\.png.*'RGB'"):
        _source_mapper()({"file_name": sample["file_name"], "sem_seg_file_name": path})


def test_palette_and_int_labels_accepted(tmp_path, sample):
    np.random.seed(0)
    reference = _source_mapper()({"file_name": sample["file_name"], "sem_seg_file_name": sample["sem_seg_file_name"]})
    for mode in ("P", "I;16"):
        path = _write_label(tmp_path / f"lbl_{mode[0]}.png", sample["label"], mode=mode)
        np.random.seed(0)
        out = _source_mapper()({"file_name": sample["file_name"], "sem_seg_file_name": path})
        assert out["sem_seg"].equal(reference["sem_seg"])


def test_source_image_without_label(sample):
    with pytest.raises(KeyError, match="img.png"):
        _source_mapper()({"file_name": sample["file_name"]})


def test_label_size_mismatch(tmp_path, sample):
    path = _write_label(tmp_path / "small.png", sample["label"][:20])
    with pytest.raises(ValueError, match="small.png"):
        _source_mapper()({"file_name": sample["file_name"], "sem_seg_file_name": path})


def test_ratio_range_rescales_before_the_crop(tmp_path):
    """INPUT.TARGET.RATIO_RANGE: one U(low, high) factor per sample after the keep-ratio rescale (VFM-UDA's scale
    jitter), applied to the image and the margin mask alike; [] keeps today's pipeline (no extra draw)."""
    h, w = 40, 64
    path = _write_rgb(tmp_path / "t.png", _coordinate_image(h, w))
    common = dict(TARGET__SCALE=[64, 40], TARGET__CROP_SIZE=[80, 100], TARGET__FLIP_PROB=0.0,
                  TARGET__PSEUDO_MARGINS=[2, 2, 2, 2], TARGET__VALID_MASK_SIZE=[h, w])
    jittered = TargetTrainMapper(_cfg(TARGET__RATIO_RANGE=[0.5, 1.5], **common))
    sizes = set()
    for seed in range(8):
        np.random.seed(seed)
        ratio = 0.5 + np.random.random_sample() * 1.0
        np.random.seed(seed)
        out = jittered({"file_name": path})
        expected = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        valid = out["valid_pseudo_mask"].numpy()
        # padded to the 80 x 100 crop: the rescaled image is the non-padded part (mask padded with 0, image with 0)
        rows = int((out["image"].numpy()[2] == 7).any(axis=1).sum())
        cols = int((out["image"].numpy()[2] == 7).any(axis=0).sum())
        assert (rows, cols) == expected
        assert valid[:expected[0], :expected[1]].sum() > 0 and valid[expected[0]:].sum() == 0
        sizes.add(expected)
    assert len(sizes) > 4
    with pytest.raises(ValueError, match="RATIO_RANGE"):
        TargetTrainMapper(_cfg(TARGET__RATIO_RANGE=[1.2, 0.9], **common))
