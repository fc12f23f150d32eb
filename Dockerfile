# syntax=docker/dockerfile:1
# The image every Airflow service of docker-compose.yml runs: this project and its locked dependencies
# (uv.lock, with the `production` extra: Celery, Postgres drivers, FAB auth) on Python 3.11.
# Nothing secret is built in: the linkage key reaches the workers at run time as a Compose secret,
# the other secrets as environment variables from .env (.dockerignore keeps keys and .env out of the
# build context). Build with `docker compose build`; add `--build-arg PPRL_SPARK=true` for Splink on
# Spark (the `spark` extra and a headless Java runtime; docs/data-engineers.md, "Splink on Spark").

FROM python:3.11-slim-bookworm AS build
ARG PPRL_SPARK=false
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv
# The uv that wrote uv.lock; only the build stage has it.
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /opt/pprl
# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra production $([ "$PPRL_SPARK" = true ] && echo --extra spark) --no-install-project
# The project itself, installed editable on purpose: the pipeline finds schemas/, expectations/ and
# reference/ beside its package folder (pipeline.settings.REPO_DIR).
COPY pipeline ./pipeline
COPY schemas ./schemas
COPY expectations ./expectations
COPY reference ./reference
COPY studies ./studies
COPY dags ./dags
RUN uv sync --frozen --no-dev --extra production $([ "$PPRL_SPARK" = true ] && echo --extra spark)

FROM python:3.11-slim-bookworm
ARG PPRL_GIT_COMMIT=unknown
ARG PPRL_SPARK=false
LABEL org.opencontainers.image.title="mdt-linkage" \
      org.opencontainers.image.description="Consented, privacy-preserving record linkage: Airflow DAGs and the pipeline package" \
      org.opencontainers.image.revision="${PPRL_GIT_COMMIT}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/pprl/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PPRL_GIT_COMMIT=${PPRL_GIT_COMMIT}
# uid 50000 in group 0, as in Airflow's image: folders are group-writable, so the stack may run under
# any uid (AIRFLOW_UID) with group 0. /data and the logs are created here so that new named volumes
# start with this ownership.
RUN if [ "$PPRL_SPARK" = true ]; then \
      apt-get update -q && apt-get install -y -q --no-install-recommends default-jre-headless \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs /data/raw /data/work \
    && chown -R 50000:0 /opt/airflow /data \
    && chmod -R g+rwX,o-rwx /opt/airflow /data
COPY --from=build --chown=50000:0 /opt/venv /opt/venv
COPY --from=build --chown=50000:0 /opt/pprl /opt/pprl
WORKDIR /opt/airflow
USER 50000:0
CMD ["airflow", "version"]
