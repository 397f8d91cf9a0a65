"""WildDash 2 as VFM-UDA evaluates it (docs/method.md §21.3): the train / val split, the label mapping, the two input
layouts of the preparation, registration and the errors for missing data."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from PIL import Image

import hrda_d2  # noqa: F401  (registers the splits)
from hrda_d2.data.datasets import (
    BUILTIN_SPLITS,
    DatasetNotFoundError,
    MissingLabelError,
    load_split,
    register_builtin_split,
)
from hrda_d2.data.datasets.cityscapes_classes import CITYSCAPES_LABEL_ID_TO_TRAIN_ID, WILDDASH2_LABEL_MAPPING
from hrda_d2.data.datasets.wilddash2_split import WILDDASH2_VAL_STEMS
from hrda_d2.data.preparation import DatasetFormatError, prepare_wilddash2
from hrda_d2.data.synthetic import generate_synthetic_datasets

NUM_TRAIN, NUM_VAL = 3, 2


@pytest.fixture(scope="module")
def raw_wilddash2(tmp_path_factory):
    """A generated unpacked ``wd_public_02.zip`` (images/, labels/), 3 + 2 frames of 68x120."""
    root = tmp_path_factory.mktemp("wd2")
    return generate_synthetic_datasets(str(root), num_train=NUM_TRAIN, num_val=NUM_VAL, height=64, width=128, seed=3,
                                       wilddash2=True).wilddash2


@pytest.fixture
def copy_of(raw_wilddash2, tmp_path):
    def _copy():
        target = tmp_path / "wilddash2"
        shutil.copytree(raw_wilddash2, target)
        return str(target)
    return _copy


def _split_of(root, split):
    name = f"wd2_{split}_{abs(hash(root)) % 10**8}"
    register_builtin_split(next(s for s in BUILTIN_SPLITS if s.name == f"wilddash2_{split}"), os.path.dirname(root),
                           name=name)
    return load_split(name)


def test_mapping_is_vfm_uda_s_cityscapes_table_with_the_extra_classes_ignored():
    import torchvision

    original = {c.id: c.train_id for c in torchvision.datasets.Cityscapes.classes if 0 <= c.id <= 255}
    lut = np.full(256, 255)
    for label_id, train_id in WILDDASH2_LABEL_MAPPING.id_to_train_id:
        lut[label_id] = train_id
    assert {i: int(lut[i]) for i in original} == original == dict(CITYSCAPES_LABEL_ID_TO_TRAIN_ID)
    assert lut[34:39].tolist() == [255] * 5  # pickup, van, billboard, street-light, road-marking
    assert WILDDASH2_LABEL_MAPPING.valid_ids == tuple(range(39))
    assert len(WILDDASH2_VAL_STEMS) == 852 and all(len(s) == 13 and s.endswith("_100000") for s in WILDDASH2_VAL_STEMS)


def test_raw_layout_is_split_converted_and_registered(copy_of):
    root = copy_of()
    result = prepare_wilddash2(root, nproc=1)
    assert (result.num_converted, result.num_skipped, result.num_with_stats) == (NUM_TRAIN + NUM_VAL, 0, NUM_TRAIN)
    train, val = _split_of(root, "train"), _split_of(root, "val")
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL
    assert all(os.path.basename(d["file_name"])[:-4] in WILDDASH2_VAL_STEMS for d in val)
    assert not any(os.path.basename(d["file_name"])[:-4] in WILDDASH2_VAL_STEMS for d in train)
    for d in train + val:
        stem = os.path.basename(d["file_name"])[: -len(".jpg")]
        raw = np.asarray(Image.open(os.path.join(root, "labels", f"{stem}.png")))
        converted = np.asarray(Image.open(d["sem_seg_file_name"]))
        assert (d["height"], d["width"]) == converted.shape == (68, 120)
        lut = np.full(256, 255, dtype=np.uint8)
        for label_id, train_id in WILDDASH2_LABEL_MAPPING.id_to_train_id:
            lut[label_id] = train_id
        np.testing.assert_array_equal(converted, lut[raw])
    raw_ids = set()
    for name in os.listdir(os.path.join(root, "labels")):
        raw_ids |= set(np.unique(np.asarray(Image.open(os.path.join(root, "labels", name)))).tolist())
    assert {34, 35, 36, 37, 38} <= raw_ids  # the replica exercises the ignored extra classes
    assert os.path.isfile(os.path.join(root, "sample_class_stats.json"))
    again = prepare_wilddash2(root, nproc=1)  # idempotent: the split layout is now found and nothing is rewritten
    assert (again.num_converted, again.num_skipped) == (0, NUM_TRAIN + NUM_VAL)
    meta = MetadataCatalog.get(f"wd2_val_{abs(hash(root)) % 10**8}")
    assert meta.evaluator_type == "sem_seg" and meta.dataset_root == root


def test_split_layout_of_the_original_script_is_accepted(copy_of):
    """``create_wilddash_ds.sh`` output: <split>/images/*.jpg, <split>/labels/*.png, no top-level folders."""
    root = copy_of()
    for split, stems in (("train", [f"zz{i:04d}_100000" for i in range(NUM_TRAIN)]),
                         ("val", sorted(WILDDASH2_VAL_STEMS)[:NUM_VAL])):
        for kind, suffix in (("images", ".jpg"), ("labels", ".png")):
            os.makedirs(os.path.join(root, split, kind))
            for stem in stems:
                shutil.move(os.path.join(root, kind, stem + suffix), os.path.join(root, split, kind, stem + suffix))
    os.rmdir(os.path.join(root, "images"))
    os.rmdir(os.path.join(root, "labels"))
    prepare_wilddash2(root, nproc=1)
    assert len(_split_of(root, "val")) == NUM_VAL and len(_split_of(root, "train")) == NUM_TRAIN


def test_missing_data_and_bad_labels_are_named(copy_of, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="WildDash 2: folder not found: .*nowhere/images"):
        prepare_wilddash2(str(tmp_path / "nowhere"), nproc=1)
    name = "wd2_missing_val"
    register_builtin_split(next(s for s in BUILTIN_SPLITS if s.name == "wilddash2_val"), str(tmp_path / "none"),
                           name=name)
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(name)
    message = str(err.value)
    assert message.splitlines()[0].endswith(os.path.join(str(tmp_path), "none", "wilddash2", "val", "images"))
    assert "python datasets/prepare_wilddash2.py" in message and "wd_public_02.zip" in message

    root = copy_of()
    stem = sorted(WILDDASH2_VAL_STEMS)[0]
    os.remove(os.path.join(root, "labels", f"{stem}.png"))
    with pytest.raises(MissingLabelError, match=f"image .*{stem}.jpg has no label"):
        prepare_wilddash2(root, nproc=1)


def _with_unknown_id(raw_wilddash2, tmp_path):
    root = str(tmp_path / "wd")
    shutil.copytree(raw_wilddash2, root)
    path = os.path.join(root, "labels", "zz0000_100000.png")
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 77
    Image.fromarray(label).save(path)
    return root


def test_unknown_label_id_is_refused(raw_wilddash2, tmp_path):
    root = _with_unknown_id(raw_wilddash2, tmp_path)
    with pytest.raises(DatasetFormatError, match="label id.* 77 .*outside the WildDash 2 mapping"):
        prepare_wilddash2(root, nproc=1)
    assert prepare_wilddash2(root, nproc=1, map_unknown_to_ignore=True).num_converted >= 1


@pytest.mark.slow
def test_cli_reports_an_unknown_label_id_in_one_line(raw_wilddash2, tmp_path, repo_root):
    root = _with_unknown_id(raw_wilddash2, tmp_path)
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "datasets", "prepare_wilddash2.py"), root,
                           "--nproc", "1"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(repo_root)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(error) == 1 and "77" in error[0] and "--map-unknown-to-ignore" in error[0]
