"""``tools/train_net.py`` on bad input a newcomer meets: one line naming the file / key / value and the fix (exit
status 1), the traceback only with ``--debug``."""
import os
import shutil
import subprocess
import sys

import pytest

from hrda_d2.config import ConfigError
from tests.helpers.paths import REPO_ROOT
from tests.helpers.scripts import import_script
from tests.helpers.training import NAME_PREFIX, SMALL_OPTS

TRAIN_NET = REPO_ROOT / "tools" / "train_net.py"
DEMO_CONFIG = REPO_ROOT / "configs" / "demo_hrda.yaml"


def run_train_net(args, cwd, **env):
    return subprocess.run([sys.executable, str(TRAIN_NET)] + args, cwd=str(cwd), capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **env))


def refusal(*args) -> str:
    """The exit message of ``train_net.main`` (in this process) for the command line ``args``."""
    train_net = import_script(TRAIN_NET, "train_net")
    with pytest.raises(SystemExit) as error:
        train_net.main(train_net.default_argument_parser().parse_args(list(args)))
    assert isinstance(error.value.code, str), "a message, i.e. exit status 1"
    return error.value.code


@pytest.mark.slow  # two train_net starts (~20 s); the message: config/test_loading.py, one line without a
# traceback: test_an_empty_datasets_variable_..., the traceback with --debug: test_debug_raises_the_error below
def test_a_copied_config_without_its_base_names_the_including_file(tmp_path):
    copied = tmp_path / "demo_source_only.yaml"
    shutil.copy(REPO_ROOT / "configs" / "demo_source_only.yaml", copied)
    proc = run_train_net(["--config-file", str(copied)], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train_net: {copied}: _BASE_ 'demo_hrda.yaml' does not exist (looked for {tmp_path / 'demo_hrda.yaml'}); "
        f"copy it next to this file, or set _BASE_ to its path (absolute, or relative to this file's folder)")
    debug = run_train_net(["--debug", "--config-file", str(copied)], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_an_empty_datasets_variable_gives_the_dataset_message_without_a_traceback(tmp_path):
    proc = run_train_net(["--config-file", str(DEMO_CONFIG), "MODEL.DEVICE", "cpu", "OUTPUT_DIR",
                          str(tmp_path / "out")], tmp_path, DETECTRON2_DATASETS="")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("train_net: "):]
    assert message.startswith(f"train_net: Dataset split 'gta_train': image folder not found: "
                              f"{tmp_path / 'gta' / 'images'}"), message
    assert "python datasets/prepare_gta.py" in message and "$DETECTRON2_DATASETS" in message


@pytest.mark.parametrize("opts,line", [
    (["UDA.METHOD", "advsegg"], f"train_net: {DEMO_CONFIG} with the command-line overrides: UDA.METHOD='advsegg': is "
                                f"not a method of hrda_d2; use one of dacs, advseg, minent, source_only, target_only, vfm_uda"),
    (["UDA.MIC.MODDE", "separate"], "train_net: command-line override: Non-existent key: UDA.MIC.MODDE; did you mean "
                                    "UDA.MIC.MODE? Every valid key is in hrda_d2/config/defaults.py"),
    (["SOLVER.CHECKPOINT_PERIOD", "-1"], f"train_net: {DEMO_CONFIG} with the command-line overrides: "
                                         f"SOLVER.CHECKPOINT_PERIOD=-1: must be in [0, inf); use 0 for no periodic "
                                         f"checkpoints (model_final and pre-emption checkpoints only)"),
])
def test_a_refused_setting_is_one_line(opts, line, tmp_path):
    assert refusal("--config-file", str(DEMO_CONFIG), *opts, "OUTPUT_DIR", str(tmp_path)) == line


def test_debug_raises_the_error_instead_of_the_one_line_message(tmp_path):
    train_net = import_script(TRAIN_NET, "train_net")
    args = train_net.default_argument_parser().parse_args(
        ["--debug", "--config-file", str(DEMO_CONFIG), "UDA.METHOD", "advsegg", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ConfigError, match="UDA.METHOD='advsegg': is not a method of hrda_d2"):
        train_net.main(args)


@pytest.mark.slow  # one train_net start (~10 s), the same one-line path as the tests above
def test_an_unregistered_dataset_is_one_line_with_the_nearest_name(tmp_path):
    assert refusal("--config-file", str(DEMO_CONFIG), *SMALL_OPTS, "MODEL.DEVICE", "cpu", "DATASETS.SOURCE",
                   "('gta_trian',)", "OUTPUT_DIR", str(tmp_path)) == (
        "train_net: Dataset split 'gta_trian' is not registered; did you mean gta_train? (the builtin splits are "
        "listed in datasets/README.md; DATASETS.SPLIT_FILES registers your own)")


@pytest.mark.slow  # one train_net start (~10 s); checkpoint/test_weights_errors checks the message in-process
def test_a_missing_weights_file_is_one_line(data_root, tmp_path):
    missing = tmp_path / "nope.pth"
    message = refusal("--config-file", str(DEMO_CONFIG), *SMALL_OPTS, "MODEL.DEVICE", "cpu",
                      "DATASETS.SOURCE", f"('{NAME_PREFIX}_gta_train',)",
                      "DATASETS.TARGET", f"('{NAME_PREFIX}_cityscapes_train',)", "DATASETS.TEST", "()",
                      "MODEL.WEIGHTS", str(missing), "OUTPUT_DIR", str(tmp_path / "out"))
    assert message.startswith(f"train_net: checkpoint {missing} does not exist") and "\n" not in message, message
