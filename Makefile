# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv on first use, and
# neither needs root: the tests that need PgBouncer are skipped without it, with the reason.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/imgsave: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: demo test lint bench pgbouncer
demo: $(BIN)/imgsave
	$(BIN)/imgsave demo

# -n auto: two workers per core (see pytest_xdist_auto_num_workers in tests/conftest.py).
# --durations=25: the slowest tests, named at the end of every run, so a slow one shows.
# Bytecode caches on, whatever the environment says (PYTHONDONTWRITEBYTECODE): without them
# every worker and every imgsave process a test starts compiles every module again, a sixth
# of the suite's time on two cores.
test: $(BIN)/imgsave lint
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n auto --dist worksteal --durations=25

# The tests prove imgsave works behind a transaction-mode pooler (Supabase's port 6543) with a
# real PgBouncer: Debian's package, installed here when missing (as root: CI runs this).
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
	  { test "$$(id -u)" = 0 || { echo "make pgbouncer: needs root (sudo apt-get install pgbouncer)" >&2; exit 1; }; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer; }

lint: $(BIN)/imgsave
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy --strict src/imgsave scripts

bench: $(BIN)/imgsave
	$(BIN)/python scripts/bench.py
