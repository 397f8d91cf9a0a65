"""Each checkout runs its own code (scripts/setup_env.sh): two clones share one cached environment, and each one's
``.venv/bin/python`` imports that clone's ``hrda_d2`` (also in the processes it starts with ``sys.executable``, as
``tools/experiments.py`` starts its training runs), whichever clone was prepared last.

The clones are ``git clone`` copies of this repository's HEAD. Their cache (``HRDA_D2_CACHE``) is a temporary folder
whose entry for the clones' cache key is a link to the environment running these tests, so nothing is installed.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from tests.helpers.paths import REPO_ROOT

# the environment that holds torch: <env>/lib/pythonX.Y/site-packages/torch/__init__.py
SHARED_ENV = Path(torch.__file__).resolve().parents[4]

# which hrda_d2 the interpreter would import, and which one a process it starts with sys.executable would (found,
# not imported: the set-up script's check and tools/experiments.py below import it for real)
FIND = "import importlib.util; print(importlib.util.find_spec('hrda_d2').origin, flush=True)"
PROBE = f"import subprocess, sys; {FIND}; subprocess.run([sys.executable, '-c', {FIND!r}], check=True)"


def _env(cache: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tests' PYTHONPATH names this checkout
    env["HRDA_D2_CACHE"] = str(cache)
    return env


def _run(cmd, cwd: Path, env: Dict[str, str]) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(dest)], check=True, capture_output=True)
    return dest


def _prepare(clone: Path, env: Dict[str, str]) -> str:
    """``make env`` of ``clone`` (its set-up script, as the Makefile runs it)."""
    return _run(["bash", "scripts/setup_env.sh"], clone, env)


def _imports_itself(clone: Path, elsewhere: Path, env: Dict[str, str]) -> None:
    out = _run([clone / ".venv" / "bin" / "python", "-c", PROBE], elsewhere, env).split()
    own = str(clone / "hrda_d2" / "__init__.py")
    assert out == [own, own], out  # the interpreter, then the process it started


@pytest.fixture
def shared_cache(tmp_path):
    if not (SHARED_ENV / "bin" / "python").exists():
        pytest.skip(f"the tests do not run in a virtual environment ({SHARED_ENV})")
    cache = tmp_path / "cache"
    cache.mkdir()
    key = _run(["bash", "scripts/cached_env.sh", "--key"], REPO_ROOT, dict(os.environ)).strip()
    (cache / f"venv-{key}").symlink_to(SHARED_ENV, target_is_directory=True)
    return cache


def test_two_clones_each_import_their_own_code_in_either_order(tmp_path, shared_cache):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = _env(shared_cache)
    a, b = _clone(tmp_path / "a"), _clone(tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A then B (A is the first prepared clone), then A again (now B is)
    for prepared_now, first, last in (((a, b), a, b), ((a,), b, a)):
        for clone in prepared_now:
            out = _prepare(clone, env)
            assert f"hrda_d2 from {clone / 'hrda_d2'}" in out, out
        for clone in (a, b):
            _imports_itself(clone, elsewhere, env)
        # a tool of the first prepared clone writes into that clone (before: into the last prepared one)
        _run([first / ".venv" / "bin" / "python", "tools/experiments.py", "--exp", "40", "--list"], first, env)
        assert (first / "configs" / "generated" / "40").is_dir()
        assert not (last / "configs" / "generated").exists()
        shutil.rmtree(first / "configs" / "generated")
    # each clone's .venv is its own folder, and the shared environment names neither clone
    assert (a / ".venv").is_dir() and not (a / ".venv").is_symlink()
    shared_pth = "".join(p.read_text() for p in shared_cache.glob("venv-*/lib/*/site-packages/*.pth"))
    assert str(a) not in shared_pth and str(b) not in shared_pth


@pytest.mark.slow
def test_preparing_again_keeps_the_layer_and_a_moved_checkout_is_repointed(tmp_path, shared_cache):
    env = _env(shared_cache)
    a = _clone(tmp_path / "a")
    _prepare(a, env)
    python = (a / ".venv" / "bin" / "python").resolve()
    _prepare(a, env)
    assert (a / ".venv" / "bin" / "python").resolve() == python  # reused, not re-made
    moved = a.rename(tmp_path / "moved")
    out = _prepare(moved, env)
    assert f"hrda_d2 from {moved / 'hrda_d2'}" in out, out
