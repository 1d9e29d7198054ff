# `make run`: set up, fetch the data and run the demo study.  `make test`: set up and run the test suite.
# GPU users pick their torch build: make setup TORCH='torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128'
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup run test data fashion-mnist clean

setup: $(VENV)/.installed

# torch first, pinned: left to the resolver, `torch` would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,search]'
	touch $@

# Fashion-MNIST's offline source is Debian's package; best effort, as it needs root and apt.
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "note: Fashion-MNIST needs network access or 'apt-get install dataset-fashion-mnist'"; }

data: setup fashion-mnist
	$(PY) -m compresslab.data.prepare

run: data
	PY=$(PY) scripts/demo_study.sh

test: setup fashion-mnist
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs/runs outputs/sweeps outputs/demo outputs/cache
