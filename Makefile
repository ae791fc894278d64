# Set-up and everyday commands. Every target creates the environment it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned: pip takes it from wherever its configuration looks first. On this
# project's machines that is a local folder with the CPU wheel; elsewhere on Linux x86-64
# PyPI's torch is the CUDA build. TORCH_INDEX=<one of PyTorch's wheel indexes> picks a build
# (its .../whl/cpu index for the CPU build, .../whl/cu126 for CUDA 12.6). pyproject keeps a
# loose range for users.
TORCH_PIN ?= torch==2.13.0
TORCH_INDEX ?=
# Test worker processes (pytest-xdist): one per CPU, at most 4 (each holds torch and its own
# fits, which use one thread). A test file stays on one worker, so the module-scoped
# fixtures (the docs build, the notebooks' kernel) are made once.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))" 2>/dev/null || echo 2)
PYTEST := -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: help venv test test-fast demo bench docs-numbers docs clean

help:
	@echo "make demo   - create .venv and run the main job (SelfLabelClusterer on scikit-learn's digits)"
	@echo "make test   - create .venv and run the whole test suite (doctests and notebooks included)"
	@echo "make bench  - run every benchmark on the quick budget (FULL=1: the published runs)"
	@echo "make docs-numbers - regenerate the benchmark sections of the docs from benchmarks/results/"
	@echo "make docs   - build the documentation site, notebooks executed (warnings are errors)"

# setup.py compiles skselflabel/_solver/_fused.c (the solver's CPU kernel) into the source tree.
$(VENV)/.installed: pyproject.toml setup.py skselflabel/_solver/_fused.c
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_PIN)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)",)
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) $(PYTEST)

test-fast: venv
	$(PY) $(PYTEST) -m "not slow"

demo: venv
	$(PY) -m skselflabel.demo

# Every benchmark on the quick budget (minutes; results in benchmarks/results/quick/, page in
# output/bench/), or with FULL=1 the published runs (hours), which write benchmarks/results/
# and regenerate docs/benchmarks.md and the README's tables. Data that are not installed
# (Fashion-MNIST) are skipped with the reason.
bench: venv
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py $(if $(FULL),--full,)

# The benchmark sections of docs/benchmarks.md and README.md from benchmarks/results/.
docs-numbers: venv
	$(PY) benchmarks/render.py

docs: venv
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build dist *.egg-info docs/_build docs/generated docs/notebooks .pytest_cache
	rm -f skselflabel/*.so skselflabel/*.pyd skselflabel/*/*.so skselflabel/*/*.pyd
