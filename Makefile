# The platform's entry points. `make up` starts everything, `make test` runs the whole suite.
# Both install what is missing first, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
CLI := $(PY) -m local_stack.cli
PYTEST_ARGS ?=

.PHONY: install up down status logs test test-unit lint clean config migrate backfill import validate backup restore rotate-kafka-password

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

up: install
	@$(CLI) up

down: install
	@$(CLI) down

status: install
	@$(CLI) status

logs: install
	@$(CLI) logs $(SERVICE)

backfill: install
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make backfill START=2024-08-08T23:00:00Z END=2024-08-09T00:00:00Z"; exit 2; }
	@$(PY) -m crypto_assets.backfill --start "$(START)" --end "$(END)"

# Binance's public aggTrades files straight into PostgreSQL (no Kafka), then their candles of every interval.
import: install
	@test -n "$(FILES)$(DOWNLOAD)" || { echo "usage: make import FILES='BTCUSDT-aggTrades-2024-08.zip ...' or make import DOWNLOAD='BTCUSDT 2024-08-01 2024-08-31'"; exit 2; }
	@$(PY) -m streaming_services.importer $(FILES) $(if $(DOWNLOAD),--download $(DOWNLOAD),)

# Loads the code location as the webserver does; a throwaway instance, so no server is needed.
validate: install
	@home=$$(mktemp -d) && DAGSTER_HOME=$$home $(PY) -m dagster definitions validate -w workspace.yaml; \
	status=$$?; rm -rf $$home; exit $$status

migrate: install
	@$(CLI) migrate

# A base backup of the whole PostgreSQL cluster into BACKUP_DIR (WAL is archived there continuously).
backup: install
	@$(CLI) backup

# Back to the latest state, or to TIME=2026-11-28T16:30:00Z; the producer and consumer then catch up.
restore: install
	@$(CLI) restore --time "$(TIME)"

# SECURE=1: a new SCRAM password for KAFKA_USER (binance-producer, prices-consumer or platform-admin) on the
# running broker, written into STATE_DIR/secrets/kafka-<user>; what logs in as that user is restarted.
rotate-kafka-password: install
	@test -n "$(KAFKA_USER)" || { echo "usage: make rotate-kafka-password KAFKA_USER=binance-producer (or prices-consumer, platform-admin)"; exit 2; }
	@$(CLI) rotate-kafka-password "$(KAFKA_USER)"

config: install
	@$(CLI) config $(if $(MARKDOWN),--markdown,)

clean: install
	@$(CLI) clean $(if $(FORCE),--force,)

lint: install
	@$(PY) -m ruff check .

test: install
	@$(PY) -m pytest $(PYTEST_ARGS)

# The tests that start no server and no new process: the quick loop while editing.
test-unit: install
	@$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)
