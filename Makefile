# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job on the embedded default (resnet18 at 64x64, ORT CPU). Output in demo-out/.
demo: $(STAMP)
	$(VENV)/bin/halp-trt build-table resnet18 --num-classes 10 --input-shape 1,3,64,64 --out demo-out/resnet18-64.json --validate 30
	$(VENV)/bin/halp-trt inspect demo-out/resnet18-64.json --out demo-out/curves

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) demo-out
