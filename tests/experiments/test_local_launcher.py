"""``--launcher local`` with a stand-in trainer (tests/helpers/fake_train_net.py): finished runs are skipped,
interrupted ones resumed (``--resume``), a Ctrl-C reaches the running trainer exactly once, which checkpoints; the
queue stops with its status, and the same command later resumes and completes the experiment."""
import json
import os
import signal
import subprocess
import sys
import time

from hrda_d2.experiments import generate_experiment
from hrda_d2.experiments.launch import RunState, plan_launch, run_local, run_status
from tests.experiments.test_status_and_collect import write_run
from tests.helpers.paths import REPO_ROOT, TOOLS_DIR

FAKE_TRAINER = str(REPO_ROOT / "tests" / "helpers" / "fake_train_net.py")


def calls(output_dir):
    with open(os.path.join(output_dir, "fake_calls.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_skips_finished_resumes_interrupted_and_runs_the_rest(tmp_path):
    work = str(tmp_path / "work")
    items = plan_launch(generate_experiment("40", str(tmp_path / "configs"), work), work)
    write_run(items[0].output_dir, final_miou=70.0)
    write_run(items[1].output_dir, final_model=False, checkpoint="model_0019999.pth")
    outcomes = run_local(items, {"FAKE_TRAIN": "finish"}, train_script=FAKE_TRAINER, log_dir=str(tmp_path / "logs"))
    assert [o.skipped for o in outcomes] == [True] + [False] * 5 and all(o.ok for o in outcomes)
    assert outcomes[1].state_before == "interrupted (last checkpoint model_0019999.pth)"
    assert not os.path.exists(os.path.join(items[0].output_dir, "fake_calls.jsonl"))
    call = calls(items[1].output_dir)[0]
    assert call["resume"] and call["argv"][:2] == ["--config-file", items[1].config_file]
    assert call["pgid_is_pid"] and not call["usr2_ignored"]  # own process group; SIGUSR2 only ignored on SLURM
    assert all(run_status(i.output_dir, i.max_iter, i.eval_period).state is RunState.FINISHED for i in items)
    assert all(o.skipped for o in run_local(items, {}, train_script=FAKE_TRAINER))  # nothing left to do


def _launcher(tmp_path, behaviour):
    env = dict(os.environ, FAKE_TRAIN=behaviour)
    return subprocess.Popen([sys.executable, str(TOOLS_DIR / "experiments.py"), "--exp", "40", "--launcher", "local",
                             "--generated-dir", str(tmp_path / "configs"), "--work-dir", str(tmp_path / "work"),
                             "--train-script", FAKE_TRAINER, "--log-dir", str(tmp_path / "logs")],
                            env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ctrl_c_reaches_the_trainer_once_and_the_same_command_resumes(tmp_path):
    launcher = _launcher(tmp_path, "wait")
    first = tmp_path / "work" / "40"
    deadline = time.time() + 120
    while not list(first.glob("*/started")) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    started = list(first.glob("*/started"))
    assert started, launcher.communicate()[0][-3000:]
    launcher.send_signal(signal.SIGINT)
    output = launcher.communicate(timeout=60)[0]
    assert launcher.returncode == 128 + signal.SIGINT, output[-3000:]
    run_dir = started[0].parent
    assert calls(run_dir) == [dict(calls(run_dir)[0], signals=["SIGINT"])]  # one signal, then its checkpoint
    assert (run_dir / "last_checkpoint").is_file() and "the queue stops here" in output
    assert [p.name for p in first.iterdir()] == [run_dir.name]  # no further run was started

    launcher = _launcher(tmp_path, "finish")
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 0, output[-3000:]
    assert "interrupted (last checkpoint model_0000001.pth) -> resuming" in output
    assert calls(run_dir)[-1]["resume"] and len(list(first.glob("*/model_final.pth"))) == 6
