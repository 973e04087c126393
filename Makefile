# The two set-up commands of the README: `make demo` and `make test`. Both create the virtual environment.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test test-all test-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision pinned to the builds that lie on this machine's disk (no 3 GB download); torchaudio from PyPI
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" "torchaudio==2.11.1" || $(BIN)/pip install -q torch torchvision torchaudio
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sharezoo demo fusionreid

# two pytest-xdist workers: the CI machine's two cores (TEST_JOBS=0 runs in one process)
TEST_JOBS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# On a GPU machine: the default suite plus every `gpu` test with the GPU visible, in parallel (pytest-xdist).
# `make test-gpu` uses .venv; on an image that already holds the stack: `make test-gpu PYTHON=python3 JOBS=12`.
PYTHON ?= $(BIN)/python
JOBS ?= auto
# MARKS="gpu or script": only the GPU tests and the device scripts' smoke runs (the rest ran on the CPU already)
MARKS ?= (not slow and not multigpu) or gpu or script
test-gpu:
	SHAREZOO_TEST_GPU=1 $(PYTHON) -m pytest -q -n $(JOBS) -m "$(MARKS)" -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf $(VENV) runs lightning_logs
