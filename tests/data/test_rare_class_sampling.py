"""Rare class sampling (reference 8.1-8.4): probabilities by hand, strict thresholds, re-crop rule,
empirical class frequencies, determinism. The mapper is a stub, so no image is decoded."""
import json
import math

import numpy as np
import pytest
import torch

from hrda_d2.data.common import PositionSeededDataset
from hrda_d2.data.rare_class_sampling import (
    RareClassSamplingDataset,
    load_rcs_statistics,
    rcs_class_probabilities,
    rcs_files_per_class,
)

# three files; totals: class 0 -> 900, class 1 -> 90, class 2 -> 10
CLASS_STATS = [
    {"0": 500, "1": 60, "file": "/data/gta/labels/a_labelTrainIds.png"},
    {"0": 400, "2": 10, "file": "/data/gta/labels/b_labelTrainIds.png"},
    {"1": 30, "file": "/data/gta/labels/c_labelTrainIds.png"},
]
SAMPLES_WITH_CLASS = {
    "0": [["/data/gta/labels/a_labelTrainIds.png", 500], ["/data/gta/labels/b_labelTrainIds.png", 400]],
    "1": [["/data/gta/labels/a_labelTrainIds.png", 60], ["/data/gta/labels/c_labelTrainIds.png", 30]],
    "2": [["/data/gta/labels/b_labelTrainIds.png", 10]],
}


def _hand_probs(counts_ascending, temperature):
    total = sum(counts_ascending)
    logits = [(1 - n / total) / temperature for n in counts_ascending]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return [e / sum(exps) for e in exps]


def _dicts(names=("a", "b", "c"), folder="/elsewhere/labels"):
    return [
        {"file_name": f"/img/{n}.png", "sem_seg_file_name": f"{folder}/{n}_labelTrainIds.png"} for n in names
    ]


class StubMapper:
    """Returns the file name and an ``h x w`` label whose count of ``cls`` follows ``counts`` per call."""

    def __init__(self, cls=0, counts=(0,)):
        self.cls, self.counts, self.calls = cls, list(counts), 0

    def __call__(self, d):
        n = self.counts[min(self.calls, len(self.counts) - 1)]
        self.calls += 1
        label = torch.full((20, 20), 255, dtype=torch.int64)
        label.view(-1)[:n] = self.cls
        return {"file_name": d["file_name"], "sem_seg": label}


def test_probabilities_by_hand_t001():
    classes, probs = rcs_class_probabilities(CLASS_STATS, 0.01)
    assert classes == [2, 1, 0]  # ascending total count
    # f = [0.01, 0.09, 0.9] -> logits [99, 91, 10]
    expected = _hand_probs([10, 90, 900], 0.01)
    assert expected[0] == pytest.approx(1 / (1 + math.exp(-8) + math.exp(-89)), rel=1e-12)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_probabilities_by_hand_t05():
    _, probs = rcs_class_probabilities(CLASS_STATS, 0.5)
    # logits [1.98, 1.82, 0.2]: p ~ [0.4948, 0.4218, 0.0835]
    np.testing.assert_allclose(probs, _hand_probs([10, 90, 900], 0.5), rtol=1e-5)
    np.testing.assert_allclose(probs, [0.4948, 0.4218, 0.0835], atol=5e-4)


def test_stable_sort_keeps_first_appearance_on_ties():
    stats = [{"5": 100, "3": 100, "file": "x"}, {"7": 50, "file": "y"}]
    classes, probs = rcs_class_probabilities(stats, 0.1)
    assert classes == [7, 5, 3]
    assert probs[1] == probs[2]


def test_min_pixels_is_strict():
    files = rcs_files_per_class(SAMPLES_WITH_CLASS, [2, 1, 0], min_pixels=9)
    assert files == {2: ["b_labelTrainIds.png"], 1: ["a_labelTrainIds.png", "c_labelTrainIds.png"],
                     0: ["a_labelTrainIds.png", "b_labelTrainIds.png"]}
    files = rcs_files_per_class(SAMPLES_WITH_CLASS, [1, 0], min_pixels=30)  # count 30 is not > 30
    assert files[1] == ["a_labelTrainIds.png"]
    with pytest.raises(ValueError, match="class 2 .* more than 10 pixels"):
        rcs_files_per_class(SAMPLES_WITH_CLASS, [2, 1, 0], min_pixels=10)  # 10 is not > 10


def _dataset(mapper, temperature=0.5, min_pixels=9, min_crop_ratio=0.0, dicts=None):
    return RareClassSamplingDataset(
        _dicts() if dicts is None else dicts, mapper, CLASS_STATS, SAMPLES_WITH_CLASS,
        temperature=temperature, min_pixels=min_pixels, min_crop_ratio=min_crop_ratio,
    )


def test_empirical_class_and_file_frequencies():
    # one class per file, so the drawn file tells the drawn class: class 2 -> s, class 1 -> r,
    # class 0 -> p or q (uniform file choice within the class)
    stats = [{"0": 500, "file": "p"}, {"0": 400, "file": "q"}, {"1": 90, "file": "r"}, {"2": 10, "file": "s"}]
    with_class = {"0": [["p", 500], ["q", 400]], "1": [["r", 90]], "2": [["s", 10]]}
    dicts = [{"file_name": n, "sem_seg_file_name": f"/labels/{n}"} for n in "pqrs"]
    ds = RareClassSamplingDataset(dicts, StubMapper(), stats, with_class, temperature=0.5, min_pixels=9,
                                  min_crop_ratio=0.0)
    n = 8000
    files = [ds[i]["file_name"] for i in range(n)]
    p2, p1, p0 = _hand_probs([10, 90, 900], 0.5)
    for name, p in (("s", p2), ("r", p1), ("p", p0 / 2), ("q", p0 / 2)):
        freq = files.count(name) / n
        assert abs(freq - p) < 4.5 * math.sqrt(p * (1 - p) / n), (name, freq, p)


def test_recrop_up_to_ten_checks_then_unchecked():
    # class 2 is drawn with probability ~1 at T = 0.01 (p = 0.99966); threshold 9 * 2.0 = 18 pixels
    never = StubMapper(cls=2, counts=[5])
    _dataset(never, temperature=0.01, min_crop_ratio=2.0)[0]
    assert never.calls == 11  # first sample + 10 re-crops, the 11th kept unchecked
    equal = StubMapper(cls=2, counts=[18, 18, 19])  # 18 is not > 18; 19 passes at the 3rd sample
    out = _dataset(equal, temperature=0.01, min_crop_ratio=2.0)[0]
    assert equal.calls == 3 and int((out["sem_seg"] == 2).sum()) == 19
    first = StubMapper(cls=2, counts=[19])
    _dataset(first, temperature=0.01, min_crop_ratio=2.0)[0]
    assert first.calls == 1
    off = StubMapper(cls=2, counts=[0])
    _dataset(off, temperature=0.01, min_crop_ratio=0.0)[0]
    assert off.calls == 1


def test_basename_matching_errors():
    with pytest.raises(ValueError, match="c_labelTrainIds.png.*not in the source dataset"):
        _dataset(StubMapper(), dicts=_dicts(("a", "b")))
    dup = _dicts(("a", "b", "c")) + [{"file_name": "/img/x.png", "sem_seg_file_name": "/other/a_labelTrainIds.png"}]
    with pytest.raises(ValueError, match="a_labelTrainIds.png occurs twice"):
        _dataset(StubMapper(), dicts=dup)


def test_deterministic_per_position_and_different_across_positions():
    ds = PositionSeededDataset(_dataset(StubMapper()), seed=3, stream_id=0, shuffle=False)
    first = [ds[p]["file_name"] for p in range(40)]
    np.random.seed(999)  # the global state outside does not matter
    again = [ds[p]["file_name"] for p in range(40)]
    assert first == again
    assert len(set(first)) == 3  # positions (i.e. ranks / workers) draw different samples
    other_seed = PositionSeededDataset(_dataset(StubMapper()), seed=4, stream_id=0, shuffle=False)
    assert [other_seed[p]["file_name"] for p in range(40)] != first


def test_load_statistics(tmp_path):
    with pytest.raises(FileNotFoundError, match="sample_class_stats.json.*prepare"):
        load_rcs_statistics(str(tmp_path))
    (tmp_path / "sample_class_stats.json").write_text(json.dumps(CLASS_STATS))
    (tmp_path / "samples_with_class.json").write_text(json.dumps(SAMPLES_WITH_CLASS))
    stats, with_class = load_rcs_statistics(str(tmp_path))
    assert stats == CLASS_STATS and with_class == SAMPLES_WITH_CLASS
    (tmp_path / "samples_with_class.json").write_text("[]")
    with pytest.raises(ValueError, match="samples_with_class.json must hold a JSON dict"):
        load_rcs_statistics(str(tmp_path))
