"""The command line of ``tools/experiments.py`` (docs/experiments.md): generate, list, launch, collect.

Every refusal is one line naming what is wrong and what to do (``SystemExit``); ``tools/experiments.py`` sets up
the logging.
"""
import argparse
import logging
import os
import signal
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, TextIO

from .catalog import EXPERIMENT_IDS
from .configs import GeneratedRun, GenerationError, generate_experiment, load_run_config
from .launch import TRAIN_NET, LaunchError, launch_environment, memory_summary, plan_launch, run_status
from .results import collect_experiment

__all__ = ["main", "parser", "run"]

logger = logging.getLogger("hrda_d2.experiments")

DESCRIPTION = """The paper experiments in one command (docs/experiments.md).

  python tools/experiments.py --exp 44 --list                  # runs, paper values, memory switches, state
  python tools/experiments.py --exp 44                         # write configs/generated/44/*.yaml
  python tools/experiments.py --exp 44 --launcher local        # train them one after another (re-runnable)
  python tools/experiments.py --exp 44 --launcher slurm --gpus 1 --cpus 8 --mem-gb 64 --time-min 2880 \\
      --partition gpu                                          # one submitit job array, requeued on pre-emption
  python tools/experiments.py --exp 44 --collect               # tables (Markdown, CSV) and figures

Ids: 40 41 42 43 44 49 (HRDA experiments.py), mic80 mic81 (MIC experiments.py ids 80, 81), dinov2 (this project).
--tiny runs any of them on CPU on the generated replicas (datasets/prepare_synthetic.py ROOT --prepare; pass
--datasets ROOT); --startup-test trains 2 iterations of every seed-0 run, as the original's --startup-test.
Config overrides for every launched run go after "--": ... --launcher local -- SOLVER.MAX_ITER 8000
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/experiments.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", nargs="+", required=True, metavar="ID",
                   help=f"experiment ids ({', '.join(EXPERIMENT_IDS)}) or 'all'")
    p.add_argument("--list", action="store_true", help="print every run (name, paper item, paper value, memory "
                   "switches, state)")
    p.add_argument("--launcher", choices=("local", "slurm"), help="train the generated runs")
    p.add_argument("--collect", action="store_true", help="collect the finished runs into tables and figures")
    p.add_argument("--tiny", action="store_true", help="the CPU versions (MiT-b0, sizes / 8) on generated replicas")
    p.add_argument("--tiny-iters", type=int, default=4, help="training iterations of a --tiny run (default 4)")
    p.add_argument("--startup-test", action="store_true", help="2 iterations of every seed-0 run, no evaluation")
    p.add_argument("--seeds", nargs="+", type=int, help="launch only these seeds (default: 0 1 2)")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="launch only runs whose name contains one of TEXT")
    p.add_argument("--work-dir", default="output/experiments", help="runs go to WORK_DIR[/tiny]/<exp>/<run name>")
    p.add_argument("--generated-dir", default=None, help="where the YAMLs go (default: configs/generated)")
    p.add_argument("--results-dir", default=None, help="--collect output (default: WORK_DIR[/tiny]/results)")
    p.add_argument("--datasets", help="$DETECTRON2_DATASETS of the launched runs")
    p.add_argument("--gpu-memory", type=float, metavar="GB",
                   help="GPU size: the memory switches each run needs on it are added to its command (and listed)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (train_net --num-gpus; SLURM gpus per node)")
    p.add_argument("--log-dir", help="local launcher: each trainer's console output into LOG_DIR/<run>.log")
    slurm = p.add_argument_group("SLURM (submitit)")
    slurm.add_argument("--cpus", type=int, default=8, help="CPUs per task")
    slurm.add_argument("--mem-gb", type=float, default=64, help="memory per task")
    slurm.add_argument("--time-min", type=int, default=48 * 60, help="time limit per task in minutes")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--array-parallelism", type=int, help="tasks of the array running at once")
    slurm.add_argument("--signal-delay-s", type=int, default=180,
                       help="seconds before the time limit at which SLURM sends USR2 (checkpoint + requeue)")
    slurm.add_argument("--max-requeues", type=int, default=3, help="requeues at the time limit per task")
    slurm.add_argument("--slurm-folder", default=None, help="submitit logs (default: WORK_DIR/slurm/%%j)")
    slurm.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                       help="extra #SBATCH parameter (e.g. account=abc, qos=high, constraint=a100); repeatable")
    slurm.add_argument("--submitit-cluster", default="slurm", choices=("slurm", "local", "debug"),
                       help="submitit executor ('local': the same job array on this machine)")
    p.add_argument("--train-script", default=TRAIN_NET, help=argparse.SUPPRESS)  # a train_net stand-in (tests)
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="after --: KEY VALUE overrides appended to every launched run (-- SOLVER.MAX_ITER 8000)")
    return p


def list_experiment(exp: str, generated: Sequence[GeneratedRun], gpu_memory_gb: Optional[float]) -> str:
    """The text of ``--list`` for ``exp``: every run with its paper item, the paper's value, the memory switches it
    needs and its state."""
    lines = [f"experiment {exp}: {len(generated)} runs"]
    by_item: Dict[str, List[GeneratedRun]] = OrderedDict()
    for gen in generated:
        by_item.setdefault(gen.run.config.item.title, []).append(gen)
    for title, runs in by_item.items():
        lines.append(f"  {title}")
        for gen in runs:
            config = gen.run.config
            cfg = load_run_config(gen.config_file)
            state = run_status(gen.output_dir, int(cfg.SOLVER.MAX_ITER),
                               int(cfg.TEST.EVAL_PERIOD) if cfg.DATASETS.TEST else 0)
            lines += [f"    {gen.run.name}",
                      f"        row: {config.label} | paper: {config.expected} ({config.metric}) | memory: "
                      f"{memory_summary(config, gpu_memory_gb)} | state: {state}",
                      f"        config: {gen.config_file}"]
    return "\n".join(lines)


def _experiments(ids: Sequence[str]) -> List[str]:
    if list(ids) == ["all"]:
        return list(EXPERIMENT_IDS)
    unknown = [i for i in ids if i not in EXPERIMENT_IDS]
    if unknown:
        raise SystemExit(f"tools/experiments.py: unknown experiment id(s) {unknown}; known: {', '.join(EXPERIMENT_IDS)}"
                         " or 'all'")
    return list(ids)


def _slurm_params(pairs: Sequence[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"tools/experiments.py: --slurm-param {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def _selected(args, exps: Sequence[str], generated: Dict[str, List[GeneratedRun]]) -> List[GeneratedRun]:
    """The runs ``--seeds`` / ``--only`` select; refuses a selection that matches nothing."""
    every = [g for exp in exps for g in generated[exp]]
    runs = [g for g in every if (args.seeds is None or g.run.seed in args.seeds)
            and (args.only is None or any(text in g.run.name for text in args.only))]
    if not runs:
        seeds = sorted({g.run.seed for g in every})
        wrong = [f"--seeds {' '.join(map(str, args.seeds))}" if args.seeds and not set(args.seeds) & set(seeds)
                 else "", f"--only {' '.join(args.only)}" if args.only else ""]
        raise SystemExit(f"tools/experiments.py: {' and '.join(w for w in wrong if w)} match none of the {len(every)} "
                         f"runs of --exp {' '.join(exps)} (seeds {' '.join(map(str, seeds))}; names such as "
                         f"{every[0].run.name}): see --list for the names")
    return runs


def _launch(args, exps: Sequence[str], generated: Dict[str, List[GeneratedRun]]) -> int:
    from .launch import run_local

    runs = _selected(args, exps, generated)
    opts = list(args.opts[1:] if args.opts[:1] == ["--"] else args.opts)
    items = plan_launch(runs, args.work_dir, tiny=args.tiny, startup_test=args.startup_test,
                        gpu_memory_gb=args.gpu_memory, num_gpus=args.gpus, extra_opts=opts)
    env = launch_environment(args.datasets)
    if args.launcher == "local":
        outcomes = run_local(items, env, train_script=args.train_script, log_dir=args.log_dir)
        failed = [o for o in outcomes if not o.ok]
        logger.info("local launcher: %d runs, %d skipped, %d trained, %d failed or stopped", len(outcomes),
                    sum(o.skipped for o in outcomes), sum(o.returncode == 0 for o in outcomes), len(failed))
        stopped = [o.returncode for o in failed if o.returncode and o.returncode > 128]
        if stopped:
            return stopped[-1]
        return 1 if failed or len(outcomes) < len(items) else 0
    try:
        from .slurm import SlurmResources, submit_array  # submitit: needed by this path only
    except ImportError as e:
        raise SystemExit(f"tools/experiments.py: --launcher slurm needs submitit ({e}): pip install submitit") from None

    resources = SlurmResources(gpus_per_node=args.gpus, cpus_per_task=args.cpus, mem_gb=args.mem_gb,
                               timeout_min=args.time_min, partition=args.partition,
                               array_parallelism=args.array_parallelism, signal_delay_s=args.signal_delay_s,
                               max_requeues=args.max_requeues, additional=_slurm_params(args.slurm_param))
    folder = args.slurm_folder or os.path.join(args.work_dir, "slurm", "%j")
    submit_array(items, resources, folder, env, cluster=args.submitit_cluster, train_script=args.train_script)
    return 0


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None) -> int:
    """The tool: generate, then list (to ``stdout``, default ``sys.stdout``), launch and / or collect; returns the
    exit status."""
    args = parser().parse_args(argv)
    stdout = sys.stdout if stdout is None else stdout
    if args.collect and args.startup_test:
        raise SystemExit("tools/experiments.py: --startup-test runs do not evaluate; --collect reads full runs")
    exps = _experiments(args.exp)
    cache: Dict[str, List[GeneratedRun]] = {}

    def generated(exp: str) -> List[GeneratedRun]:
        if exp not in cache:
            cache[exp] = generate_experiment(exp, args.generated_dir, args.work_dir, tiny=args.tiny,
                                             tiny_iterations=args.tiny_iters)
        return cache[exp]

    try:
        for exp in exps:
            generated(exp)
        if args.list:
            for exp in exps:
                stdout.write(list_experiment(exp, cache[exp], args.gpu_memory) + "\n")
        status = _launch(args, exps, cache) if args.launcher else 0
    except (GenerationError, LaunchError) as e:
        raise SystemExit(f"tools/experiments.py: {e}") from None
    if args.collect:
        results_dir = args.results_dir or os.path.join(args.work_dir, *(["tiny"] if args.tiny else []), "results")
        for exp in exps:  # collect_experiment logs what it found and where it wrote
            collect_experiment(exp, cache[exp], results_dir, generated)
    return status


def run() -> None:
    """Entry point of the tool: exit with :func:`main`'s status (128 + n after a forwarded signal n)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
