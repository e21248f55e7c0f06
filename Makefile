# prefork-lb: `make run` starts the demo, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN    := .run

.PHONY: run test lint typecheck check bench clean

# `make run` needs only the package and its runtime dependencies; the test extras (pytest,
# mypy, ruff, h11, selenium) come with the first `make test`/`lint`/`typecheck`.
# setup.py builds the optional C loops (prefork_lb/balance/_pickloop.c) in place: an edit of
# either reinstalls. PREFORK_LB_PURE=1 make test runs the suite on the pure-Python loops.
$(BIN)/prefork-lb: pyproject.toml setup.py prefork_lb/balance/_pickloop.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.test-extras: $(BIN)/prefork-lb pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# Two demo backends (127.0.0.1:9001, :9002) and prefork-lb on http://127.0.0.1:8080/ and
# https://127.0.0.1:8443/ (self-signed certificate made in .run/ on first run) in the
# foreground; Ctrl-C stops everything (the master gracefully: run_demo.py sends it QUIT).
# Logs and the pid file go to .run/: `.venv/bin/prefork-lb -s reload -c conf/demo-https.toml -p .run`.
run: $(BIN)/prefork-lb
	@mkdir -p $(RUN)
	@$(BIN)/python scripts/run_demo.py --prefix $(RUN) -- $(BIN)/prefork-lb -c conf/demo-https.toml -p $(RUN)

# The whole suite on the compiled build, then again on the pure-Python build (PREFORK_LB_PURE=1)
# for what the C extension replaces: the balancer loops (unit, differential) and the zone lock
# (flock instead of the futex word: zone processes, worker descriptors).
# Most tests wait on real processes, sockets and timers rather than compute, so 4 test
# processes (pytest-xdist) halve the wall time on 2 cores (11 -> 5.5 min); TEST_PROCS=0 runs
# them in this process, one after another.
TEST_PROCS ?= 4
PURE_TESTS := tests/unit tests/integration/test_zone_processes.py \
	tests/integration/test_nginx_differential.py tests/integration/test_worker_fds.py

test: $(VENV)/.test-extras
	$(BIN)/ruff check prefork_lb tests scripts loadtest loadtest/bench
	$(BIN)/mypy
	$(BIN)/python -c 'from prefork_lb.balance import native; print("build:", native.describe())'
	PREFORK_LB_PURE=1 $(BIN)/python -m pytest -q -n $(TEST_PROCS) $(PURE_TESTS)
	$(BIN)/python -m pytest -q -n $(TEST_PROCS)

lint: $(VENV)/.test-extras
	$(BIN)/ruff check prefork_lb tests scripts loadtest loadtest/bench
	$(BIN)/ruff format --check prefork_lb

typecheck: $(VENV)/.test-extras
	$(BIN)/mypy

# Side-by-side benchmark against nginx and HAProxy (needs nginx, haproxy, wrk): see
# loadtest/README.md. BENCH_ARGS="--scenarios ka,close --rounds 1 --seconds 3" for a quick look.
bench: $(BIN)/prefork-lb
	loadtest/bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(RUN) .mypy_cache .ruff_cache .pytest_cache *.egg-info build prefork_lb/balance/*.so
