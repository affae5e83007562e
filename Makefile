# Airlock: `make demo` and `make test` set up everything themselves on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
BENCH_ARGS ?= --sample 32M --bsdiff-full-max 100M

.PHONY: help bootstrap demo test lint bench fixtures clean

help:
	@echo "make demo    build a signed bundle of a real model, install it on a local fleet, delta update, verify, roll back"
	@echo "make test    run the whole test suite (CI=true makes any skip a failure)"
	@echo "make lint    ruff + mypy (+ ansible-lint / ansible-test sanity)"
	@echo "make bench   delta benchmark vs bsdiff / xdelta3 / zstd, writes benchmarks/RESULTS.md"

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m airlock.demo

test: bootstrap
	$(PY) -m pytest -ra $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check airlock tests benchmarks
	$(VENV)/bin/mypy
	bash scripts/ansible-lint.sh

bench: bootstrap
	nice -n 10 $(PY) -m benchmarks.run $(BENCH_ARGS)

fixtures: bootstrap
	$(PY) -m airlock.fixtures --all

clean:
	rm -rf .cache demo-out benchmarks/work .pytest_cache .mypy_cache .ruff_cache
