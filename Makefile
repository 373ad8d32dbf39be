PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install lint test demo schema bench

install:
	$(PYTHON) -m pip install -q -e '.[backend,dev]'

lint:
	$(PYTHON) -m ruff check pulumi_leap0 tests bench examples
	$(PYTHON) -m mypy --strict pulumi_leap0

test: lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: install
	$(PYTHON) -m pulumi_leap0.demo

schema:
	$(PYTHON) -m pulumi_leap0.schema

bench:
	for script in bench/bench_*.py; do $(PYTHON) $$script || exit 1; done
