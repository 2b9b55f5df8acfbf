# reconattack — set-up and common tasks. `make demo` and `make test` create the virtual
# environment (.venv) and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# test processes (pytest-xdist); each gets the machine's cores divided among them (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: install demo test test-full lint bench gpu-check report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m reconattack.run

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-full: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m ''

lint: $(STAMP)
	$(PY) -m ruff check reconattack tests benchmarks experiments

bench: $(STAMP)
	$(PY) benchmarks/bench_sift.py --threads 1
	$(PY) benchmarks/bench_sift.py --threads $$(nproc)
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_lbp.py
	$(PY) benchmarks/bench_invert.py
	$(PY) benchmarks/bench_avih.py
	$(PY) benchmarks/eval_memory.py

# On a GPU machine: the paper CFGAN and AVIH face setting in fp32, 16-mixed and bf16-mixed
# (images/s, peak memory, loss vs fp32; exit 1 outside the tolerance); benchmarks/GPU_CHECK.md.
# It needs only torch and pytorch_lightning, so it installs nothing: the venv's python when there
# is one, else $(PYTHON) (same as `PYTHONPATH=. python benchmarks/gpu_check.py`).
# Options: make gpu-check ARGS="--only cfgan --steps 100"
GPU_CHECK_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=. $(GPU_CHECK_PY) benchmarks/gpu_check.py $(ARGS)

# make report DIR=outputs/sift/multiruns/...
report: $(STAMP)
	$(PY) -m reconattack.report $(DIR)

clean:
	rm -rf outputs cache .pytest_cache
