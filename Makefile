# The README's commands. `make run` and `make test` create the venv and install everything.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup run test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: this exact spec takes the CPU build on this disk, never a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/foundry run --config jobs/configs/cnn_digits.yaml --workers 2

test: $(STAMP)
	$(BIN)/pytest tests

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

lint: $(STAMP)
	$(BIN)/ruff check platform tests jobs serve_apps bench
	$(BIN)/ruff format --check platform tests jobs serve_apps bench

clean:
	rm -rf $(VENV) runs models .pytest_cache
