# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test lint typecheck bench drills clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e ".[dev]"
	$(PY) -m tests.helmbin $(VENV)/bin/helm

demo: install
	RUNBOT_ENGINE=embedded $(VENV)/bin/runbot demo

test: install
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=25 -n 3 -m "not serial"
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=10 -m serial

# ruff first: it takes a second, mypy (configured in pyproject.toml) about a minute.
lint: install
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench

drills: install
	RUNBOT_DRILL_POINTS=100 RUNBOT_DRILL_REPLICA_PRS=50 $(VENV)/bin/pytest -q -p no:cacheprovider -o timeout=3600 tests/test_drills.py

clean:
	rm -rf .runbot $(VENV)
