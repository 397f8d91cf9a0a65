"""The command's refusals: each is one line naming what is wrong and what to do, no traceback (issue 24 §6)."""
import os
import subprocess
import sys

import pytest
import yaml

from hrda_d2.experiments import generate_experiment
from hrda_d2.experiments.launch import LaunchError, plan_launch, run_status
from tests.experiments.test_local_launcher import FAKE_TRAINER
from tests.experiments.test_status_and_collect import write_run
from tests.helpers.paths import REPO_ROOT, TOOLS_DIR


def _tool(tmp_path, *args, env=None):
    command = [sys.executable, str(TOOLS_DIR / "experiments.py"), "--generated-dir", str(tmp_path / "configs"),
               "--work-dir", str(tmp_path / "work"), *args]
    result = subprocess.run(command, cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=600,
                            env=env or dict(os.environ))
    return result.returncode, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "", result


def _one_line_refusal(result) -> None:
    assert result.returncode not in (0, None) and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_selection_that_matches_nothing_is_refused_with_the_known_names(tmp_path):
    rc, line, result = _tool(tmp_path, "--exp", "40", "--launcher", "local", "--only", "nomatch",
                             "--train-script", FAKE_TRAINER)
    _one_line_refusal(result)
    assert line.startswith("tools/experiments.py: --only nomatch match none of the 6 runs of --exp 40 (seeds 0 1 2; ")
    assert "_s0): see --list for the names" in line
    rc, line, result = _tool(tmp_path, "--exp", "40", "--launcher", "local", "--seeds", "7",
                             "--train-script", FAKE_TRAINER)
    _one_line_refusal(result)
    assert "--seeds 7 match none of the 6 runs" in line and not (tmp_path / "work").exists()


def test_slurm_without_slurm_says_to_use_the_local_submitit_cluster(tmp_path):
    pytest.importorskip("submitit")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sbatch / srun
    rc, line, result = _tool(tmp_path, "--exp", "40", "--launcher", "slurm", env=env)
    _one_line_refusal(result)
    assert line == ("tools/experiments.py: --launcher slurm: this machine has no SLURM (sbatch and srun not on PATH); "
                    "run it on a SLURM login node, or add --submitit-cluster local to run the same job array here")


def test_an_interrupted_tiny_run_is_not_relaunched_with_other_iterations(tmp_path):
    """An interrupted ``--tiny-iters 10`` run re-launched with the default 4 iterations would resume past its end and
    be marked finished; the launch is refused, naming the iterations to pass; with them it is planned."""
    work = str(tmp_path / "work")
    generated = generate_experiment("40", str(tmp_path / "configs"), work, tiny=True, tiny_iterations=4)
    run_dir = generated[0].output_dir
    write_run(run_dir, final_model=False, checkpoint="model_0000005.pth", max_iter=10)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump({"SOLVER": {"MAX_ITER": 10}, "OUTPUT_DIR": run_dir}, f)
    with pytest.raises(LaunchError) as error:
        plan_launch(generated, work, tiny=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{generated[0].run.name} was interrupted in a run of "
                                                      "SOLVER.MAX_ITER 10")
    assert "pass --tiny-iters 10 to resume it" in message
    rc, line, result = _tool(tmp_path, "--exp", "40", "--tiny", "--launcher", "local", "--train-script", FAKE_TRAINER)
    _one_line_refusal(result)
    assert line == f"tools/experiments.py: {message}"
    assert run_status(run_dir, 4, 4).state.value == "interrupted"  # nothing was started
    again = generate_experiment("40", str(tmp_path / "configs"), work, tiny=True, tiny_iterations=10)
    assert [i.max_iter for i in plan_launch(again, work, tiny=True)] == [10] * 6


@pytest.mark.slow  # one tools/experiments.py start (~10 s); the switches are checked in-process by
# test_tiny_and_memory.py::test_memory_switches_follow_the_readme_tiers, --list runs in test_checkout_environment.py
def test_list_names_no_mit_switch_for_resnet_rows(tmp_path):
    rc, _, result = _tool(tmp_path, "--exp", "41", "--list")
    assert rc == 0, result.stderr[-3000:]
    hr_rows = [line for line in result.stdout.splitlines() if "row: AdvSeg + HRDA" in line]
    assert hr_rows and all("16 GB: SOLVER.AMP.ENABLED True;" in line and "MIT" not in line for line in hr_rows)
    assert "experiment 41: 24 runs" in result.stdout and "blocked" not in result.stdout
