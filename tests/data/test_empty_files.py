"""A zero-byte image or label (an interrupted copy) is an error naming the file (issue 14, item 7)."""
import pytest

from hrda_d2.data.image_io import read_label, read_rgb_image


def test_zero_byte_image_is_named(tmp_path):
    path = tmp_path / "frame_000001.png"
    path.write_bytes(b"")
    with pytest.raises(OSError, match=rf"^image file {path} is empty \(0 bytes\)"):
        read_rgb_image(str(path))


def test_zero_byte_label_is_named(tmp_path):
    path = tmp_path / "frame_000001_labelTrainIds.png"
    path.write_bytes(b"")
    with pytest.raises(OSError, match=rf"^label file {path} is empty \(0 bytes\).*prepare"):
        read_label(str(path), num_classes=19)
