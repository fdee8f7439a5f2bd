# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

# --no-compile: byte-compiling every module of torch and the CUDA wheels took ~12 s of the
# install's ~70 s; Python compiles what it imports on first use.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job on the embedded default: resnet18 at 64x64 on the digits task, ORT CPU,
# target 0.5 of the original's latency. Output (report.md, model.onnx, ...) in demo-out/.
demo: $(STAMP)
	$(VENV)/bin/halp-trt prune-and-deploy --out demo-out

# Style (ruff) and the whole test suite; CI runs exactly this.
test: $(STAMP)
	$(PY) -m ruff check halp_trt tests tools
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out
