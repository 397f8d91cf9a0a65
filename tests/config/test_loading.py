"""``load_config`` (hrda_d2/config/loading.py) and the choice keys (hrda_d2/config/choices.py): the deprecated
``UDA.ENABLED`` upgraded to ``UDA.METHOD``, every refusal a :class:`ConfigError` naming the file / key / value."""
import pytest
from detectron2.config import get_cfg

from hrda_d2 import add_hrda_config, load_config
from hrda_d2.config import CHOICES, ConfigError, check_choice, config_problems, validate_config
from tests.helpers.paths import REPO_ROOT
from tests.helpers.run_helpers import captured_log

CONFIGS = REPO_ROOT / "configs"


def write_config(folder, name, text):
    path = folder / name
    path.write_text(text)
    return str(path)


def test_uda_enabled_false_of_an_old_yaml_loads_as_source_only_with_a_warning(tmp_path):
    old = write_config(tmp_path, "old.yaml", f"_BASE_: {CONFIGS / 'demo_hrda.yaml'}\nUDA:\n  ENABLED: False\n"
                                              f"OUTPUT_DIR: output/demo_source_only\n")
    with captured_log("hrda_d2.config") as messages:
        cfg = load_config(old)
    assert cfg.UDA.METHOD == "source_only" and cfg.UDA.ENABLED is None
    assert [m for m in messages if "UDA.ENABLED is deprecated" in m] == [
        f"{old}: UDA.ENABLED is deprecated and read as UDA.METHOD source_only: write UDA.METHOD instead "
        f"(UDA.ENABLED False = UDA.METHOD source_only)"]
    # the shipped demo config (UDA.METHOD) is the same config in every key: `make demo` trains the same run
    assert cfg.dump() == load_config(str(CONFIGS / "demo_source_only.yaml")).dump()


def test_uda_enabled_true_keeps_the_method_and_an_override_is_upgraded_too(tmp_path):
    assert load_config(str(CONFIGS / "demo_hrda.yaml"), ["UDA.ENABLED", "True"]).UDA.METHOD == "dacs"
    cfg = load_config(str(CONFIGS / "demo_hrda.yaml"), ["UDA.ENABLED", "False"])
    assert (cfg.UDA.METHOD, cfg.UDA.ENABLED) == ("source_only", None)


def test_uda_enabled_false_contradicting_the_method_is_refused_with_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"UDA\.ENABLED=False \(source-only training, the first release's switch\) "
                                          r"contradicts UDA\.METHOD='advseg': remove UDA\.ENABLED"):
        load_config(str(CONFIGS / "demo_hrda.yaml"), ["UDA.ENABLED", "False", "UDA.METHOD", "advseg"])


def test_a_config_built_in_code_with_uda_enabled_is_refused():
    """Only load_config upgrades UDA.ENABLED; nothing else reads it, so a config built in code must not set it."""
    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_list(["UDA.ENABLED", "False"])
    with pytest.raises(ConfigError, match=r"^config: UDA\.ENABLED=False: is the first release's switch.*set "
                                          r"UDA\.METHOD 'source_only'"):
        validate_config(cfg)


def test_every_choice_key_has_its_default_among_its_values_and_refuses_others():
    defaults = add_hrda_config(get_cfg())
    for key, (values, _) in CHOICES.items():
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert node in values, key
        assert check_choice(key, values[-1]) == values[-1]
        with pytest.raises(ConfigError, match=rf"^{key}='{values[0].swapcase()}': is not .*; use one of "
                                              rf"{', '.join(values)}$"):
            check_choice(key, values[0].swapcase())  # exact values: another case is another value


def test_one_problem_is_one_line_and_the_methods_are_listed_once():
    with pytest.raises(ConfigError) as error:
        load_config(str(CONFIGS / "demo_hrda.yaml"), ["UDA.METHOD", "advsegg"])
    assert str(error.value) == (f"{CONFIGS / 'demo_hrda.yaml'} with the command-line overrides: UDA.METHOD='advsegg': "
                                f"is not a method of hrda_d2; use one of dacs, advseg, minent, source_only, target_only, vfm_uda")


def test_checkpoint_period_zero_is_valid_and_negative_is_refused():
    def problems(period):
        cfg = add_hrda_config(get_cfg())
        cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD", period])
        return config_problems(cfg)
    assert problems("0") == []
    assert problems("-1") == ["SOLVER.CHECKPOINT_PERIOD=-1: must be in [0, inf); use 0 for no periodic checkpoints "
                              "(model_final and pre-emption checkpoints only)"]


def test_a_missing_relative_base_names_the_including_file(tmp_path):
    copied = write_config(tmp_path, "demo_source_only.yaml", (CONFIGS / "demo_source_only.yaml").read_text())
    with pytest.raises(ConfigError) as error:
        load_config(copied)
    assert str(error.value) == (
        f"{copied}: _BASE_ 'demo_hrda.yaml' does not exist (looked for {tmp_path / 'demo_hrda.yaml'}); copy it next "
        f"to this file, or set _BASE_ to its path (absolute, or relative to this file's folder)")
    middle = write_config(tmp_path, "middle.yaml", "_BASE_: missing/base.yaml\n")
    top = write_config(tmp_path, "top.yaml", "_BASE_: [middle.yaml]\n")
    with pytest.raises(ConfigError, match=rf"^{middle}: _BASE_ 'missing/base\.yaml' does not exist"):
        load_config(top)  # the file whose _BASE_ is missing is named, at any depth


@pytest.mark.parametrize("opts,message", [
    (["UDA.MIC.MODDE", "separate"], "command-line override: Non-existent key: UDA.MIC.MODDE; did you mean "
                                    "UDA.MIC.MODE? Every valid key is in hrda_d2/config/defaults.py"),
    (["SOLVER.MAX_ITER", "many"], "command-line override: Type mismatch (<class 'int'> vs. <class 'str'>) with values "
                                  "(300 vs. many) for config key: SOLVER.MAX_ITER; give a value of the default's type "
                                  "(hrda_d2/config/defaults.py)"),
])
def test_a_wrong_key_or_type_is_one_line(opts, message):
    with pytest.raises(ConfigError) as error:
        load_config(str(CONFIGS / "demo_hrda.yaml"), opts)
    assert str(error.value) == message


@pytest.mark.parametrize("text,message", [
    ("", "holds nothing, not config keys; write KEY: value lines as in configs/*.yaml"),
    ("- a\n- b\n", "holds a list (['a', 'b']), not config keys; write KEY: value lines as in configs/*.yaml"),
    ("MODEL: 3\n", "argument of type 'int' is not iterable: a section of keys is given a plain value? Compare with "
                   "hrda_d2/config/defaults.py"),
])
def test_a_file_without_config_keys_is_one_line(tmp_path, text, message):
    path = write_config(tmp_path, "odd.yaml", text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {message}"


def test_a_typo_in_a_file_names_the_file(tmp_path):
    path = write_config(tmp_path, "typo.yaml", f"_BASE_: {CONFIGS / 'demo_hrda.yaml'}\nSOLVER:\n  MAX_ITERS: 10\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (f"{path}: Non-existent config key: SOLVER.MAX_ITERS; did you mean SOLVER.MAX_ITER? "
                                f"Every valid key is in hrda_d2/config/defaults.py")
