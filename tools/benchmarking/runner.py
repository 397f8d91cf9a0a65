"""Every (variant, phase) of a plan in a fresh subprocess (:mod:`.worker`), so that its peak memory is its own
(CPU: the peak resident set size of that process; CUDA: ``torch.cuda.max_memory_allocated``)."""
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .settings import BenchmarkSettings

__all__ = ["run_plan"]

logger = logging.getLogger(__name__)

# the worker processes import this library (from tools/) and the hrda_d2 of the checkout it belongs to (first on
# sys.path, ahead of the current folder and of any installed copy), and so do the processes they spawn (PYTHONPATH)
_TOOLS_DIR = str(Path(__file__).resolve().parents[1])
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER = (f"import runpy, sys; sys.path[:0] = [{_TOOLS_DIR!r}, {_REPO_ROOT!r}]; "
           "runpy.run_module('benchmarking.worker', run_name='__main__')")


def _worker_env() -> Dict[str, str]:
    path = [_TOOLS_DIR, _REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def _counts_flops(settings: BenchmarkSettings, variant: str, phase: str) -> bool:
    """FLOPs: the baseline counts them; tile reuse changes the slide inference's."""
    return settings.flops and (variant == "baseline" or (variant == "tile_reuse" and phase == "infer"))


def run_plan(settings: BenchmarkSettings, plan: Dict[str, List[str]], timeout: float
             ) -> Tuple[Dict[str, Dict[str, Dict[str, Any]]], List[str]]:
    """``(results[variant][phase], failures)`` of every (variant, phase) of ``plan``, each in a fresh process with
    at most ``timeout`` seconds; a failure is a line naming the (variant, phase) and why (exit status and the end of
    its stderr, or the timeout)."""
    start = time.perf_counter()
    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    failures: List[str] = []
    with tempfile.TemporaryDirectory(prefix="hrda_bench_") as tmp:
        for variant, phases in plan.items():
            for phase in phases:
                run_settings = replace(settings, flops=_counts_flops(settings, variant, phase))
                spec, out = Path(tmp) / f"{variant}_{phase}.spec.json", Path(tmp) / f"{variant}_{phase}.json"
                spec.write_text(json.dumps({"settings": asdict(run_settings), "variant": variant, "phase": phase}))
                cmd = [sys.executable, "-c", _WORKER, str(spec), str(out)]
                logger.info("[%6.0f s] %s / %s ...", time.perf_counter() - start, variant, phase)
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env())
                except subprocess.TimeoutExpired:
                    failures.append(f"{variant}/{phase}: timed out after {timeout:g} s")
                    continue
                if proc.returncode != 0 or not out.exists():
                    failures.append(f"{variant}/{phase}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
                    continue
                results.setdefault(variant, {})[phase] = json.loads(out.read_text())
    return results, failures
