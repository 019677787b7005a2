# Two commands on a fresh machine (each creates .venv if missing):
#   make demo   set up, generate the default synthetic benchmark and run the kit's main job
#   make test   set up and run the unit tests + every notebook (nbval) in the `ci` profile
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test unit notebooks lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/mfmda zero-shot

# The test command (README, CI): unit tests, then every notebook end to end in the ci profile.
test: setup
	mkdir -p build
	MFMDA_PROFILE=ci MFMDA_RESULTS=$(CURDIR)/build/ci-results MPLBACKEND=Agg $(BIN)/python -m pytest tests notebooks \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --junitxml=build/junit.xml -p no:cacheprovider
	$(BIN)/python .ci/durations.py build/junit.xml

unit: setup
	$(BIN)/python -m pytest tests -q

notebooks: setup
	MFMDA_PROFILE=ci MFMDA_RESULTS=$(CURDIR)/build/ci-results $(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build .pytest_cache
