# One command sets up everything and runs the default sweep; one sets up and runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The install stamp is named after the dependency list, so a changed pyproject reinstalls
# and an unchanged one skips the install in well under a second.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-fast bench clean

# The kserve serving engine's own environment (its pins clash with ours); stamped like .venv.
KSERVE_VENV  ?= .venv-kserve
KSERVE_REQS  := workbench/serve/requirements-kserve.txt
KSERVE_STAMP := $(KSERVE_VENV)/.installed-$(shell cat $(KSERVE_REQS) | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

$(KSERVE_STAMP): $(KSERVE_REQS)
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet -r $(KSERVE_REQS)
	rm -f $(KSERVE_VENV)/.installed-*
	touch $@

setup: $(STAMP) $(KSERVE_STAMP)

demo: setup
	$(BIN)/workbench sweep experiments/digits.yaml

test: setup
	$(BIN)/python -m pytest -rs --nbval-lax -p no:cacheprovider tests notebooks

test-fast: setup
	$(BIN)/python -m pytest -rs --nbval-lax -m "not slow" tests notebooks

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/demo_walltime.py
	$(BIN)/python benchmarks/measurement.py
	$(BIN)/python benchmarks/runtimes.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/decision.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/distillation.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) experiments/runs .pytest_cache
