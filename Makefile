# Airlock: `make demo` and `make test` set up everything themselves on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
BENCH_ARGS ?= --sample 32M --bsdiff-full-max 100M
FULL_BENCH_ARGS ?= --fp8-size 256M

FUZZ_SECONDS ?= 1800
FUZZ_TARGETS ?= manifest manifest_struct signature safetensors delta_index delta_file tar

.PHONY: help bootstrap demo test lint bench bench-scale bench-depot bench-backup fixtures fuzz clean

help:
	@echo "make demo    build a signed bundle of a real model, install it on a local fleet, delta update, verify, roll back"
	@echo "make test    run the whole test suite (CI=true makes any skip a failure)"
	@echo "make lint    ruff + mypy (+ ansible-lint / ansible-test sanity)"
	@echo "make bench   delta benchmark vs bsdiff / xdelta3 / zstd, writes benchmarks/RESULTS.md;"
	@echo "             full bundles vs ZipNN / zstd -19, staging vs sha256sum: benchmarks/FULL_BUNDLE.md"
	@echo "make bench-scale  build..rollback at SCALE_SIZE (default 16G) vs sha256/zstd/cp: benchmarks/scale.*"
	@echo "make bench-depot  a bundle onto 3 and 6 local hosts: copy mode vs the site depot (ratio)"
	@echo "make bench-backup  airlock backup (restic) vs tar | zstd, dedup after a delta update, restore drill"
	@echo "make fuzz    fuzz every untrusted-input parser for FUZZ_SECONDS each (default 1800), corpus in .cache/fuzz"

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m airlock.demo

test: bootstrap
	$(PY) -m pytest -ra --durations=30 $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check airlock tests benchmarks
	$(VENV)/bin/mypy
	bash scripts/ansible-lint.sh

bench: bootstrap
	nice -n 10 $(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -c 'import zipnn' 2>/dev/null || $(VENV)/bin/pip install -q -e '.[bench]'
	nice -n 10 $(PY) -m benchmarks.full_bundle $(FULL_BENCH_ARGS)

# each target in turn; a finding stops the run (crash input under .cache/fuzz/<target>-crashes/)
fuzz: bootstrap
	@mkdir -p .cache/fuzz; for t in $(FUZZ_TARGETS); do \
		$(PY) -m tests.fuzz.run $$t --seconds $(FUZZ_SECONDS) --corpus .cache/fuzz/$$t \
			--artifacts .cache/fuzz/$$t-crashes > .cache/fuzz/$$t.log 2>&1; rc=$$?; \
		grep -E '^fuzz |^Done|exec_per_sec|ERROR|SUMMARY' .cache/fuzz/$$t.log; \
		[ $$rc -eq 0 ] || { echo "fuzz $$t: finding (rc $$rc): .cache/fuzz/$$t.log"; exit 1; }; \
	done

# not part of make test: the whole path (build .. rollback) on a synthetic DeepSeek-V3-shaped model of
# SCALE_SIZE, each step against sha256sum / zstd / cp in the same run; writes benchmarks/scale.{md,png,json}
SCALE_SIZE ?= 16G
# smaller sizes for the peak-RSS-vs-size rows of the same report (empty: none)
SCALE_SWEEP ?= 2G,8G
bench-scale: bootstrap
	nice -n 10 $(PY) -m benchmarks.scale --size $(SCALE_SIZE) --sweep "$(SCALE_SWEEP)"

# not part of make test: a full bundle onto 3 and 6 local hosts, copy mode vs the site depot (docs/depot.md)
bench-depot: bootstrap
	nice -n 10 $(PY) -m benchmarks.depot_fleet $(DEPOT_BENCH_ARGS)

# backup and restore throughput vs tar | zstd, second-backup size after a delta update, restore drill
bench-backup: bootstrap
	nice -n 10 $(PY) -m benchmarks.backup $(BACKUP_BENCH_ARGS)

fixtures: bootstrap
	$(PY) -m airlock.fixtures --all

clean:
	rm -rf .cache demo-out benchmarks/work .pytest_cache .mypy_cache .ruff_cache
