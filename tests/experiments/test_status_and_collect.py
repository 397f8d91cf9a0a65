"""Run states from OUTPUT_DIR (finished = model_final.pth + the final evaluation in metrics.json), and --collect:
mean ± sample std over the finished seeds, the paper's value, per-class IoU, missing runs listed, CSV and PNGs."""
import csv
import json
import math
import os
import socket
import statistics

import pytest

from hrda_d2.experiments import generate_experiment
from hrda_d2.experiments.launch import RunState, final_evaluation, run_status
from hrda_d2.experiments.results import collect_experiment, mean_and_std


def write_run(folder, *, final_miou=None, periodic_miou=None, max_iter=40000, checkpoint=None, final_model=True,
              road=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 10, "total_loss": 2.0}) + "\n")
        if periodic_miou is not None:
            f.write(json.dumps({"iteration": max_iter // 2 - 1, "sem_seg/mIoU": periodic_miou}) + "\n")
        if final_miou is not None:
            record = {"iteration": max_iter, "sem_seg/mIoU": final_miou, "sem_seg/IoU-road": road or final_miou,
                      "sem_seg/IoU-bus": float("nan")}
            f.write(json.dumps(record) + "\n")
    if final_model:
        open(os.path.join(folder, "model_final.pth"), "wb").close()
    if checkpoint:
        with open(os.path.join(folder, "last_checkpoint"), "w") as f:
            f.write(checkpoint)


def test_run_states(tmp_path):
    assert run_status(str(tmp_path / "none"), 100, 10).state is RunState.NOT_STARTED
    write_run(tmp_path / "done", final_miou=50.0, max_iter=100)
    assert run_status(str(tmp_path / "done"), 100, 10).state is RunState.FINISHED
    assert final_evaluation(str(tmp_path / "done"), 100)["mIoU"] == 50.0
    # a periodic evaluation is not the final one; trained without the final evaluation: resume only evaluates
    write_run(tmp_path / "no_eval", periodic_miou=40.0, max_iter=100)
    status = run_status(str(tmp_path / "no_eval"), 100, 10)
    assert status.state is RunState.INTERRUPTED and "final evaluation missing" in str(status)
    assert run_status(str(tmp_path / "no_eval"), 100, 0).state is RunState.FINISHED  # a run that never evaluates
    write_run(tmp_path / "stopped", periodic_miou=40.0, max_iter=100, final_model=False, checkpoint="model_0000049.pth")
    assert str(run_status(str(tmp_path / "stopped"), 100, 10)) == "interrupted (last checkpoint model_0000049.pth)"
    with open(tmp_path / "stopped" / ".train.lock", "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    assert run_status(str(tmp_path / "stopped"), 100, 10).state is RunState.RUNNING
    with open(tmp_path / "stopped" / "metrics.json", "a") as f:
        f.write('{"iteration": 99, "sem_seg/mI')  # a line cut by a kill does not hide the others
    assert final_evaluation(str(tmp_path / "done"), 100) is not None


def test_mean_and_sample_std():
    assert mean_and_std([70.0, 72.0, 77.0]) == (pytest.approx(73.0), pytest.approx(statistics.stdev([70, 72, 77])))
    assert mean_and_std([70.0]) == (70.0, None) and mean_and_std([]) == (None, None)
    assert mean_and_std([70.0, math.nan, 72.0]) == (71.0, pytest.approx(math.sqrt(2)))


def test_collect_averages_finished_seeds_and_lists_the_rest(tmp_path):
    generated = {exp: generate_experiment(exp, str(tmp_path / "configs"), str(tmp_path / "work"))
                 for exp in ("40", "44")}
    gta = [g for g in generated["40"] if g.run.config.label == "GTA->Cityscapes"]
    write_run(gta[0].output_dir, final_miou=72.5, road=95.0)
    write_run(gta[1].output_dir, final_miou=74.1, road=96.0)
    write_run(gta[2].output_dir, periodic_miou=60.0, final_model=False, checkpoint="model_0019999.pth")
    report = collect_experiment("40", generated["40"], str(tmp_path / "results"), generated.__getitem__)
    assert report.finished == 2 and report.total == 6 and len(report.missing) == 4
    text = open(report.files[0]).read()
    mean, std = statistics.fmean([72.5, 74.1]), statistics.stdev([72.5, 74.1])
    assert f"| GTA->Cityscapes | `{gta[0].run.config.stem}` | 2/3 | mIoU | {mean:.1f} ± {std:.1f} | 73.8 (" in text
    assert f"| Synthia->Cityscapes | `{generated['40'][3].run.config.stem}` | 0/3 | mIoU16 | – | 65.8 (" in text
    assert f"- `{gta[2].run.name}`: interrupted (last checkpoint model_0019999.pth)" in text
    assert "sample standard deviation" in text and "| row | road | bus |" in text  # per-class IoU (bus: NaN)
    assert f"| GTA->Cityscapes | 95.5 ± {statistics.stdev([95.0, 96.0]):.1f} | – |" in text
    rows = list(csv.DictReader(open(tmp_path / "results" / "40" / "hrda_table1.csv")))
    assert float(rows[0]["mean"]) == mean and float(rows[0]["std"]) == std and rows[0]["seeds_found"] == "2"
    assert float(rows[0]["IoU-road_mean"]) == 95.5 and rows[0]["IoU-bus_mean"] == "" and rows[0]["paper"] == "73.8"
    assert rows[1]["mean"] == "" and rows[1]["seeds_found"] == "0"
    assert os.path.getsize(tmp_path / "results" / "40" / "seed_spread.png") > 0

    # exp 44: Table 7 row 6 and the Fig. S1 point lambda_d 0.1 come from exp 40's runs; unstarted runs are listed
    report = collect_experiment("44", generated["44"], str(tmp_path / "results"), generated.__getitem__)
    text = open(report.files[0]).read()
    assert "| row 6: full HRDA (exp 40) |" in text and "| lambda_d 0.1 (exp 40) |" in text
    assert text.count(f"{mean:.1f} ± {std:.1f}") == 2
    assert "blocked" not in text  # every run of exp 44 is supported; unstarted ones are listed as such
    assert ": not started" in text
    assert os.path.getsize(tmp_path / "results" / "44" / "hrda_figS1.png") > 0
    figs1 = list(csv.DictReader(open(tmp_path / "results" / "44" / "hrda_figS1.csv")))
    assert [r["x"] for r in figs1] == ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.0", "0.1"]
