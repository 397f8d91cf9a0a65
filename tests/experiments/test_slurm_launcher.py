"""``--launcher slurm`` without a cluster: the job array's sbatch file (fake ``sbatch`` / ``srun`` on PATH) carries the
requested resources, and on submitit's LocalExecutor a job that gets SLURM's warning signal (SIGUSR2) stops its
trainer with one forwarded SIGUSR1 (pre-emption checkpoint), is requeued and resumes with the same command."""
import json
import os
import signal
import stat
import time

import pytest

from hrda_d2.experiments import generate_experiment
from hrda_d2.experiments.launch import launch_environment, plan_launch
from hrda_d2.experiments.slurm import SlurmResources, TrainingJob, submit_array
from tests.experiments.test_local_launcher import FAKE_TRAINER, calls
from tests.experiments.test_status_and_collect import write_run

FAKE_SBATCH = """#!/bin/sh
cp "$1" "$FAKE_SBATCH_COPY"
echo "Submitted batch job 4242"
"""


def _wait(job, timeout):
    deadline = time.time() + timeout
    while not job.done() and time.time() < deadline:
        time.sleep(0.5)
    assert job.done(), f"job {job.job_id} still running after {timeout} s:\n{job.stdout()}\n{job.stderr()}"
    return job.result()


def test_job_array_asks_for_the_requested_resources(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_COPY", str(tmp_path / "job.sh"))
    work = str(tmp_path / "work")
    items = plan_launch(generate_experiment("40", str(tmp_path / "configs"), work), work, num_gpus=2)
    write_run(items[0].output_dir, final_miou=70.0)  # finished: not submitted
    resources = SlurmResources(gpus_per_node=2, cpus_per_task=6, mem_gb=48, timeout_min=90, partition="gpu",
                               array_parallelism=2, signal_delay_s=120, additional={"account": "abc"})
    jobs = submit_array(items, resources, str(tmp_path / "slurm" / "%j"), launch_environment("/data"))
    assert [job.job_id for job in jobs] == [f"4242_{i}" for i in range(5)]
    script = (tmp_path / "job.sh").read_text()
    for line in ("#SBATCH --array=0-4%2", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --mem=48GB", "#SBATCH --time=90", "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@120",
                 "#SBATCH --requeue", "#SBATCH --account=abc", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1"):
        assert line in script.splitlines(), line
    job = jobs[0].submission().function
    assert isinstance(job, TrainingJob) and job.command[-1] == items[1].output_dir
    assert job.command[job.command.index("--num-gpus") + 1] == "2" and "--resume" in job.command
    assert job.env_updates["DETECTRON2_DATASETS"] == "/data" and job.stop_timeout_s == 105


def test_preempted_job_checkpoints_requeues_and_resumes(tmp_path):
    work = str(tmp_path / "work")
    items = plan_launch(generate_experiment("40", str(tmp_path / "configs"), work), work)[:1]
    resources = SlurmResources(gpus_per_node=0, timeout_min=5, signal_delay_s=20, max_requeues=2)
    env = {**launch_environment(), "FAKE_TRAIN": "preempt_self"}
    jobs = submit_array(items, resources, str(tmp_path / "slurm" / "%j"), env, cluster="local",
                        train_script=FAKE_TRAINER)
    assert _wait(jobs[0], 240) == items[0].output_dir
    first, second = calls(items[0].output_dir)
    # the trainer ignored SLURM's SIGUSR2 and got exactly one SIGUSR1 from the job: checkpoint, exit 138
    assert first["usr2_ignored"] and first["signals"] == ["SIGUSR1"]
    assert second["resume"] and second["argv"] == first["argv"]  # requeued: the same command, --resume
    assert os.path.isfile(os.path.join(items[0].output_dir, "model_final.pth"))
    log = (jobs[0].stdout() or "") + (jobs[0].stderr() or "")
    assert "trainer stopped with status 138 after SIGUSR1; requeueing with --resume" in log, log[-3000:]
    assert log.count(": starting ") == 2 and "Requeued" in log


@pytest.mark.slow
def test_real_trainer_is_preempted_on_the_local_executor_and_resumes(tmp_path, tiny_replica):
    """tools/train_net.py on a tiny run: SIGUSR2 to the trainer itself is ignored, SIGUSR2 to the job writes the
    pre-emption checkpoint, the requeued job resumes and finishes with the final evaluation."""
    work = str(tmp_path / "work")
    generated = [g for g in generate_experiment("44", str(tmp_path / "configs"), work, tiny=True, tiny_iterations=40)
                 if "hrda1-512-02_" in g.run.name][:1]
    items = plan_launch(generated, work, tiny=True, extra_opts=["SOLVER.CHECKPOINT_PERIOD", "1000"])
    env = launch_environment(str(tiny_replica))
    jobs = submit_array(items, SlurmResources(gpus_per_node=0, timeout_min=20, signal_delay_s=60), str(tmp_path / "s"),
                        env, cluster="local")
    lock = os.path.join(items[0].output_dir, ".train.lock")
    log = os.path.join(items[0].output_dir, "log.txt")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.isfile(lock) and os.path.isfile(log)
                                          and "Starting training" in open(log).read()):
        time.sleep(0.5)
    trainer = json.load(open(lock))["pid"]
    with open(f"/proc/{trainer}/stat") as f:
        job_process = int(f.read().rsplit(")", 1)[1].split()[1])
    os.kill(trainer, signal.SIGUSR2)  # SLURM with cgroup tracking signals every process: ignored by the trainer
    os.kill(job_process, signal.SIGUSR2)
    assert _wait(jobs[0], 600) == items[0].output_dir
    text = open(log).read()
    assert "Training interrupted by SIGUSR1" in text and "Resumed from" in text, text[-3000:]
    assert os.path.isfile(os.path.join(items[0].output_dir, "model_final.pth"))
    records = [json.loads(line) for line in open(os.path.join(items[0].output_dir, "metrics.json")) if line.strip()]
    assert any("sem_seg/mIoU" in r and r["iteration"] >= 39 for r in records)
