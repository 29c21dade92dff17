# Every target sets itself up on a fresh machine: a .venv with torch (CPU wheel, pinned), Betty 0.2.1
# (installed past its Python cap, see ../shared/betty-notes.md) and this package. Re-running is quick.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
GLUE_DIR ?= ../shared/data/glue
DEMO_DIR ?= runs/demo
DEMO_SEEDS ?= 1-3
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 numpy
	$(PIP) install --no-deps --ignore-requires-python betty-ml==0.2.1
	$(PIP) install -e ".[test,demo]"
	touch $(STAMP)

# The main job: MiniLM on 300 SST-2 examples (a task where plain fine-tuning clearly beats a constant
# prediction at this size), plain fine-tuning beside the core method, seeds 1-3 (about 6 min on 2 cores).
# Resumable: a finished run is not redone. The local GLUE folder is used when it exists, else the hub.
demo: $(STAMP)
	$(VENV)/bin/blo-mixup compare --tasks sst2 --methods vanilla,blo-mixup --seeds $(DEMO_SEEDS) \
		--model minilm --train-size 300 $(if $(wildcard $(GLUE_DIR)),--data-dir $(GLUE_DIR)) --output-dir $(DEMO_DIR)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
