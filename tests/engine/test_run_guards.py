"""One run per output folder, config syntax errors, and what tools/train_net.py prints (issue 14, items 4, 7, 8).

The console test runs train_net.py once, in a subprocess, on generated data whose source images are all empty
(zero bytes): it must fail at the first iteration naming the file (exit status 1), print the error's traceback
once, write no ANSI colour codes into log.txt, keep the model's architecture off the console (model.txt) and
show no fvcore torch.jit.script deprecation warning.
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrda_d2 import load_config
from hrda_d2.config import ConfigError
from hrda_d2.engine.output_lock import LOCK_FILE_NAME, OutputDirInUseError, OutputDirLock
from tests.helpers.run_helpers import prepared_replicas
from tests.helpers.paths import REPO_ROOT
from tests.helpers.scripts import import_script

REPO = REPO_ROOT
TRAIN_NET = REPO / "tools" / "train_net.py"
DEMO_CONFIG = REPO / "configs" / "demo_hrda.yaml"


def _train_net():
    return import_script(TRAIN_NET, "train_net")


def _write_lock(folder: Path, pid: int, host: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE_NAME).write_text(
        f'{{"pid": {pid}, "host": "{host}", "started": {time.time()}, "command": "train_net.py other run"}}')


@pytest.fixture()
def live_pid():
    """The PID of a running process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture()
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------ 4. lock
def test_second_run_in_a_held_folder_refuses_to_start(tmp_path, live_pid):
    out = tmp_path / "run"
    _write_lock(out, live_pid, socket.gethostname())
    train_net = _train_net()
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(DEMO_CONFIG), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    with pytest.raises(SystemExit) as error:
        train_net.main(args)
    message = error.value.code
    assert isinstance(message, str), "a message, i.e. exit status 1"
    assert message.startswith(f"train_net: OUTPUT_DIR {out} is in use by another training run (PID {live_pid} on "
                              f"host {socket.gethostname()}")
    assert "train_net.py other run" in message and str(out / LOCK_FILE_NAME) in message
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE_NAME], "nothing written into the held folder"


def test_lock_of_another_host_is_not_taken_over(tmp_path, dead_pid):
    _write_lock(tmp_path, dead_pid, "some-other-node")
    with pytest.raises(OutputDirInUseError, match=r"on host some-other-node.*If that run is gone.*delete"):
        OutputDirLock(str(tmp_path)).acquire()


def test_stale_lock_of_a_dead_run_does_not_block(tmp_path, dead_pid):
    _write_lock(tmp_path, dead_pid, socket.gethostname())
    lock = OutputDirLock(str(tmp_path))
    lock.acquire()
    try:
        content = (tmp_path / LOCK_FILE_NAME).read_text()
        assert f'"pid": {os.getpid()}' in content and f'"host": "{socket.gethostname()}"' in content
        with pytest.raises(OutputDirInUseError):  # a second run while this (live) one holds it
            OutputDirLock(str(tmp_path)).acquire()
    finally:
        lock.release()
    assert not (tmp_path / LOCK_FILE_NAME).exists()


# ----------------------------------------------------------------------------------------- 7. YAML syntax
def test_yaml_syntax_error_names_file_and_line(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  WEIGHTS: ''\n   DEVICE: cpu\n")  # line 3 is indented too far
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {base}\nSOLVER:\n  MAX_ITER: 10\n")
    for path, shown in ((base, base), (child, base)):  # the broken _BASE_ file is the one named
        with pytest.raises(ConfigError) as error:
            load_config(str(path))
        message = str(error.value)
        assert message.startswith(f"Config file {shown}, line 3, column 4: YAML "
                                                               f"syntax error"), message
        assert "Traceback" not in message and "yaml.scanner" not in message


# ------------------------------------------------------------------------------------ 7./8. the console
@pytest.fixture(scope="module")
def empty_images_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("empty_images")
    prepared_replicas(root, num_train=2, num_val=1)
    for image in sorted((root / "gta" / "images").iterdir()):
        image.write_bytes(b"")
    return root


def test_train_net_console_zero_byte_image(empty_images_root, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, DETECTRON2_DATASETS=str(empty_images_root), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--config-file", str(DEMO_CONFIG), "OUTPUT_DIR", str(out),
         "INPUT.SOURCE.SCALE", "[128, 64]", "INPUT.SOURCE.CROP_SIZE", "[64, 64]", "INPUT.TARGET.SCALE", "[128, 64]",
         "INPUT.TARGET.CROP_SIZE", "[64, 64]", "MODEL.HRDA.HR_CROP_SIZE", "[32, 32]", "DATALOADER.NUM_WORKERS", "0",
         "DATASETS.RCS.ENABLED", "False", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))
    console = result.stdout + result.stderr
    assert result.returncode == 1, console[-4000:]
    last_line = result.stderr.strip().splitlines()[-2]
    assert last_line.startswith("train_net: training stopped at iteration 0: OSError: image file "), result.stderr
    assert f"{empty_images_root}/gta/images/" in last_line and "is empty (0 bytes)" in last_line
    assert console.count("Traceback (most recent call last)") == 1, "the error is printed once"
    assert "torch.jit.script" not in console
    log = (out / "log.txt").read_text()
    assert "\x1b[" not in log, "no ANSI colour codes in log.txt"
    assert "\x1b[" not in result.stdout, "nor on a console that is not a terminal"
    assert "MiT" in (out / "model.txt").read_text() or "backbone" in (out / "model.txt").read_text()
    assert f"architecture written to {out / 'model.txt'}" in console
    assert "(backbone): " not in console, "the architecture dump stays off the console"
    assert not (out / LOCK_FILE_NAME).exists(), "the lock is released on exit"
