"""End to end on the CPU: a tiny grid (2 configurations of HRDA Fig. S1 x 2 seeds) through ``tools/experiments.py
--launcher local --tiny`` with the real trainer, then ``--collect``: the table and the curve exist, and each mean ±
std is that of the runs' own metrics.json final evaluations."""
import csv
import json
import statistics
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO_ROOT, TOOLS_DIR

GRID = ("hrda1-512-02_", "hrda1-512-03_")


def _tool(tmp_path, *args):
    command = [sys.executable, str(TOOLS_DIR / "experiments.py"), "--exp", "44", "--tiny", "--tiny-iters", "2",
               "--generated-dir", str(tmp_path / "configs"), "--work-dir", str(tmp_path / "work"), *args]
    result = subprocess.run(command, cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr


def _final_miou(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.json").read_text().splitlines() if line.strip()]
    return [r for r in records if "sem_seg/mIoU" in r][-1]["sem_seg/mIoU"]


@pytest.mark.slow  # ~1 min: 4 tiny training runs through tools/train_net.py
def test_tiny_grid_runs_end_to_end_and_collects(tmp_path, tiny_replica):
    text = _tool(tmp_path, "--launcher", "local", "--only", *GRID, "--seeds", "0", "1", "--datasets",
                 str(tiny_replica), "--log-dir", str(tmp_path / "logs"))
    assert "4 runs, 0 skipped, 4 trained, 0 failed" in text
    _tool(tmp_path, "--collect")
    results = tmp_path / "work" / "tiny" / "results" / "44"
    assert (results / "hrda_figS1.png").stat().st_size > 0 and (results / "seed_spread.png").stat().st_size > 0
    rows = {row["row"]: row for row in csv.DictReader(open(results / "hrda_figS1.csv"))}
    markdown = (results / "results.md").read_text()
    for weight, token in (("0.2", GRID[0]), ("0.3", GRID[1])):
        runs = sorted((tmp_path / "work" / "tiny" / "44").glob(f"*{token}*"))
        values = [_final_miou(run) for run in runs]
        assert len(values) == 2
        row = rows[f"lambda_d {weight}"]
        assert row["seeds_found"] == "2" and row["seeds_expected"] == "3"
        assert float(row["mean"]) == statistics.fmean(values) and float(row["std"]) == statistics.stdev(values)
        assert f"| 2/3 | mIoU | {statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f} | not reported |" in \
            markdown
        assert f"{runs[0].name[:-3]}_s2`: not started" in markdown  # the third seed is listed, not averaged away


@pytest.mark.slow  # ~30 s: one tiny startup-test run through tools/train_net.py
def test_startup_test_trains_two_iterations_without_evaluation(tmp_path, tiny_replica):
    """``--startup-test`` (documented as "2 iterations of every seed-0 run, no evaluation"): the run trains 2
    iterations, writes its final model and evaluates nothing (no test split), and counts as finished."""
    text = _tool(tmp_path, "--launcher", "local", "--startup-test", "--only", GRID[0], "--datasets",
                 str(tiny_replica), "--log-dir", str(tmp_path / "logs"))
    assert "1 runs, 0 skipped, 1 trained, 0 failed" in text
    (run,) = (tmp_path / "work" / "tiny" / "startup-test" / "44").iterdir()
    records = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines() if line.strip()]
    assert max(r["iteration"] for r in records) == 1 and (run / "model_final.pth").is_file()
    assert not [k for r in records for k in r if k.startswith("sem_seg/")]
    log = (tmp_path / "logs" / f"{run.name}.log").read_text()
    assert "Start inference" not in log and "Evaluation results" not in log
    assert "1 runs, 1 skipped" in _tool(tmp_path, "--launcher", "local", "--startup-test", "--only", GRID[0],
                                        "--datasets", str(tiny_replica))
