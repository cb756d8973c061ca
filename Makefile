# rlvr-nb: `make run` (main job) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
KERNEL := rlvr-nb

.PHONY: setup run test unit notebooks-smoke bench sync clean

# One-time set-up: venv, CPU PyTorch (pinned), the package with its test extra, a Jupyter kernel.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps verl==0.9.1  # only its packaged config, for the override-key test
	$(PY) -m ipykernel install --user --name $(KERNEL) --display-name "Python (rlvr-nb)" >/dev/null
	touch $@

setup: $(VENV)/.installed

# Main job: every notebook at the cpu profile into papermill_runs/cpu/.
run: setup
	$(PY) -m rlvr_nb.notebook.run --profile cpu

# Whole test suite: unit tests plus every notebook at the smoke profile.
test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Re-write every .ipynb from its .py (the .py is the source of truth).
sync: setup
	$(VENV)/bin/jupytext --to ipynb notebooks/[0-9]*.py

clean:
	rm -rf $(VENV) runs papermill_runs/smoke
