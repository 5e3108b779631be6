# The README's commands. `make run` and `make test` create the venv and install everything.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup run test test-unit browser bench bench-peers lint clean lock

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: this exact spec takes the CPU build on this disk, never a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	# every other package at the version constraints.txt pins (the set CI and cluster nodes install)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/foundry run --config jobs/configs/cnn_digits.yaml --workers 2

# everything: the unit tests, then every test on a local Ray cluster, S3 server and browser
test: $(STAMP) browser
	$(BIN)/pytest tests

# the unit tests only (no Ray cluster, no browser), while editing
test-unit: $(STAMP)
	$(BIN)/pytest tests -m "not slow"

# Chromium for the browser tests, installed from the distribution's packages when missing
browser:
	.ci/ensure-chromium

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

# BentoML and LitServe for bench/serve_load.py, in their own venv (bench/peers/requirements.txt says why)
PEERS := .venv-peers
$(PEERS)/.installed: bench/peers/requirements.txt constraints.txt
	test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --upgrade pip
	$(PEERS)/bin/pip install -q -c constraints.txt torch==2.13.0
	$(PEERS)/bin/pip install -q -r bench/peers/requirements.txt
	$(PEERS)/bin/pip install -q --no-deps -e .
	touch $@

bench-peers: $(PEERS)/.installed

lint: $(STAMP)
	$(BIN)/ruff check platform tests jobs serve_apps bench
	$(BIN)/ruff format --check platform tests jobs serve_apps bench

# after changing dependencies in pyproject.toml: a fresh venv without constraints, then its pins
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q torch==2.13.0 && .lock-venv/bin/pip install -q -e '.[dev]'
	{ sed -n '1,4p' constraints.txt; .lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^modelfoundry\|^pip==' \
	  | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs models .pytest_cache
