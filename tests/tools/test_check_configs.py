"""tools/check_configs.py, the config matrix: every config builds its model, trains 2 iterations on the generated
replicas at the tiny size and evaluates. The default suite runs one config per method x backbone family; the slow
suite every file in configs/."""
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.helpers.paths import CONFIG_DIR, TOOLS_DIR

# one per method x backbone family: DACS + MIC / MiT-HRDA (ACDC target), source-only / MiT (DAFormer, Synthia),
# AdvSeg / ResNet-HRDA (DeepLabV2), MinEnt / ResNet (DeepLabV2), DACS / DINOv2 (timm ViT)
FAST = ["csHR2acdcHR_mic_hrda.yaml", "synthia2cs_daformer_source_only.yaml", "gtaCAugHR2csHR_advseg_hrda_dlv2.yaml",
        "gtaCAug2cs_minent_dlv2.yaml", "gtaHR2csHR_hrda_dinov2_vitb.yaml"]
LINE = re.compile(r"^(ok|FAIL) +(\S+) +(.*)$")


def run_check(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS_DIR / "check_configs.py")] + args, cwd=cwd,
                          capture_output=True, text=True, timeout=3000)


def result_lines(stdout: str) -> Dict[str, tuple]:
    """config name -> (ok / FAIL, the rest of its line)."""
    return {m.group(2): (m.group(1), m.group(3)) for m in map(LINE.match, stdout.splitlines()) if m}


def test_one_config_per_method_and_backbone_trains_and_evaluates_and_a_broken_one_fails(tmp_path):
    # the DAFormer config with only the head's name changed to DLV2Head (issue 24 A): the head reads one map
    broken = tmp_path / "broken_dlv2.yaml"
    broken.write_text(f"_BASE_: {CONFIG_DIR / 'gta2cs_daformer.yaml'}\nMODEL:\n  SEM_SEG_HEAD:\n    NAME: DLV2Head\n")
    proc = run_check([str(CONFIG_DIR / name) for name in FAST] + [str(broken)], tmp_path)
    lines = result_lines(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    for name in FAST:
        status, rest = lines[f"configs/{name}"]
        assert status == "ok", f"{name}: {rest}\n{proc.stderr[-3000:]}"
        assert re.search(r"2 iterations \+ evaluation in [\d.]+ s, mIoU [\d.]+$", rest), rest
    status, rest = lines[str(broken)]
    assert status == "FAIL" and "DLV2Head" in rest and "Traceback" not in proc.stdout, rest
    assert proc.stdout.splitlines()[-1] == f"check_configs: {len(FAST)} of {len(FAST) + 1} config(s) ok; failed: {broken}"


@pytest.mark.slow  # ~20 s; the fast subset above covers the runner
def test_the_seeds_of_one_run_are_checked_once_and_bad_arguments_are_one_line(tmp_path):
    folder = tmp_path / "generated"
    folder.mkdir()
    for seed in (0, 1):
        (folder / f"run_s{seed}.yaml").write_text(f"_BASE_: {CONFIG_DIR / 'gta2cs_daformer.yaml'}\nSEED: {seed}\n"
                                                  f"MODEL:\n  SEM_SEG_HEAD:\n    NAME: DLV2Head\n")
    proc = run_check([str(folder)], tmp_path)
    lines = result_lines(proc.stdout)
    assert lines[str(folder / "run_s0.yaml")][0] == "FAIL"
    assert lines[str(folder / "run_s1.yaml")] == (
        "FAIL", f"same run as {folder / 'run_s0.yaml'} apart from SEED / OUTPUT_DIR (checked once)")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout
    missing = run_check([str(tmp_path / "nothing.yaml")], tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"check_configs: '{tmp_path / 'nothing.yaml'}' is neither a config file nor a folder"


@pytest.mark.slow
def test_every_config_trains_and_evaluates(tmp_path):
    proc = run_check(["--all"], tmp_path)
    lines = result_lines(proc.stdout)
    assert set(lines) == {f"configs/{p.name}" for p in CONFIG_DIR.glob("*.yaml")}, proc.stdout
    failed = {name: rest for name, (status, rest) in lines.items() if status != "ok"}
    assert not failed and proc.returncode == 0, failed
