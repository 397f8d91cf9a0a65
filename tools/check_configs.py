#!/usr/bin/env python
"""Check that configs build their model, train and evaluate: each one shrunk to a CPU size, a few iterations on
generated replicas of the datasets, then the evaluation. One line per config.

    python tools/check_configs.py --all                                   # every file in configs/
    python tools/check_configs.py configs/gtaHR2csHR_hrda.yaml configs/gtaCAug2cs_advseg_dlv2.yaml
    python tools/experiments.py --exp 41 --list && python tools/check_configs.py configs/generated/41

A folder stands for every YAML below it; YAMLs that differ only in SEED and OUTPUT_DIR (the seeds of one
experiment run) are checked once. The size is ``tools/experiments.py --tiny``'s (hrda_d2/experiments/configs.py):
every pixel size / 8, MiT-b0 / ViT-S/14 / ResNet-50-V1c with 64-wide heads and random weights, no ImageNet
feature distance; a config that is already CPU-sized (the demo configs) keeps its sizes. The method, scales,
losses, MIC, optimizer and schedule are the config's own.

Data: ``--datasets ROOT`` (replicas of ``python datasets/prepare_synthetic.py ROOT --prepare --acdc
--dark-zurich``), else generated into a temporary folder before the first run. Each line reads ``ok`` with the time
and the final mIoU, or ``FAIL`` with the error in one line (the traceback is in OUTPUT/check_configs.log, and on the
console with --debug). The exit status is 1 if any config failed.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
# runs of an already CPU-sized config keep its sizes and change only these keys of the tiny overrides
CPU_SIZED_CROP = 256  # training crops up to this side run at their own size (configs/demo_*.yaml: 128)
RUN_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS", "UDA.FD.LAMBDA", "UDA.DEBUG_IMG_INTERVAL", "DATALOADER.NUM_WORKERS",
            "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
            "TEST.CITYSCAPES_OFFICIAL_EVAL")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("configs", nargs="*", help="config files, or folders of them")
    p.add_argument("--all", action="store_true", help="every file in configs/ and configs/vfm_uda/ (not configs/generated/)")
    p.add_argument("--datasets", default=None, metavar="ROOT",
                   help="prepared replicas (default: generated into a temporary folder)")
    p.add_argument("--iters", type=int, default=2, help="training iterations per config")
    p.add_argument("--output", default="output/check_configs", metavar="DIR",
                   help="the log of every run (check_configs.log) and the runs' folders (default %(default)s)")
    p.add_argument("--keep-runs", action="store_true",
                   help="keep each run's folder (metrics, checkpoints); by default it is deleted after its line")
    p.add_argument("--debug", action="store_true", help="log to the console and show the traceback of a failure")
    args = p.parse_args(argv)
    if not args.configs and not args.all:
        p.error("give config files or folders, or --all")
    return args


def config_files(arguments: List[str], every: bool) -> List[Path]:
    """The YAML files named by ``arguments`` (files, or folders: every ``*.yaml`` below them), then those of
    ``configs/`` with ``every``; a name that is neither is a ``SystemExit`` naming it."""
    files: List[Path] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = sorted(path.rglob("*.yaml"))
            if not found:
                raise SystemExit(f"check_configs: folder '{arg}' holds no .yaml file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"check_configs: '{arg}' is neither a config file nor a folder")
    if every:
        files += sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("vfm_uda/*.yaml"))
    unique: Dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def prepare_replicas(root: str) -> None:
    """Generated replicas of every dataset layout, prepared (what ``datasets/prepare_synthetic.py ROOT --prepare
    --acdc --dark-zurich --wilddash2 --num-val 1`` writes). Its 8 training images per domain give every class a file with
    more pixels of it than the tiny runs' ``DATASETS.RCS.MIN_PIXELS`` (4 do not: rare class sampling then refuses
    the Cityscapes source of the ACDC / Dark Zurich configs)."""
    from hrda_d2.data.preparation import prepare_cityscapes, prepare_gta, prepare_synthia, prepare_wilddash2
    from hrda_d2.data.synthetic import generate_synthetic_datasets

    result = generate_synthetic_datasets(root, num_train=8, num_val=1, acdc=True, dark_zurich=True, wilddash2=True)
    for prepare, folder in ((prepare_gta, result.gta), (prepare_synthia, result.synthia),
                            (prepare_cityscapes, result.cityscapes), (prepare_wilddash2, result.wilddash2)):
        prepare(folder, nproc=1)


def _as_opts(overrides) -> List[str]:
    """``{KEY: value}`` -> ``[KEY, "value", ...]`` (Detectron2's command-line overrides)."""
    return [item for key, value in overrides.items() for item in (key, str(value))]


def run_overrides(path: Path, iters: int) -> Tuple[List[str], str]:
    """(``KEY VALUE`` overrides of the check run of ``path``, what size it runs at)."""
    from hrda_d2 import load_config
    from hrda_d2.config import config_problems
    from hrda_d2.experiments.configs import tiny_overrides

    cfg = load_config(str(path))
    overrides, size = tiny_overrides(cfg, iterations=iters), "tiny"
    shrunk = cfg.clone()
    shrunk.defrost()
    shrunk.merge_from_list(_as_opts(overrides))
    if max(cfg.INPUT.SOURCE.CROP_SIZE) <= CPU_SIZED_CROP or config_problems(shrunk):
        # already CPU-sized (the demo configs): shrinking again would leave inputs below the model's strides
        overrides, size = {key: overrides[key] for key in RUN_KEYS}, "own size"
    opts = _as_opts(overrides)
    return opts, size


def run_identity(path: Path) -> str:
    """The config of ``path`` without what tells the seeds of one experiment run apart (SEED, OUTPUT_DIR)."""
    from hrda_d2 import load_config

    cfg = load_config(str(path), freeze=False)
    cfg.SEED, cfg.OUTPUT_DIR = 0, ""
    return cfg.dump()


def check(path: Path, output: Path, iters: int) -> str:
    """Build, train ``iters`` iterations and evaluate the shrunk ``path`` in ``output``; the result's summary."""
    from hrda_d2 import load_config
    from hrda_d2.engine import HRDATrainer

    opts, size = run_overrides(path, iters)
    cfg = load_config(str(path), opts + ["OUTPUT_DIR", str(output)])
    start = time.perf_counter()
    trainer = HRDATrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    latest = trainer.storage.latest()
    # one test split: "sem_seg/mIoU"; several (e.g. Cityscapes and WildDash 2): "<split>/sem_seg/mIoU" each
    mious = {k[: -len("sem_seg/mIoU")].rstrip("/") or "mIoU": v[0] for k, v in latest.items()
             if k.endswith("sem_seg/mIoU")}
    if trainer.iter != iters or not mious:
        raise RuntimeError(f"the run stopped after {trainer.iter} of {iters} iterations or did not evaluate")
    text = ", ".join(f"{name} {miou:.1f}" if name != "mIoU" else f"mIoU {miou:.1f}" for name, miou in mious.items())
    return f"{size}, {iters} iterations + evaluation in {time.perf_counter() - start:.1f} s, {text}"


def set_up_logging(log_file: Path, debug: bool) -> None:
    """Everything the runs log goes to ``log_file`` (and to the console with ``debug``); the trainer then sets up
    no console logger of its own."""
    import logging

    handlers = [logging.FileHandler(log_file, mode="w")] + ([logging.StreamHandler()] if debug else [])
    for handler in handlers:
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check_configs_") as tmp:
        files = config_files(args.configs, args.all)
        datasets = os.path.abspath(args.datasets or os.path.join(tmp, "datasets"))
        os.environ["DETECTRON2_DATASETS"] = datasets  # before Detectron2 registers its Cityscapes splits
        sys.path.insert(0, str(REPO))
        import hrda_d2  # noqa: F401  (registers the components and the dataset splits under DETECTRON2_DATASETS)

        output = Path(args.output).resolve()
        output.mkdir(parents=True, exist_ok=True)
        log_file = output / "check_configs.log"
        set_up_logging(log_file, args.debug)
        if args.datasets is not None and not os.path.isdir(datasets):
            raise SystemExit(f"check_configs: --datasets '{datasets}' is not a folder; write it with "
                             f"python datasets/prepare_synthetic.py {datasets} --prepare --acdc --dark-zurich")
        failed = checked_all(files, output, args.iters, log_file, None if args.datasets else datasets,
                             keep=args.keep_runs)
    print(f"check_configs: {len(files) - len(failed)} of {len(files)} config(s) ok"
          + (f"; failed: {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def checked_all(files: List[Path], output: Path, iters: int, log_file: Path, generate: Optional[str],
                keep: bool) -> List[str]:
    """Check every file, printing one line each; the names of the failed ones. ``generate``: the folder to write
    the dataset replicas to before the first run that trains (None: they are there). ``keep``: keep each run's
    folder (else it is deleted after its line: the ResNet runs' checkpoints are some 100 MB each)."""
    import gc
    import shutil
    import logging

    logger = logging.getLogger("hrda_d2.check_configs")
    failed: List[str] = []
    seen: Dict[str, Tuple[str, str]] = {}  # run identity -> (config name, "ok" / "FAIL")
    width = max(len(_name(f)) for f in files)
    for path in files:
        name = _name(path)
        try:
            identity = run_identity(path)
            if identity in seen:
                first, status = seen[identity]
                result = f"same run as {first} apart from SEED / OUTPUT_DIR (checked once)"
            else:
                seen[identity] = (name, "FAIL")
                if generate:
                    print(f"check_configs: generating the dataset replicas in {generate} ...", flush=True)
                    prepare_replicas(generate)
                    generate = None
                run_dir = output / name.replace("/", "__").removesuffix(".yaml")
                try:
                    result = check(path, run_dir, iters)
                finally:
                    if not keep:
                        shutil.rmtree(run_dir, ignore_errors=True)
                seen[identity] = (name, "ok")
                status = "ok"
        except (Exception, SystemExit) as e:  # noqa: B902  (load_config refuses a config with SystemExit)
            logger.error("%s failed", name, exc_info=True)  # on the console too with --debug
            status, message = "FAIL", " ".join(str(e).split()) or type(e).__name__
            result = f"{type(e).__name__}: {message} (traceback: {log_file})"
        print(f"{status:<4}  {name:<{width}}  {result}", flush=True)
        if status != "ok":
            failed.append(name)
        gc.collect()
    return failed


def _name(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    sys.exit(main())
