# theralens: `make demo` runs the analysis on the built-in demo data; `make test` runs every test.
# Both create (or reuse) a local virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= theralens-demo

.PHONY: demo test lint bench browser-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bayes]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/theralens demo --out $(OUT)

# Headless Chromium (Debian) for the browser tests of the HTML report.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium: browser tests will be skipped"; \
	    else echo "chromium not found and not root: browser tests will be skipped"; fi; }

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks validation

test: $(STAMP) browser-deps lint
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/bench_engine.py --threads 1
	$(PY) benchmarks/bench_power.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
