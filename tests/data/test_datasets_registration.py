"""Registration of the dataset splits (lazy), metadata per the data contract, loading and its error messages."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import hrda_d2  # noqa: F401  (registers the splits)
from hrda_d2.data.datasets import (
    BUILTIN_SPLITS,
    DatasetNotFoundError,
    MissingLabelError,
    load_split,
    register_builtin_split,
    register_cityscapes_root,
    register_sem_seg_split,
)
from hrda_d2.data.preparation import prepare_cityscapes, prepare_gta, prepare_synthia, prepare_wilddash2
from hrda_d2.data.synthetic import generate_synthetic_datasets

REF_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle"]
OWN_SPLITS = ["gta_train", "synthia_train", "acdc_train", "acdc_val", "darkzurich_train", "darkzurich_val"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Generated replicas (3 train / 2 val, 64x128) with GTA, Synthia, Cityscapes and WildDash 2 prepared."""
    root = tmp_path_factory.mktemp("d2root")
    data = generate_synthetic_datasets(str(root), num_train=3, num_val=2, height=64, width=128, seed=1,
                                       acdc=True, dark_zurich=True, wilddash2=True)
    prepare_gta(data.gta, nproc=1)
    prepare_synthia(data.synthia, nproc=1)
    prepare_cityscapes(data.cityscapes, nproc=1)
    prepare_wilddash2(data.wilddash2, nproc=1)
    return data


def _unique(prefix):
    """A split name not registered yet (tests may run more than once in a process)."""
    i = 0
    while f"{prefix}_{i}" in DatasetCatalog.list():
        i += 1
    return f"{prefix}_{i}"


def test_builtin_splits_registered_with_contract_metadata():
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    palette = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
               [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
               [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]]
    folders = {"gta_train": "gta", "synthia_train": "synthia", "acdc_train": "acdc", "acdc_val": "acdc",
               "darkzurich_train": "dark_zurich", "darkzurich_val": "dark_zurich"}
    for name in OWN_SPLITS:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == REF_CLASSES
        assert meta.stuff_colors == palette
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        assert os.path.normpath(meta.dataset_root) == os.path.normpath(os.path.join(root, folders[name]))
    assert MetadataCatalog.get("synthia_train").miou16_classes == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15,
                                                                  17, 18]
    assert MetadataCatalog.get("gta_train").get("miou16_classes") is None
    for name in ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val"):
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "cityscapes_sem_seg"  # Detectron2's own, unchanged
        assert meta.stuff_colors == palette and meta.stuff_classes == REF_CLASSES
        assert os.path.normpath(meta.dataset_root) == os.path.normpath(os.path.join(root, "cityscapes"))


def test_registration_is_lazy_and_missing_folders_name_path_and_command(tmp_path):
    missing_root = str(tmp_path / "no_data_here")
    gta = next(s for s in BUILTIN_SPLITS if s.name == "gta_train")
    name = _unique("lazy_gta")
    register_builtin_split(gta, missing_root, name=name)  # no disk access: must not fail
    assert not os.path.exists(missing_root)
    with pytest.raises(DatasetNotFoundError) as err:
        DatasetCatalog.get(name)
    message = str(err.value)
    assert os.path.join(missing_root, "gta", "images") in message
    assert f"python datasets/prepare_gta.py {os.path.join(missing_root, 'gta')}" in message
    assert "labels/00001_labelTrainIds.png" in message  # the expected layout
    assert "download.visinf.tu-darmstadt.de" in message

    cs_name = register_cityscapes_root(os.path.join(missing_root, "cityscapes"), _unique("lazy_cs"))[0]
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(cs_name)
    assert "leftImg8bit" in str(err.value)
    assert f"python datasets/prepare_cityscapes.py {os.path.join(missing_root, 'cityscapes')}" in str(err.value)


def test_own_splits_load_from_generated_root(prepared):
    counts = {"gta_train": 3, "synthia_train": 3, "acdc_train": 3, "acdc_val": 2, "darkzurich_train": 3,
              "darkzurich_val": 2, "wilddash2_train": 3, "wilddash2_val": 2}
    for split in BUILTIN_SPLITS:
        name = _unique(f"gen_{split.name}")
        register_builtin_split(split, prepared.root, name=name)
        dicts = load_split(name)
        assert len(dicts) == counts[split.name], split.name
        files = [d["file_name"] for d in dicts]
        assert files == sorted(files) and all(os.path.isabs(f) and os.path.isfile(f) for f in files)
        if split.name == "darkzurich_train":
            assert all("sem_seg_file_name" not in d for d in dicts)
            continue
        for d in dicts:
            assert os.path.isabs(d["sem_seg_file_name"]) and os.path.isfile(d["sem_seg_file_name"])
            label = np.asarray(Image.open(d["sem_seg_file_name"]))
            assert label.dtype == np.uint8 and set(np.unique(label).tolist()) <= set(range(19)) | {255}
            if split.name in ("gta_train", "synthia_train"):
                assert "height" not in d
            else:
                h, w = label.shape
                assert (d["height"], d["width"]) == (h, w) == (68, 120)  # 1080x1920 scaled like 64x128


def test_cityscapes_root_reregistration_uses_detectron2_loader(prepared):
    names = register_cityscapes_root(prepared.cityscapes, _unique("gen_cs"))
    train, val = (load_split(n) for n in names)
    assert (len(train), len(val)) == (3, 2)
    for d in train + val:
        assert (d["height"], d["width"]) == (64, 128)
        assert d["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png") and os.path.isfile(d["sem_seg_file_name"])
        stem = os.path.basename(d["file_name"])[: -len("_leftImg8bit.png")]
        assert os.path.basename(d["sem_seg_file_name"]) == f"{stem}_gtFine_labelTrainIds.png"
    assert [d["file_name"] for d in train] == sorted(d["file_name"] for d in train)
    meta = MetadataCatalog.get(names[0])
    assert meta.evaluator_type == "cityscapes_sem_seg" and meta.dataset_root == prepared.cityscapes
    assert meta.gt_dir == os.path.join(prepared.cityscapes, "gtFine", "train")


def test_builtin_cityscapes_and_own_splits_load_under_detectron2_datasets(prepared, repo_root):
    """Detectron2 roots its builtins at import: check them in a process with DETECTRON2_DATASETS set."""
    script = (
        "import json, hrda_d2\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "from hrda_d2.data.datasets import load_split\n"
        "names = ['cityscapes_fine_sem_seg_train', 'cityscapes_fine_sem_seg_val', 'gta_train', 'synthia_train',\n"
        "         'acdc_val', 'darkzurich_train']\n"
        "splits = {n: load_split(n) for n in names}\n"
        "out = {n: len(d) for n, d in splits.items()}\n"
        "out['absolute'] = all(x['file_name'].startswith('/') for d in splits.values() for x in d)\n"
        "out['d2_val'] = len(DatasetCatalog.get('cityscapes_fine_sem_seg_val'))\n"
        "out['root'] = MetadataCatalog.get('cityscapes_fine_sem_seg_train').dataset_root\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    # a relative root, as the default "datasets" is: paths must still come back absolute
    relative_root = os.path.basename(prepared.root)
    env = dict(os.environ, DETECTRON2_DATASETS=relative_root, PYTHONPATH=str(repo_root))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(prepared.root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result == {"cityscapes_fine_sem_seg_train": 3, "cityscapes_fine_sem_seg_val": 2, "gta_train": 3,
                      "synthia_train": 3, "acdc_val": 2, "darkzurich_train": 3, "d2_val": 2, "absolute": True,
                      "root": os.path.join(relative_root, "cityscapes")}


def test_image_without_label_is_an_error_naming_the_file(prepared, tmp_path):
    root = tmp_path / "gta"
    shutil.copytree(prepared.gta, root)
    os.remove(root / "labels" / "00002_labelTrainIds.png")
    name = _unique("nolabel_gta")
    register_sem_seg_split(name, str(root / "images"), str(root / "labels"), ".png", "_labelTrainIds.png")
    with pytest.raises(MissingLabelError) as err:
        load_split(name)
    assert str(root / "images" / "00002.png") in str(err.value)
    assert str(root / "labels" / "00002_labelTrainIds.png") in str(err.value)
    for n in os.listdir(root / "labels"):  # no label converted at all: says to run the preparation
        if n.endswith("_labelTrainIds.png"):
            os.remove(root / "labels" / n)
    with pytest.raises(DatasetNotFoundError, match="labels not converted yet"):
        load_split(name)


def test_cityscapes_missing_train_ids_name_the_preparation(prepared, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(prepared.cityscapes, root)
    victim = sorted((root / "gtFine" / "val" / "lindau").glob("*_gtFine_labelTrainIds.png"))[0]
    os.remove(victim)
    name = register_cityscapes_root(str(root), _unique("cs_missing"), splits=("val",))[0]
    with pytest.raises(MissingLabelError) as err:
        load_split(name)
    assert str(victim) in str(err.value) and "prepare_cityscapes.py" in str(err.value)


def test_corrupt_image_header_is_named_when_loading(prepared, tmp_path):
    root = tmp_path / "acdc"
    shutil.copytree(prepared.acdc, root)
    image = sorted((root / "rgb_anon" / "val").glob("*_rgb_anon.png"))[0]
    image.write_bytes(b"\x89PNG garbage")
    name = _unique("corrupt_acdc")
    register_sem_seg_split(name, str(root / "rgb_anon" / "val"), str(root / "gt" / "val"), "_rgb_anon.png",
                           "_gt_labelTrainIds.png")
    with pytest.raises(OSError, match=str(image).replace(".", r"\.")):
        load_split(name)


def test_register_own_split_metadata_defaults(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    (tmp_path / "lab" / "a").mkdir(parents=True)
    for stem in ("z", "b"):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "img" / "a" / f"{stem}.jpg")
        Image.fromarray(np.full((4, 6), 3, np.uint8)).save(tmp_path / "lab" / "a" / f"{stem}_trainIds.png")
    name = _unique("own")
    register_sem_seg_split(name, str(tmp_path / "img"), str(tmp_path / "lab"), ".jpg", "_trainIds.png")
    dicts = load_split(name)
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["b.jpg", "z.jpg"]
    assert dicts[0]["sem_seg_file_name"] == str(tmp_path / "lab" / "a" / "b_trainIds.png")
    assert (dicts[0]["height"], dicts[0]["width"]) == (4, 6)
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255 and len(meta.stuff_classes) == 19
    assert meta.dataset_root == str(tmp_path)
    with pytest.raises(KeyError, match="not registered"):
        load_split(_unique("never_registered"))
