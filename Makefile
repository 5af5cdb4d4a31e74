# The two commands of the README, and a few helpers. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := pyproject.toml setup.py $(wildcard protos/bundlerec/v1/*.proto)
# buf (the gRPC API's lint and breaking-change checks), from the npm registry, pinned
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: demo test lint bench clean

## demo: install, then run the product on embedded defaults (SQLite, demo data)
## (the train extra is installed too: the demo exports the encoder and, later, trains a model)
demo: $(VENV)/.installed
	$(BIN)/bundlerec demo

## test: install with the dev tools, lint (ruff, mypy, buf), then run the whole test suite
test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed $(BUF)
	$(BIN)/ruff check .
	tools/typecheck.sh
	$(BUF) lint
	@# the API against the previous commit: what would break callers on the wire or in JSON fails,
	@# unless the last commit says so in a "BREAKING CHANGE:" line (Conventional Commits' footer)
	@if ! git rev-parse -q --verify HEAD~1 >/dev/null; then echo "buf breaking: no previous commit"; \
	elif git log -1 --format=%B | grep -q '^BREAKING CHANGE:'; then echo "buf breaking: the last commit declares its break"; \
	else echo "$(BUF) breaking --against .git#ref=HEAD~1,subdir=protos"; \
		$(BUF) breaking --against '.git#ref=HEAD~1,subdir=protos'; fi

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

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
