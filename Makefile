# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0

.PHONY: demo test lint bench clean venv

# torch is installed first and pinned: a bare `torch` would pull gigabytes of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) data_samples/demo.py --out demo_output --overwrite

lint: venv
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects no test: that is a broken suite here, never a pass.
test: venv lint
	$(PY) -m pytest -q --nbmake tests notebooks; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: venv
	$(PY) benchmarks/bench_io.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
