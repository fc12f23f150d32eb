# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   synthetic extracts through the real DAGs, ending with where the release is
#   make test   the whole test suite
# Everything else is set up on the way (uv, the locked virtualenv).

PYTHON ?= python3
# uv from PATH if there is one, else installed with pip into .tools/ (no root, no other download).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
RUN := $(UV) run --frozen --no-sync
DEMO_DIR ?= demo
PERSONS ?= 3000
PROFILE ?= realistic
SEED ?= 7
LABEL ?= demo-$(PROFILE)
# The study the demo generates for and runs (the Pioneer design by default).
STUDY ?= studies/pioneer.yaml
SIZE ?= small
# For example BENCH_ARGS=--no-dags to time the stages only.
BENCH_ARGS ?=
# The suite runs on every core, one test file per worker at a time (a file's fixtures are built once),
# slowest files first (tests/conftest.py, SLOWEST_FIRST);
# PYTEST_ARGS= runs it in this process alone, PYTEST_ARGS="tests/test_cli.py" one file.
PYTEST_ARGS ?= -n auto --dist loadfile --no-loadscope-reorder

.PHONY: setup system-deps demo test bench bench-workers clean-demo help

help:
	@echo "make demo   synthetic extracts -> pseudonymise -> link -> publish, through the Airflow DAGs"
	@echo "make test   run the test suite"
	@echo "make bench  run the benchmarks in bench/"
	@echo "make bench-workers SIZE=small|medium  the pipeline on Celery with 1, then 2 workers per queue"

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m pip install --quiet --target $(CURDIR)/.tools uv

# Libraries compiled to bytecode once, here, as the Dockerfile does: where PYTHONDONTWRITEBYTECODE is
# set (this project's CI machines and many containers) Python never caches what it compiles, and every
# process the pipeline starts (the key holder's child, validation and token workers, each test's
# subprocess) would compile Airflow, Great Expectations and Splink again, about 10 CPU seconds each.
# (The stamp's name changed with the flag, so an existing .venv is synced again once.)
.venv/.synced-bytecode: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# Server binaries the tests start themselves (Postgres, Redis), the browser that renders the audit
# page, and the Java runtime of Splink on Spark (tests/test_link_spark.py; any Java 17 or later).
# This machine kind has Postgres and Redis; elsewhere they come from Debian's packages.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v java >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/java" ] || missing="$$missing default-jre-headless"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (install them with your package manager)"; fi; \
	fi

setup: .venv/.synced-bytecode

demo: setup
	@rm -rf $(DEMO_DIR)/work/releases/$(LABEL) $(DEMO_DIR)/work/reports/$(LABEL)
	@echo "== 1/3 synthetic extracts: $(PERSONS) people, profile $(PROFILE), seed $(SEED)"
	$(RUN) pipeline study check $(STUDY)
	$(RUN) pipeline synth --study $(STUDY) --out $(DEMO_DIR)/input --persons $(PERSONS) --seed $(SEED) --profile $(PROFILE)
	@echo "== 2/3 a new linkage key (0600, never committed)"
	@test -f $(DEMO_DIR)/secrets/demo.key.json || $(RUN) pipeline keys new --out $(DEMO_DIR)/secrets/demo.key.json
	@echo "== 2b/3 a new publishing key that signs releases (0600, never committed; the .pub is for the auditor)"
	@test -f $(DEMO_DIR)/secrets/demo-publishing.pem || $(RUN) pipeline keys new-publishing --out $(DEMO_DIR)/secrets/demo-publishing.pem
	@echo "== 3/3 the three DAGs on the embedded default (dag.test on SQLite)"
	$(RUN) pipeline run --study $(STUDY) --raw $(DEMO_DIR)/input/raw --work $(DEMO_DIR)/work --key $(DEMO_DIR)/secrets/demo.key.json \
	  --publishing-key $(DEMO_DIR)/secrets/demo-publishing.pem --release $(LABEL) --replace
	@echo "== check it as the governance officer would"
	$(RUN) pipeline audit $(DEMO_DIR)/work/releases/$(LABEL) --public-key $(DEMO_DIR)/secrets/demo-publishing.pem.pub

test: setup system-deps
	$(RUN) pytest $(PYTEST_ARGS)

bench: setup
	$(RUN) python bench/run.py --size $(SIZE) $(BENCH_ARGS)

# The whole pipeline through the Celery deployment (Postgres and Redis from system-deps), once with 1
# and once with 2 workers per queue; small or medium only.
bench-workers: setup
	$(RUN) python bench/celery_workers.py --size $(SIZE)

clean-demo:
	rm -rf $(DEMO_DIR)
