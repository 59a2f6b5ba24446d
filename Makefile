# Two commands a newcomer needs: `make demo` (the main job) and `make test` (the test suite).
# Both create/reuse the virtual environment in $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUTPUT ?= demo-output

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q Testing

demo: $(STAMP)
	$(PY) -m LRPSegmentationLib.demo --output $(DEMO_OUTPUT)

bench: $(STAMP)
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_explain.py

clean:
	rm -rf $(VENV) $(DEMO_OUTPUT)
