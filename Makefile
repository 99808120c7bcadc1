# The two commands of the README: `make demo` and `make test`. Both do all set-up on a fresh
# machine first: virtualenv + install, cached data, native op library.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SNNCC  := $(VENV)/bin/snncc
CACHE  := .cache
DATA   := $(CACHE)/data
DEMO_MODEL := models/fmnist_qcfs_vgg_t4.onnx

.PHONY: setup venv data native browser demo test gpu-check clean

setup: venv data native

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test]'
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

# Chromium for the Netron view test (tests/test_view.py): installed from the distribution when
# missing and this machine can (root and apt-get); where it cannot, the test skips and says why.
CHROMIUM := chromium chromium-browser google-chrome
browser:
	@found=; for b in $(CHROMIUM); do command -v $$b >/dev/null 2>&1 && found=$$b; done; \
	if [ -n "$$found" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make browser: installing chromium (apt-get) for the Netron view test"; \
	  mkdir -p $(CACHE); \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
	    >$(CACHE)/browser-install.log 2>&1 \
	  || echo "make browser: could not install chromium (see $(CACHE)/browser-install.log): the Netron view test will skip"; \
	else \
	  echo "make browser: no chromium, and installing it needs root and apt-get: the Netron view test will skip"; \
	fi

test: setup browser
	$(PY) -m pytest

# The GPU check (benchmarks/gpu/run.sh): builds the CUDA kernels, tests and times them on this
# machine's GPU, and writes summary.json and summary.md into $(OUT).
OUT ?= out/gpu
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash benchmarks/gpu/run.sh $(OUT)

clean:
	rm -rf $(VENV) $(CACHE) runtime/build
