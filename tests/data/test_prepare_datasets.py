"""Dataset preparation (datasets/prepare_*.py) and the generated replicas.

Expectations come from the reference doc (section 9.2 tables, section 8.1 statistics format), from hand counts
on hand-made labels, and from cityscapesscripts itself (json2labelImg run independently by the test).
"""
import json
import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from hrda_d2.data.datasets import cityscapes_classes as cc
from hrda_d2.data.preparation import (
    DatasetFormatError,
    MissingImageError,
    prepare_cityscapes,
    prepare_gta,
    prepare_synthia,
)
from hrda_d2.data.datasets.sem_seg_splits import DatasetNotFoundError, MissingLabelError
from hrda_d2.data.synthetic import generate_synthetic_datasets

# reference 9.2, written out here independently of the package
REF_GTA = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
           27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
REF_SYNTHIA = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
               18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
REF_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle"]


def _ref_lut(table, size):
    lut = np.full(size, 255, dtype=np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    return generate_synthetic_datasets(str(root), num_train=3, num_val=2, height=64, width=128, seed=3)


@pytest.fixture
def copy_of(generated, tmp_path):
    def _copy(name):
        dst = tmp_path / name
        shutil.copytree(getattr(generated, name), dst)
        return str(dst)
    return _copy


def _write_p_label(path, ids):
    img = Image.fromarray(np.asarray(ids, dtype=np.uint8))
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _write_rgb(path, h, w):
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _read(path):
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------- tables


def test_id_tables_match_reference_and_cityscapesscripts():
    from cityscapesscripts.helpers.labels import trainId2label

    assert dict(cc.SYNTHIA_ID_TO_TRAIN_ID) == REF_SYNTHIA
    expected = {i: REF_GTA.get(i, 255) for i in range(34)}
    assert dict(cc.CITYSCAPES_LABEL_ID_TO_TRAIN_ID) == expected
    for label_id in (0, 1, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30):
        assert cc.CITYSCAPES_LABEL_ID_TO_TRAIN_ID[label_id] == 255
    assert list(cc.CITYSCAPES_CLASSES) == REF_CLASSES
    assert [trainId2label[t].name for t in range(19)] == REF_CLASSES
    assert [tuple(trainId2label[t].color) for t in range(19)] == list(cc.CITYSCAPES_PALETTE)
    assert cc.CITYSCAPES_PALETTE[0] == (128, 64, 128) and cc.CITYSCAPES_PALETTE[18] == (119, 11, 32)
    assert cc.SYNTHIA_MIOU16_CLASSES == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert cc.GTA_LABEL_MAPPING.valid_ids == tuple(range(34))
    assert cc.SYNTHIA_LABEL_MAPPING.valid_ids == tuple(range(23))


# ------------------------------------------------------------------------------------------- GTA


@pytest.fixture
def hand_gta(tmp_path):
    """Two hand-made GTA labels: every label id 0..33 once + a row of road; then road/sky halves."""
    root = tmp_path / "gta"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    first = np.full((2, 40), 7, np.uint8)
    first[0, :34] = np.arange(34)
    second = np.full((10, 10), 23, np.uint8)
    second[5:] = 7
    for name, label in (("00001.png", first), ("00002.png", second)):
        _write_p_label(root / "labels" / name, label)
        _write_rgb(root / "images" / name, *label.shape)
    return str(root)


def test_prepare_gta_mapping_and_hand_counted_statistics(hand_gta):
    result = prepare_gta(hand_gta, nproc=1)
    assert (result.num_converted, result.num_skipped, result.num_with_stats) == (2, 0, 2)
    out = _read(os.path.join(hand_gta, "labels", "00001_labelTrainIds.png"))
    assert out.dtype == np.uint8 and out.shape == (2, 40)
    for label_id in range(34):
        assert out[0, label_id] == REF_GTA.get(label_id, 255), label_id
    assert (out[1] == 0).all()

    f1 = os.path.join(hand_gta, "labels", "00001_labelTrainIds.png")
    f2 = os.path.join(hand_gta, "labels", "00002_labelTrainIds.png")
    with open(os.path.join(hand_gta, "sample_class_stats.json")) as f:
        stats = json.load(f)
    # file 1: road = id 7 once in row 0, the 6 trailing columns of row 0 and all 40 of row 1; others once
    expected_first = {"0": 1 + 6 + 40, **{str(t): 1 for t in range(1, 19)}, "file": f1}
    assert stats == [expected_first, {"0": 50, "10": 50, "file": f2}]
    assert list(stats[0].keys()) == [str(t) for t in range(19)] + ["file"]
    with open(os.path.join(hand_gta, "samples_with_class.json")) as f:
        with_class = json.load(f)
    assert with_class["0"] == [[f1, 47], [f2, 50]]
    assert with_class["10"] == [[f1, 1], [f2, 50]]
    assert with_class["5"] == [[f1, 1]]
    assert set(with_class) == {str(t) for t in range(19)}
    with open(os.path.join(hand_gta, "sample_class_stats_dict.json")) as f:
        per_file = json.load(f)
    assert per_file[f2] == {"0": 50, "10": 50}


def test_prepare_gta_generated_matches_reference_table(copy_of):
    root = copy_of("gta")
    prepare_gta(root, nproc=1)
    lut = _ref_lut(REF_GTA, 256)
    seen = set()
    for name in sorted(os.listdir(os.path.join(root, "images"))):
        raw = _read(os.path.join(root, "labels", name))
        assert Image.open(os.path.join(root, "labels", name)).mode == "P"
        out = _read(os.path.join(root, "labels", name.replace(".png", "_labelTrainIds.png")))
        np.testing.assert_array_equal(out, lut[raw])
        seen |= set(np.unique(raw).tolist())
    # the replicas exercise mapped and 255-mapped ids
    assert {7, 8, 11, 17, 20, 21, 23, 24, 26} <= seen
    assert len(seen & {0, 1, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}) >= 3


def test_prepare_gta_is_idempotent(copy_of):
    root = copy_of("gta")
    first = prepare_gta(root, nproc=1)
    labels = sorted(os.path.join(root, "labels", n) for n in os.listdir(os.path.join(root, "labels"))
                    if n.endswith("_labelTrainIds.png"))
    before = {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in labels}
    stats_before = open(os.path.join(root, "sample_class_stats.json")).read()
    start = time.perf_counter()
    second = prepare_gta(root, nproc=1)
    elapsed = time.perf_counter() - start
    assert first.num_converted == 3 and (second.num_converted, second.num_skipped) == (0, 3)
    assert {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in labels} == before
    assert open(os.path.join(root, "sample_class_stats.json")).read() == stats_before
    assert elapsed < 5.0
    assert not [n for n in os.listdir(os.path.join(root, "labels")) if n.startswith(".")]


# ------------------------------------------------------------------------------------------- Synthia


def _write_synthia_label(path, class_ids):
    class_ids = np.asarray(class_ids, dtype=np.uint16)
    bgr = np.stack([np.full_like(class_ids, 1000), np.full_like(class_ids, 7), class_ids], axis=-1)
    assert cv2.imwrite(str(path), bgr)


def test_prepare_synthia_hand_made_label(tmp_path):
    root = tmp_path / "synthia"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    ids = np.arange(23, dtype=np.uint16)[None].repeat(2, 0)
    _write_synthia_label(root / "GT" / "LABELS" / "0000000.png", ids)
    _write_rgb(root / "RGB" / "0000000.png", 2, 23)
    prepare_synthia(str(root), nproc=1)
    out = _read(root / "GT" / "LABELS" / "0000000_labelTrainIds.png")
    for synthia_id in range(23):
        assert out[0, synthia_id] == REF_SYNTHIA.get(synthia_id, 255), synthia_id
    for synthia_id in (0, 13, 14, 22):
        assert out[1, synthia_id] == 255
    stats = json.load(open(root / "sample_class_stats.json"))
    assert stats == [{**{str(t): 2 for t in range(19)}, "file": os.path.join(str(root), "GT", "LABELS",
                                                                                "0000000_labelTrainIds.png")}]


def test_prepare_synthia_generated_with_two_workers(copy_of):
    root = copy_of("synthia")
    result = prepare_synthia(root, nproc=2)
    assert result.num_converted == 3
    lut = _ref_lut(REF_SYNTHIA, 65536)
    label_dir = os.path.join(root, "GT", "LABELS")
    seen = set()
    for name in sorted(os.listdir(os.path.join(root, "RGB"))):
        raw = cv2.imread(os.path.join(label_dir, name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape[2] == 3
        out = _read(os.path.join(label_dir, name.replace(".png", "_labelTrainIds.png")))
        np.testing.assert_array_equal(out, lut[raw[:, :, 2]])  # R = OpenCV's last channel
        seen |= set(np.unique(raw[:, :, 2]).tolist())
    assert 22 in seen and {1, 2, 3, 4, 8} <= seen and not seen & {16, 18, 20}
    stats = json.load(open(os.path.join(root, "sample_class_stats.json")))
    assert len(stats) == 3 and all(not {"9", "14", "16"} & set(s) for s in stats)


# ------------------------------------------------------------------------------------------- Cityscapes


def test_prepare_cityscapes_equals_json2labelImg(copy_of, tmp_path):
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    root = copy_of("cityscapes")
    result = prepare_cityscapes(root, nproc=1)
    assert (result.num_converted, result.num_with_stats) == (5, 3)  # 3 train + 2 val; statistics: train only
    stats = json.load(open(os.path.join(root, "sample_class_stats.json")))
    for split in ("train", "val"):
        gt = os.path.join(root, "gtFine", split)
        for city in sorted(os.listdir(gt)):
            for name in sorted(os.listdir(os.path.join(gt, city))):
                if not name.endswith("_gtFine_polygons.json"):
                    continue
                independent = tmp_path / "official.png"
                json2labelImg(os.path.join(gt, city, name), str(independent), "trainIds")
                ours = os.path.join(gt, city, name.replace("_polygons.json", "_labelTrainIds.png"))
                np.testing.assert_array_equal(_read(ours), _read(independent))
                # the train ids are the labelIds of the download mapped with the reference table
                label_ids = _read(os.path.join(gt, city, name.replace("_polygons.json", "_labelIds.png")))
                np.testing.assert_array_equal(_read(ours), _ref_lut(REF_GTA, 256)[label_ids])
                if split == "train":
                    entry = next(s for s in stats if s["file"] == os.path.join(root, "gtFine", "train", city,
                                                                               os.path.basename(ours)))
                    counts = np.bincount(_read(ours).ravel(), minlength=256)
                    assert entry == {**{str(c): int(counts[c]) for c in range(19) if counts[c]}, "file": entry["file"]}
    assert all("/gtFine/train/" in s["file"] for s in stats)
    second = prepare_cityscapes(root, nproc=1)
    assert (second.num_converted, second.num_skipped) == (0, 5)
    assert json.load(open(os.path.join(root, "sample_class_stats.json"))) == stats


def test_generated_replicas_cover_all_classes_and_are_deterministic(generated, tmp_path):
    present = set()
    for split in ("train", "val"):
        label_dir = os.path.join(generated.cityscapes, "gtFine", split)
        for city in os.listdir(label_dir):
            for name in os.listdir(os.path.join(label_dir, city)):
                if name.endswith("_labelIds.png"):
                    present |= set(np.unique(_read(os.path.join(label_dir, city, name))).tolist())
    assert not set(REF_GTA) - present, f"classes (label ids) missing: {sorted(set(REF_GTA) - present)}"
    again = generate_synthetic_datasets(str(tmp_path), num_train=3, num_val=2, height=64, width=128, seed=3)
    for rel in ("gta/images/00002.png", "gta/labels/00002.png", "synthia/GT/LABELS/0000001.png",
                "cityscapes/leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"):
        assert open(os.path.join(again.root, rel), "rb").read() == open(os.path.join(generated.root, rel), "rb").read()
    assert generated.sizes["cityscapes"] == (64, 128)
    assert _read(os.path.join(again.root, "gta/images/00001.png")).shape == (66, 120, 3)


def test_generated_target_appearance_is_shifted(generated, tmp_path):
    """A nearest-class-colour classifier fitted on the source is clearly worse on the target, not useless."""
    gta = generate_synthetic_datasets(str(tmp_path), num_train=6, num_val=3, height=64, width=128, seed=5)
    prepare_gta(gta.gta, nproc=1)
    lut = _ref_lut(REF_GTA, 256)

    def pixels(pairs):
        xs, ys = [], []
        for image, label in pairs:
            y = _read(label).ravel()
            x = np.asarray(Image.open(image).convert("RGB"), np.float32).reshape(-1, 3)
            xs.append(x[y != 255])
            ys.append(y[y != 255])
        return np.concatenate(xs), np.concatenate(ys)

    source = [(os.path.join(gta.gta, "images", f"{i:05d}.png"),
               os.path.join(gta.gta, "labels", f"{i:05d}_labelTrainIds.png")) for i in range(1, 7)]
    target = []
    for split in ("train", "val"):
        base = os.path.join(gta.cityscapes, "leftImg8bit", split)
        for city in os.listdir(base):
            for name in os.listdir(os.path.join(base, city)):
                label = os.path.join(gta.cityscapes, "gtFine", split, city,
                                     name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
                target.append((os.path.join(base, city, name), label))
    x_fit, y_fit = pixels(source[:4])
    x_src, y_src = pixels(source[4:])
    x_tgt, y_tgt_ids = pixels([(i, l) for i, l in target])
    y_tgt = lut[y_tgt_ids]
    keep = y_tgt != 255
    classes = np.unique(y_fit)
    means = np.stack([x_fit[y_fit == c].mean(0) for c in classes])

    def accuracy(x, y):
        pred = classes[np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)]
        return float((pred == y).mean())

    acc_source, acc_target = accuracy(x_src, y_src), accuracy(x_tgt[keep], y_tgt[keep])
    assert acc_source > 0.85 and acc_target < acc_source - 0.25 and acc_target > 0.2, (acc_source, acc_target)


# ------------------------------------------------------------------------------------------- bad input


def test_unmapped_gta_id_is_refused(hand_gta):
    bad = np.full((4, 4), 7, np.uint8)
    bad[0, 0] = 40
    _write_p_label(os.path.join(hand_gta, "labels", "00002.png"), bad)
    _write_rgb(os.path.join(hand_gta, "images", "00002.png"), 4, 4)
    with pytest.raises(DatasetFormatError) as err:
        prepare_gta(hand_gta, nproc=1)
    message = str(err.value)
    assert os.path.join(hand_gta, "labels", "00002.png") in message and "40" in message and "0..33" in message
    assert not os.path.exists(os.path.join(hand_gta, "labels", "00002_labelTrainIds.png"))
    prepare_gta(hand_gta, nproc=1, map_unknown_to_ignore=True)
    assert _read(os.path.join(hand_gta, "labels", "00002_labelTrainIds.png"))[0, 0] == 255


def test_unmapped_synthia_id_is_refused(tmp_path):
    root = tmp_path / "synthia"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    _write_synthia_label(root / "GT" / "LABELS" / "0000005.png", [[3, 30], [4, 1]])
    _write_rgb(root / "RGB" / "0000005.png", 2, 2)
    with pytest.raises(DatasetFormatError, match=r"0000005\.png.*30 \(1 px\).*0\.\.22"):
        prepare_synthia(str(root), nproc=1)


def test_unknown_cityscapes_polygon_label_is_refused(copy_of):
    root = copy_of("cityscapes")
    gt = os.path.join(root, "gtFine", "val", "lindau")
    json_file = os.path.join(gt, sorted(n for n in os.listdir(gt) if n.endswith("_polygons.json"))[0])
    annotation = json.load(open(json_file))
    annotation["objects"].append({"label": "spaceship", "polygon": [[0, 0], [5, 0], [5, 5]]})
    json.dump(annotation, open(json_file, "w"))
    with pytest.raises(DatasetFormatError, match=r"polygons\.json.*'spaceship'"):
        prepare_cityscapes(root, nproc=1)


def test_corrupt_and_truncated_files_are_named(hand_gta):
    label = os.path.join(hand_gta, "labels", "00002.png")
    data = open(label, "rb").read()
    open(label, "wb").write(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match=r"00002\.png.*corrupt or truncated"):
        prepare_gta(hand_gta, nproc=1)
    _write_p_label(label, np.full((10, 10), 7, np.uint8))
    image = os.path.join(hand_gta, "images", "00001.png")
    Image.fromarray(np.random.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    data = open(image, "rb").read()
    open(image, "wb").write(data[: len(data) // 2])  # truncated: header fine, pixel data cut
    prepare_gta(hand_gta, nproc=1)  # header check only
    with pytest.raises(DatasetFormatError, match=r"images/00001\.png.*corrupt or truncated"):
        prepare_gta(hand_gta, nproc=1, verify_images=True)
    open(image, "wb").write(b"not a png at all")
    with pytest.raises(DatasetFormatError, match=r"images/00001\.png"):
        prepare_gta(hand_gta, nproc=1)


def test_truncated_synthia_label_is_named(tmp_path):
    root = tmp_path / "synthia"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    path = root / "GT" / "LABELS" / "0000000.png"
    _write_synthia_label(path, np.random.randint(0, 23, (32, 32)))
    _write_rgb(root / "RGB" / "0000000.png", 32, 32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match=r"0000000\.png.*OpenCV cannot decode"):
        prepare_synthia(str(root), nproc=1)


def test_missing_pairs_and_folders_are_named(hand_gta, tmp_path):
    _write_rgb(os.path.join(hand_gta, "images", "00003.png"), 2, 2)
    with pytest.raises(MissingLabelError, match=r"images/00003\.png.*labels/00003\.png"):
        prepare_gta(hand_gta, nproc=1)
    os.remove(os.path.join(hand_gta, "images", "00003.png"))
    os.remove(os.path.join(hand_gta, "images", "00002.png"))
    with pytest.raises(MissingImageError, match=r"labels/00002\.png"):
        prepare_gta(hand_gta, nproc=1)
    with pytest.raises(DatasetNotFoundError, match=r"nowhere/gtFine"):
        prepare_cityscapes(str(tmp_path / "nowhere"), nproc=1)


def test_cli_reports_bad_label_without_traceback(hand_gta, repo_root):
    bad = np.full((3, 3), 99, np.uint8)
    _write_p_label(os.path.join(hand_gta, "labels", "00001.png"), bad)
    _write_rgb(os.path.join(hand_gta, "images", "00001.png"), 3, 3)
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    proc = subprocess.run([sys.executable, str(repo_root / "datasets" / "prepare_gta.py"), hand_gta, "--nproc", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "ERROR:" in proc.stderr and "00001.png" in proc.stderr and "99" in proc.stderr
    assert "Traceback" not in proc.stderr
