# The two commands: `make run` runs the whole system, `make test` runs the tests.
# Both create .venv and install the pinned requirements on first use.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test check-deploy bench soak lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py runstack

# The slow tests (marker `slow`) are left out by default; CI runs them with PYTEST_ARGS="-m slow".
PYTEST_ARGS ?= -m "not slow"
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Django's deployment checklist with production-like settings (CI runs it).
check-deploy: $(VENV)/.runtime-installed
	DEBUG=0 SECRET_KEY="$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	  ALLOWED_HOSTS=jobs.example.com SECURE_SSL_REDIRECT=1 SECURE_HSTS_SECONDS=31536000 SECURE_HSTS_PRELOAD=1 \
	  $(BIN)/python manage.py check --deploy --fail-level WARNING

# Every benchmark against the real stack (PostgreSQL: BENCH_DATABASE_URL), one table; see bench/run.py.
# BENCH_ARGS=--quick runs the short version CI runs.
bench: $(VENV)/.dev-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_publish.py

# A chaos soak: the real stack on a PostgreSQL cluster and Redis of its own, a mixed load for 20
# minutes while faults are injected (killed and stopped workers, Redis and PostgreSQL restarts),
# then invariant checks (none lost, stuck, wrong, doubled or inconsistent); see bench/soak.py.
# SOAK_ARGS="--quick" is the ~3-minute CI variant; --seed N replays a fault schedule.
soak: $(VENV)/.dev-installed
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var/*.sqlite3* var/redis var/celerybeat-schedule*

# Style (ruff) and types (mypy with the Django and DRF plugins, over project/ and tasks_app/).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check project tasks_app tests bench
	$(BIN)/ruff format --check project tasks_app tests bench
	$(BIN)/mypy
