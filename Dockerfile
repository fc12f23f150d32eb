# The pipeline image: this project installed from uv.lock on Python 3.11. No key is ever baked in:
# the linkage key arrives at run time as a Docker secret (see docker-compose.yml).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv
WORKDIR /opt/pprl
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY pipeline ./pipeline
COPY schemas ./schemas
COPY expectations ./expectations
COPY reference ./reference
COPY dags ./dags
RUN uv sync --frozen --no-dev && uv pip install --python /opt/venv/bin/python "apache-airflow-providers-celery" "psycopg2-binary"
ENV PATH=/opt/venv/bin:$PATH AIRFLOW__CORE__DAGS_FOLDER=/opt/pprl/dags
RUN useradd --uid 50000 --create-home airflow
USER airflow
