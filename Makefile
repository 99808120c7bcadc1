# The two commands of the README: `make demo` and `make test`. Both do all set-up on a fresh
# machine first: virtualenv + install, cached data, native op library.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SNNCC  := $(VENV)/bin/snncc
CACHE  := .cache
DATA   := $(CACHE)/data
DEMO_MODEL := models/fmnist_qcfs_vgg_t4.onnx

.PHONY: setup venv data native demo test clean

setup: venv data native

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

data: $(DATA)/.complete
$(DATA)/.complete: scripts/fetch_data.sh
	bash scripts/fetch_data.sh $(DATA)

native: venv
	bash runtime/build.sh

demo: setup
	mkdir -p $(CACHE)/demo
	$(SNNCC) compile $(DEMO_MODEL) --T 4 -o $(CACHE)/demo/demo.snn.onnx --force
	$(SNNCC) eval $(CACHE)/demo/demo.snn.onnx --ann $(DEMO_MODEL) --data fashion-mnist:test

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(CACHE) runtime/build
