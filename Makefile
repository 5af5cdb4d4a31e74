# The two commands of the README, and a few helpers. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := pyproject.toml setup.py $(wildcard protos/bundlerec/v1/*.proto)

.PHONY: demo test lint bench clean

## demo: install, then run the product on embedded defaults (SQLite, demo data)
## (the train extra is installed too: the demo exports the encoder and, later, trains a model)
demo: $(VENV)/.installed
	$(BIN)/bundlerec demo

## test: install with the dev tools, lint, then run the whole test suite
test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .

## bench: the profile service benchmark on PostgreSQL (README figures)
bench: $(VENV)/.installed
	$(BIN)/python bench/profile_ingest.py

# (Re)install when the project definition or the API changes; setup.py regenerates the
# gRPC code from protos/ during the install.
$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU build. Unpinned, a dependency would pull CUDA wheels (GBs).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,train,tracing]"
	$(BIN)/python -c "import bundlerec.v1.profile_pb2, bundlerec.v1.gateway_pb2_grpc"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info bundlerec/v1/*_pb2*.py* var
