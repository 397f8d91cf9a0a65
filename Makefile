# hrda_d2 — the two set-up commands are `make demo` and `make test`; both create the environment on
# first use (scripts/setup_env.sh: a cached virtual environment keyed by the requirements' hash,
# linked as ./.venv).
.PHONY: env test test-all demo clean-env

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

clean-env:
	rm -f .venv
