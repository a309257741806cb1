# Two commands: `make demo` runs the stream on the embedded default, `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ume-installed

.PHONY: demo test lint clean

# --no-compile: pip compiles one file at a time (half of its time here). The precompile step then writes bytecode for
# the whole environment and ume's packages with compileall on every core (28 to 90 s on 2 cores, by CPU): Python would write it on first
# import, except where PYTHONDONTWRITEBYTECODE is set, and then every process compiles what it imports again.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/pip install --quiet --no-compile -e ".[dev]"
	$(BIN)/python -m pipeline.launcher.precompile
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@PATH="$(CURDIR)/$(BIN):$$PATH" ume status
	@echo "next: mlflow ui --backend-store-uri sqlite:///mlflow.db (every step, its behaviours, the champion);" \
	  "store/reports/<step>/report.html; ume certificate <request id> (docs/stream.md)"

# Two pytest workers (pytest-xdist), one test module each at a time: most tests wait on `dvc repro`
# and `ume` subprocesses, so two of them share two cores well. TEST_JOBS=0 runs in one process.
# --durations: the slowest tests close the log (CI keeps it), to see where the suite's time goes.
TEST_JOBS ?= 2

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile --durations=30

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf store mlruns mlflow.db .dvc/tmp dvc.lock certificates
