# hrda_d2 — the two set-up commands are `make demo` and `make test`; both create the environment on
# first use (scripts/setup_env.sh: this checkout's own small ./.venv, layered over a virtual environment of
# PyTorch, Detectron2 and the test tools cached outside the checkout, keyed by the requirements' hash).
.PHONY: env test test-all demo clean-env gpu-check

PY := .venv/bin/python

env:
	@bash scripts/setup_env.sh

# default suite (excludes tests marked `slow`); `make test-all` runs everything
test: env
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: env
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

demo: env
	$(PY) tools/run_demo.py $(DEMO_ARGS)

clean-env:  # this checkout's layer only; the shared cached packages stay
	rm -rf .venv

# CUDA machine only: GPU correctness checks + paper-size benchmark (tools/gpu_check.py; JSON report
# gpu_check_report.json). Uses the existing environment and installs nothing; exits 2 without a GPU.
gpu-check:
	@test -x $(PY) || { echo "gpu-check: $(PY) not found; create the environment first (make env)"; exit 2; }
	$(PY) tools/gpu_check.py $(GPU_CHECK_ARGS)
