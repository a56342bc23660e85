# Spoon Feeder: `make run` starts it, `make test` tests it. Both set up what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The scale-out mode's services, as they run on the developers' machines and CI.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/9
PYTEST_ARGS ?=

.PHONY: run demo test test-sqlite test-postgres check bench lint chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/python manage.py run

# Spoon Feeder with two simulated nodes (no GPU needed), on data of its own.
demo: $(VENV)/.run-installed
	mkdir -p data
	SPOONFEEDER_DATA_DIR=data/demo $(BIN)/python manage.py run --demo

# Browser tests drive Debian's chromium; never a downloaded browser.
chromium:
	@test -x /usr/bin/chromium || { \
		echo "Installing Debian's chromium for the browser tests"; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Both modes at once (one per core): the embedded default, then PostgreSQL + Redis.
test: $(VENV)/.test-installed chromium
	@bin/test-both $(PYTEST_ARGS)

test-sqlite: $(VENV)/.test-installed chromium
	SPOONFEEDER_DATA_DIR=.test-data/sqlite $(BIN)/pytest $(PYTEST_ARGS)

test-postgres: $(VENV)/.test-installed chromium
	SPOONFEEDER_DATA_DIR=.test-data/postgres DATABASE_URL=$(TEST_DATABASE_URL) \
		REDIS_URL=$(TEST_REDIS_URL) SPOONFEEDER_QUEUE=spoonfeeder-test $(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy spoonfeeder nodes renders stories scheduling bench

bench: $(VENV)/.test-installed
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/bodies.py
	$(BIN)/python bench/event_latency.py
	$(BIN)/python bench/pool.py
	$(BIN)/python bench/render_queue.py
	$(BIN)/python bench/stories.py
	$(BIN)/python bench/batches.py
	$(BIN)/python bench/batch_pages.py
	$(BIN)/python bench/batch_runs.py
	$(BIN)/python bench/schedule_pages.py
	$(BIN)/python bench/movie.py
	$(BIN)/python bench/film_export.py
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/python bench/event_latency.py
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .test-data
