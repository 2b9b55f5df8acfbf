# reconattack — set-up and common tasks. `make demo` and `make test` create the virtual
# environment (.venv) and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-full lint bench report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m reconattack.run

test: $(STAMP)
	$(PY) -m pytest -q

test-full: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(PY) -m ruff check reconattack tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_sift.py --threads 1
	$(PY) benchmarks/bench_sift.py --threads $$(nproc)
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_avih.py

# make report DIR=outputs/cfgan/multiruns/...
report: $(STAMP)
	$(PY) -m reconattack.report $(DIR)

clean:
	rm -rf outputs cache .pytest_cache
