# Two commands on a fresh machine (each creates .venv if missing):
#   make demo   set up, generate the default synthetic benchmark and run the kit's main job (mfmda run: the MFM-DA pipeline)
#   make test   set up and run the unit tests + every notebook and its student version (nbval) in the `ci` profile
# Teaching material:
#   make student  write the student edition of every notebook (exercise stubs, no answer key) to build/student/
#   make slides   build the seminar decks into self-contained HTML under slides/build/ (after make figures)
#   make figures  redraw the decks' figures from the saved results (results/*.json -> results/figures/)
# Colab and hubs:
#   make publish URL=https://github.com/OWNER/REPO.git [BRANCH=main]   the kit's URL into every badge and install cell
#   make wheel    build/wheel/mfmda_kit-<version>-py3-none-any.whl, for a machine that cannot fetch the kit
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CI_ENV := MFMDA_PROFILE=ci MFMDA_RESULTS=$(CURDIR)/build/ci-results MPLBACKEND=Agg
NBVAL  := --nbval-lax --nbval-current-env --nbval-cell-timeout=600

.PHONY: setup demo test unit notebooks student slides figures publish wheel chromium lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/mfmda run

# The test command (README, CI): unit tests, every notebook end to end, then the student version of every
# notebook that has exercises (generated first; a notebook without exercises has an identical student
# version), all in the ci profile and one pytest run; the slide test renders the decks in Debian's
# chromium, installed here when missing.
EXERCISES = $$($(BIN)/python -m course.student --list-exercises build/student)

test: setup chromium student
	mkdir -p build
	$(CI_ENV) $(BIN)/python -m pytest tests notebooks $(EXERCISES) $(NBVAL) \
	    --junitxml=build/junit.xml -p no:cacheprovider
	$(BIN)/python .ci/durations.py build/junit.xml

unit: setup
	$(BIN)/python -m pytest tests -q

notebooks: setup student
	$(CI_ENV) $(BIN)/python -m pytest notebooks $(EXERCISES) $(NBVAL)

student: setup
	$(BIN)/python -m course.student notebooks build/student

slides: setup figures
	$(BIN)/python -m course.slides --out slides/build

figures: setup
	MPLBACKEND=Agg $(BIN)/python -m course.deck_figures

publish: setup
	@test -n "$(URL)" || { echo "usage: make publish URL=https://github.com/OWNER/REPO.git [BRANCH=main]"; exit 2; }
	$(BIN)/python -m course.publish "$(URL)" --branch "$(or $(BRANCH),main)"

wheel: setup
	$(BIN)/python -m pip wheel -q --no-deps -w build/wheel .
	@ls -l build/wheel/*.whl

# Headless Chromium for tests/test_slides.py: Debian's package, installed only if missing and only as root.
chromium:
	@if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the slide test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "WARNING: could not install chromium: the slide-rendering test will be skipped"; \
	else \
	    echo "NOTE: chromium is missing and cannot be installed here (needs root apt-get): the slide-rendering test will be skipped"; \
	fi

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build .pytest_cache slides/build
