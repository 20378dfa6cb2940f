# Everything a fresh machine needs: `make demo` and `make test` install what they use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test lint typecheck unit bench eval eval-postgres crash soak clean peer

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,server]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -f demo.db demo.db-wal demo.db-shm demo.db.memvee-lock demo.db.memvee-held
	$(BIN)/python -m memvee.demo --db demo.db

lint: install
	$(BIN)/ruff check memvee actors events projections tests bench
	$(BIN)/ruff format --check memvee actors events projections tests bench

typecheck: install
	$(BIN)/mypy

# One pytest worker per core, at most four (each opens its own PostgreSQL database and
# the server allows 200 connections in all). The slowest tests are listed at the end, to
# keep the whole run within its 15-minute budget. langsmith (voyageai -> langchain-core)
# installs a pytest plugin the suite never uses; importing it cost every pytest process
# (the controller, then each worker) about 2 s on an idle machine, 10-20 s on a busy one.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
unit: install
	scripts/with-postgres.sh $(BIN)/pytest -q -p no:cacheprovider -p no:langsmith_plugin \
	  -n $(TEST_WORKERS) --dist worksteal --durations=25 --durations-min=5

test: lint typecheck unit

bench: install
	scripts/with-postgres.sh $(BIN)/python -m bench

eval: install
	$(BIN)/python -m bench.eval

# The same eval replayed into PostgreSQL (a throwaway server; a fresh database per replay).
eval-postgres: install
	scripts/with-postgres.sh sh -c '$(BIN)/python -m bench.eval --db-url "$$MEMVEE_TEST_PG_URL"'

# The SIGKILL and multi-process campaigns, repeated a bounded number of times.
CRASH_ROUNDS ?= 10
crash: install
	scripts/with-postgres.sh sh -c 'for i in $$(seq $(CRASH_ROUNDS)); do \
	  echo "crash round $$i/$(CRASH_ROUNDS)"; \
	  $(BIN)/pytest -q -p no:cacheprovider tests/memvee/test_crash_recovery.py \
	    tests/actors/test_many_processes.py || exit 1; done'

# The soaks of the whole Memory (tests/memvee/test_soak.py) and of the real extraction path
# (tests/memvee/test_claude_soak.py), longer and seed after seed.
SOAK_ROUNDS ?= 5
SOAK_SECONDS ?= 10
soak: install
	scripts/with-postgres.sh sh -c 'for i in $$(seq $(SOAK_ROUNDS)); do \
	  echo "soak round $$i/$(SOAK_ROUNDS)"; \
	  MEMVEE_SOAK_SEED=$$i MEMVEE_SOAK_SECONDS=$(SOAK_SECONDS) \
	  MEMVEE_CLAUDE_SOAK_SEED=$$i MEMVEE_CLAUDE_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q \
	    -p no:cacheprovider -p no:langsmith_plugin tests/memvee/test_soak.py \
	    tests/memvee/test_claude_soak.py || exit 1; done'

clean:
	rm -rf $(VENV) demo.db* .pytest_cache .mypy_cache .ruff_cache

# The peer memv 0.1.2 (published as `memvee` 0.1.2, package `memv`) in a scratch venv, for
# `python -m bench peer` only; never part of `make test`. Its sqlite-vec needs a Python
# whose sqlite3 can load extensions (PEER_PYTHON, default the system's python3). memvee's
# side of that comparison runs on the same interpreter, from a second scratch venv.
PEER_PYTHON ?= /usr/bin/python3
peer:
	rm -rf .bench/memv
	$(PEER_PYTHON) -m venv .bench/memv
	.bench/memv/bin/python -m pip install --quiet --ignore-requires-python --no-deps 'memvee==0.1.2'
	.bench/memv/bin/python -m pip install --quiet aiosqlite pydantic sqlite-vec python-dateutil
	rm -rf .bench/memvee
	$(PEER_PYTHON) -m venv .bench/memvee
	.bench/memvee/bin/python -m pip install --quiet -e .
