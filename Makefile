# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first, pinned. Which build you get depends on the index:
#   TORCH_INDEX empty (default): pip's configured index / find-links. From PyPI on Linux x86_64 that is the CUDA
#     build (torch plus ~3 GB of nvidia-* wheels); on macOS and Windows the CPU build.
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu    CPU-only build (~200 MB download)
#   TORCH_INDEX=https://download.pytorch.org/whl/cu126  a given CUDA build (match your driver)
# e.g. `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`. An existing .venv is not reinstalled
# when these change: `make clean` first.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# pip's output: each package it collects and a download progress bar; PIP_OUTPUT=--quiet for terse CI logs.
PIP_OUTPUT ?= --progress-bar on

TORCH_FROM := $(if $(strip $(TORCH_INDEX)),--index-url $(strip $(TORCH_INDEX)),)
TORCH_WHERE := $(if $(strip $(TORCH_INDEX)),from $(strip $(TORCH_INDEX)),from pip's default index: CUDA build on Linux x86_64 (several GB); TORCH_INDEX=https://download.pytorch.org/whl/cpu for CPU-only)

.PHONY: demo test lint bench clean venv

$(VENV)/.installed: pyproject.toml
	@echo "==> [1/3] virtual environment $(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] torch==$(TORCH_VERSION) $(TORCH_WHERE)"
	$(PIP) install $(PIP_OUTPUT) $(TORCH_FROM) "torch==$(TORCH_VERSION)"
	@echo "==> [3/3] medstack (editable) with its dependencies and the dev extras (monai, nibabel, pydicom, SimpleITK, highdicom, pytest, ruff, ...)"
	$(PIP) install $(PIP_OUTPUT) -e ".[dev]"
	touch $@
	@echo "==> $(VENV) ready"

venv: $(VENV)/.installed

demo: venv
	$(PY) data_samples/demo.py --out demo_output --overwrite

lint: venv
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects no test: that is a broken suite here, never a pass.
test: venv lint
	$(PY) -m pytest -q --nbmake --doctest-modules tests notebooks medstack; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: venv
	$(PY) benchmarks/bench_io.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
