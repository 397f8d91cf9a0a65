#!/usr/bin/env python
"""End-to-end demo (``make demo``): generated data -> source-only and HRDA training -> evaluation -> pictures.

    python tools/run_demo.py [--output output/demo] [--iters 300] [--num-train 24] [--num-val 8] [--mic]

1. writes generated GTA-like (source) and Cityscapes-like (target) replicas in the real folder layouts with
   a deliberate appearance shift (``datasets/prepare_synthetic.py --prepare``) under ``OUTPUT/data``;
2. trains the source-only baseline (``configs/demo_source_only.yaml``) and HRDA with DACS self-training
   (``configs/demo_hrda.yaml``) with ``tools/train_net.py`` (tiny MiT-b0, CPU); with ``--mic``
   (``make demo DEMO_ARGS=--mic``) also MIC(HRDA) (``configs/demo_mic.yaml``), a third column everywhere;
3. evaluates every model on the target validation split (``cityscapes_fine_sem_seg_val`` of the replica), prints
   a side-by-side table (per-class IoU, mIoU);
4. writes prediction overlays (Detectron2 ``Visualizer``) and LR / HR / scale-attention panels of a few target
   images, and one comparison picture (source-only vs HRDA on the same image) into ``OUTPUT/pictures``.

Every step is an ordinary command of the project, so each can be re-run by hand (the commands are logged).
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("hrda_d2.demo")


def run(cmd, env):
    logger.info("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, env=env, cwd=REPO)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo", help="folder for data, runs and pictures")
    p.add_argument("--iters", type=int, default=300, help="training iterations of each run")
    p.add_argument("--num-train", type=int, default=24, help="generated training images per domain")
    p.add_argument("--num-val", type=int, default=8, help="generated target validation images")
    p.add_argument("--num-pictures", type=int, default=3, help="target images to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--mic", action="store_true",
                   help="also train MIC(HRDA) (configs/demo_mic.yaml): a third run, ~1.4x the HRDA run's time")
    return p.parse_args()


def train(config: str, out_dir: Path, iters: int, env) -> None:
    run([sys.executable, "tools/train_net.py", "--config-file", config,
         "SOLVER.MAX_ITER", iters, "TEST.EVAL_PERIOD", 0, "DATASETS.TEST", "()",  # evaluated once, below
         "SOLVER.CHECKPOINT_PERIOD", iters,
         "OUTPUT_DIR", out_dir], env)


def evaluate(config: str, weights: Path):
    """Build the model of ``config``, load ``weights``, evaluate on the config's test split."""
    from detectron2.config import get_cfg

    from hrda_d2 import add_hrda_config
    from hrda_d2.checkpoint import load_model_weights
    from hrda_d2.engine import HRDATrainer

    cfg = add_hrda_config(get_cfg())
    cfg.merge_from_file(str(REPO / config))
    cfg.freeze()
    model = HRDATrainer.build_model(cfg, log=False)
    load_model_weights(model, str(weights))
    return cfg, model, HRDATrainer.test(cfg, model)["sem_seg"]


TITLES = {"source_only": "source-only", "hrda": "HRDA", "mic": "MIC(HRDA)"}


def comparison_table(classes, results) -> str:
    """Per-class IoU, mIoU and pixel accuracy of every run (``{name: metrics}``, source-only first) and the
    gain of each adapted run over source-only."""
    from tabulate import tabulate

    baseline, adapted = results["source_only"], [name for name in results if name != "source_only"]
    rows = []
    for label, key in [(c, f"IoU-{c}") for c in classes] + [("mIoU", "mIoU"), ("pixel acc.", "pACC")]:
        values = [f"{results[name][key]:.1f}" for name in results]
        gains = [f"{results[name][key] - baseline[key]:+.1f}" for name in adapted]
        rows.append((label, *values, *gains))
    headers = ["class (target val)"] + [TITLES[n] for n in results] + [
        "gain" if len(adapted) == 1 else f"gain {TITLES[n]}" for n in adapted]
    return tabulate(rows, headers=headers, tablefmt="github")


def draw_pictures(cfg, models, out_dir: Path, num: int) -> Path:
    """Overlays per model, LR/HR/attention panels of the HRDA model, one side-by-side comparison."""
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import ColorMode, Visualizer
    from PIL import Image

    from hrda_d2.utils.colorize import colorize_labels, grey_image

    out_dir.mkdir(parents=True, exist_ok=True)
    for model in models.values():
        model.eval()
    split = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(split)
    dicts = sorted(DatasetCatalog.get(split), key=lambda d: d["file_name"])[:num]
    comparison_rows = []
    for d in dicts:
        rgb = read_image(d["file_name"], format="RGB")
        image = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        stem = Path(d["file_name"]).stem
        gt = np.asarray(Image.open(d["sem_seg_file_name"]))
        row = [rgb, colorize_labels(torch.from_numpy(gt.astype(np.int64)), meta.stuff_colors)]
        for name, model in models.items():
            with torch.no_grad():
                logits = model([{"image": image, "height": rgb.shape[0], "width": rgb.shape[1]}])[0]["sem_seg"]
            pred = logits.argmax(0).cpu()
            overlay = Visualizer(rgb, meta, instance_mode=ColorMode.IMAGE).draw_sem_seg(pred, alpha=0.6).get_image()
            Image.fromarray(overlay).save(out_dir / f"{stem}_{name}_overlay.png")
            row.append(colorize_labels(pred, meta.stuff_colors))
            if name == "hrda":
                with torch.no_grad():
                    scales = model.forward_scales(model.normalize(image[None].float()))
                panel = np.concatenate([
                    colorize_labels(scales["lr"][0].argmax(0), meta.stuff_colors),
                    colorize_labels(scales["hr"][0].argmax(0), meta.stuff_colors),
                    colorize_labels(scales["fused"][0].argmax(0), meta.stuff_colors),
                    grey_image(scales["attention"][0, 0]),
                ], axis=1)
                Image.fromarray(panel).save(out_dir / f"{stem}_hrda_lr_hr_fused_attention.png")
        comparison_rows.append(np.concatenate(row, axis=1))
    names = "_".join(name.replace("_", "") for name in models)
    comparison = out_dir / f"comparison_target_image_gt_{names}.png"
    Image.fromarray(np.concatenate(comparison_rows, axis=0)).save(comparison)
    return comparison


def main() -> int:
    args = parse_args()
    start = time.time()
    out = (REPO / args.output).resolve()
    data = out / "data"
    # one OpenMP thread per process: the trainer and its data-loader worker share the cores, and OpenMP's
    # spinning threads slow tiny models down by an order of magnitude when the cores are oversubscribed
    env = dict(os.environ, DETECTRON2_DATASETS=str(data), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    os.environ["DETECTRON2_DATASETS"] = str(data)  # before Detectron2 registers its Cityscapes splits
    from detectron2.utils.logger import setup_logger

    setup_logger(name="hrda_d2")
    setup_logger(name="detectron2")
    logger.info(f"[1/4] generating the synthetic source/target datasets in {data}")
    run([sys.executable, "datasets/prepare_synthetic.py", data, "--num-train", args.num_train,
         "--num-val", args.num_val, "--seed", args.seed, "--prepare"], env)

    runs = {"source_only": "configs/demo_source_only.yaml", "hrda": "configs/demo_hrda.yaml"}
    if args.mic:
        runs["mic"] = "configs/demo_mic.yaml"
    times = {}
    for i, (name, config) in enumerate(runs.items()):
        logger.info(f"[2/4] training {name} ({args.iters} iterations, {config})")
        t0 = time.time()
        train(config, out / name, args.iters, env)
        times[name] = time.time() - t0

    logger.info(f"[3/4] evaluating the {len(runs)} models on the target validation split")
    results, models = {}, {}
    for name, config in runs.items():
        cfg, models[name], results[name] = evaluate(config, out / name / "model_final.pth")
    from detectron2.data import MetadataCatalog

    classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).stuff_classes
    table = comparison_table(classes, results)
    (out / "results.json").write_text(json.dumps({"results": results, "train_seconds": times}, indent=1))

    logger.info("[4/4] drawing predictions")
    comparison = draw_pictures(cfg, models, out / "pictures", args.num_pictures)
    print("\nTarget-domain validation (generated Cityscapes-like replica), IoU in %:\n")
    print(table)
    for name in [n for n in runs if n != "source_only"]:
        gain = results[name]["mIoU"] - results["source_only"]["mIoU"]
        print(f"\n{TITLES[name]} vs source-only: {gain:+.1f} mIoU", end="")
    trained = " and ".join(f"{times[name]:.0f} s" for name in runs)
    print(f"\n(training {trained} on {os.cpu_count()} CPU cores; total {time.time() - start:.0f} s)")
    print(f"Pictures: {out / 'pictures'} (side-by-side: {comparison})")
    print(f"Metrics: {out / 'results.json'}; runs: {', '.join(str(out / name) for name in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
