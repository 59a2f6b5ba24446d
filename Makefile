# Two commands a newcomer needs: `make demo` (the main job) and `make test` (the test suite).
# Both create/reuse the virtual environment in $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUTPUT ?= demo-output

.PHONY: venv test demo bench clean review test-web

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 Testing

demo: $(STAMP)
	$(PY) -m LRPSegmentationLib.demo --output $(DEMO_OUTPUT)

bench: $(STAMP)
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_explain.py

# The browser review (lrpseg review, the web extra; installed by `make venv` with the test extra):
# serves the bundled phantom case on http://127.0.0.1:8080/.
review: $(STAMP)
	$(VENV)/bin/lrpseg review

# The browser tests only (Debian's chromium: apt-get install chromium).
test-web: $(STAMP)
	$(PY) -m pytest -q Testing/test_review_browser.py

clean:
	rm -rf $(VENV) $(DEMO_OUTPUT)
