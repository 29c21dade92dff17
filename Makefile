# Every target sets itself up on a fresh machine: a .venv with torch (CPU wheel, pinned), Betty 0.2.1
# (installed past its Python cap: it declares Python <3.11 and runs on 3.11) and this package. Re-running is quick.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
GLUE_DIR ?= ../shared/data/glue
DEMO_DIR ?= runs/demo
DEMO_SEEDS ?= 1-3
STAMP := $(VENV)/.installed

.PHONY: setup demo test check-data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 numpy
	$(PIP) install --no-deps --ignore-requires-python betty-ml==0.2.1
	$(PIP) install -e ".[test,demo]"
	touch $(STAMP)

# The main job: MiniLM on 300 SST-2 examples (a task where plain fine-tuning clearly beats a constant
# prediction at this size; the data ships with the package), seeds 1-3: plain fine-tuning, plain fine-tuning
# with blo-mixup's number of weight updates (vanilla-matched), and the core method, each paired against both.
# Resumable: a finished run is not redone. 3 epochs, so that it ends in minutes: without --epochs a run
# at this size trains 10 (docs/method.md, "Training length"), about 4x as long.
demo: $(STAMP)
	$(VENV)/bin/blo-mixup compare --tasks sst2 --methods vanilla,vanilla-matched,blo-mixup \
		--paired-against vanilla,vanilla-matched --seeds $(DEMO_SEEDS) --model minilm --train-size 300 \
		--epochs 3 --output-dir $(DEMO_DIR)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# Checks of a real GLUE folder (the benchmark data, not the product): sizes, rows, majority classes, and that
# the shipped SST-2 equals the folder's. Needs GLUE_DIR; CI runs it against ../shared/data/glue.
check-data: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests/benchmark_data --glue-dir $(GLUE_DIR)

clean:
	rm -rf $(VENV) runs
