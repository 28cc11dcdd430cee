# Two entry points on a fresh machine (see README.md):
#   make demo   set up .venv, index the sample photos (data/photos) with the packaged
#               photo model into demo-out/index, run searches (bench/recipes/scenes_demo.sh: the
#               synthetic-scenes demo with data/demo-model)
#   make test   set up .venv (and Debian's chromium for the browser tests, when root), run ruff, then
#               the test suite with mypy beside it (what `make lint` runs, all three)
#   make lint   ruff check, ruff format --check and mypy (scripts/typecheck.py); settings in pyproject.toml
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup bench-flickr8k bench-losses bench-indexing bench-query bench-compact bench-serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch and torchvision pinned: 2.14.1 / 0.29.1 are what our machines carry on disk.
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/pip install -q -e '.[ray]' || echo "ray could not be installed; the Ray tests will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 scripts/demo.sh

# All three run, and lint fails if any did. `ruff format .` and `ruff check --fix .` mend most findings.
lint: $(STAMP)
	@status=0; \
	echo "ruff check"; $(VENV)/bin/ruff check . || status=1; \
	echo "ruff format --check"; $(VENV)/bin/ruff format --check . || status=1; \
	echo "mypy (scripts/typecheck.py)"; $(VENV)/bin/python scripts/typecheck.py || status=1; \
	exit $$status

# ruff first: a finding fails the run before the (longer) test suite starts. mypy (about 50 s on
# one core with its cache cold, as in CI) runs beside the suite, which leaves a third of 2 cores
# idle; its findings are printed after the suite's, and either failing fails the run. The whole of
# `make test` with mypy's cache cold: 4 min 46 s on the quiet 2-core machine (5 min 20 s one after the other).
test: $(STAMP)
	@status=0; \
	echo "ruff check"; $(VENV)/bin/ruff check . || status=1; \
	echo "ruff format --check"; $(VENV)/bin/ruff format --check . || status=1; \
	exit $$status
	scripts/ensure_chromium.sh
	@mkdir -p build && rm -f build/mypy.status
	@($(VENV)/bin/python scripts/typecheck.py > build/mypy.log 2>&1; echo $$? > build/mypy.status) &
	# pytest-xdist: one worker per core (at most 4), and each worker (with the processes its tests
	# start) on one OpenMP thread: two threads each would spin-wait against the other worker's.
	# On 2 cores: 221 s of pytest, against 248 s at two threads a worker and 468 s in one process.
	@status=0; \
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal || status=1; \
	while [ ! -s build/mypy.status ]; do sleep 1; done; \
	echo "mypy (scripts/typecheck.py)"; cat build/mypy.log; \
	[ "$$(cat build/mypy.status)" = 0 ] || status=1; \
	rm -f build/mypy.status; exit $$status

bench-flickr8k: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 bench/benchmarks/flickr8k.sh

bench-losses: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 bench/experiments/compare_losses.sh

bench-indexing: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 bench/benchmarks/indexing.sh

bench-serve: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 bench/benchmarks/serve_load.sh

# bench-query and bench-compact use the model bench-flickr8k trains (bench/out/flickr8k/model)
bench-query: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 bench/benchmarks/query.sh

bench-compact: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 bench/benchmarks/compact_features.sh

clean:
	rm -rf demo-out bench/out/scenes_demo
