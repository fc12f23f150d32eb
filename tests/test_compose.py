"""The production stack's files: docker-compose.yml, .env.example, the Dockerfile and .dockerignore.

docker-compose.yml is interpolated with the values of .env.example, as `docker compose` does with
an .env file, and validated against the Compose Specification's JSON schema, which the pinned dev
dependency check-jsonschema ships (no Docker and no network needed). The other tests hold the stack
to the deployment rules of docs/data-engineers.md and DESIGN.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.crypto.keys import KEY_ENVIRONMENT, KEY_FILE_VARIABLE
from pipeline.settings import REPO_DIR

COMPOSE = REPO_DIR / "docker-compose.yml"
ENV_EXAMPLE = REPO_DIR / ".env.example"
DOCKERFILE = REPO_DIR / "Dockerfile"
DOCKERIGNORE = REPO_DIR / ".dockerignore"

AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-keyholder", "airflow-worker")
WORKERS = ("airflow-keyholder", "airflow-worker")
LONG_RUNNING = ("postgres", "redis", *AIRFLOW_SERVICES)
SECRET_SETTINGS = ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD")
ZONE_MOUNTS = {
    "/data/raw": "pprl-raw",
    "/data/work/raw": "pprl-quarantine",
    "/data/work/pseudonymised": "pprl-pseudonymised",
    "/data/work/linked": "pprl-linked",
    "/data/work/releases": "pprl-releases",
    "/data/work/reports": "pprl-reports",
}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, $NAME; $$ is a literal $.
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(KeyError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (compose-spec, "Interpolation") over a parsed YAML tree."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env
        non_empty = bool(env.get(name))
        if op in (":-", "-"):
            use_default = not non_empty if op == ":-" else not present
            return interpolate(arg, env) if use_default else env[name]
        if op in (":?", "?"):
            if (op == ":?" and not non_empty) or (op == "?" and not present):
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            use_alt = non_empty if op == ":+" else present
            return interpolate(arg, env) if use_alt else ""
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


def variables_used(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _VARIABLE.finditer(text) if not m["escaped"]}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw, env) -> dict:
    """The compose file as `docker compose config` sees it with .env.example as its .env."""
    return interpolate(raw, env)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def compose_schema() -> dict:
    # check-jsonschema vendors the schema from github.com/compose-spec/compose-spec (schema/compose-spec.json).
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_interpolation_follows_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$$HOME ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+alt} ${UNSET:+alt}", env) == "$HOME x x d d  alt "
    with pytest.raises(MissingVariable, match="UNSET: say so"):
        interpolate({"a": ["${UNSET:?say so}"]}, env)
    assert variables_used("$${NOT_A_VARIABLE} ${USED:-x} $BARE") == {"USED", "BARE"}


def test_the_compose_file_follows_the_compose_specification(compose):
    schema = compose_schema()
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose):
    """The schema really is the Compose one: it refuses what `docker compose` refuses."""
    broken = {**compose, "services": {**compose["services"], "redis": {**compose["services"]["redis"], "restart": 3}}}
    assert list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(broken))
    typo = {**compose, "services": {**compose["services"], "redis": {**compose["services"]["redis"], "helthcheck": {}}}}
    assert list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(typo))


def test_every_setting_is_documented_in_env_example_and_every_documented_setting_is_used(env):
    used = variables_used(COMPOSE.read_text())
    assert used - set(env) == set(), "used in docker-compose.yml but missing from .env.example"
    assert set(env) - used == set(), "in .env.example but not used by docker-compose.yml"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f".env.example: {line.split('=')[0]} needs a comment above it"


def test_secrets_must_be_set_and_have_no_default(raw):
    """A missing secret stops `docker compose up` (${NAME:?...}) instead of falling back to a known value."""
    text = COMPOSE.read_text()
    for name in (*SECRET_SETTINGS, "PPRL_KEY_FILE_HOST", "PPRL_PUBLISHING_KEY_FILE_HOST"):
        ops = [m["op"] for m in _VARIABLE.finditer(text) if not m["escaped"] and (m["braced"] or m["bare"]) == name]
        assert ops, f"{name} is not used"
        assert all(op == ":?" for op in ops), f"{name} must always be required with ${{{name}:?...}}, got {ops}"
    with pytest.raises(MissingVariable, match="AIRFLOW_JWT_SECRET"):
        interpolate(raw, {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if k != "AIRFLOW_JWT_SECRET"})


def test_the_stack_has_the_parts_of_airflows_production_setup(compose, services):
    assert {"postgres", "redis", "airflow-init", *AIRFLOW_SERVICES} <= set(services)
    assert "x-airflow-common" in compose
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert common["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert common["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert common["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert common["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        for setting in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
            assert environment[setting] == common[setting], f"{name}: {setting} must be the shared one"
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "airflow users create" in init


def test_one_image_built_from_the_lock_runs_every_airflow_service(services):
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        service = services[name]
        assert service["build"]["context"] == "." and service["image"] == services["airflow-worker"]["image"], name
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in service.get("environment", {}), f"{name} installs packages at start"
        assert service["user"].endswith(":0"), name
    dockerfile = DOCKERFILE.read_text()
    assert "COPY pyproject.toml uv.lock" in dockerfile
    assert re.findall(r"uv sync --frozen --no-dev --extra production", dockerfile)
    assert "pip install" not in dockerfile.replace('pip install --no-cache-dir "uv==', "")
    assert re.search(r"^USER 50000:0$", dockerfile, re.MULTILINE), "the image must not run as root"


def test_long_running_services_have_healthchecks_and_restart(services):
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "always", f"{name} is not restarted"
    for name in AIRFLOW_SERVICES:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_workers_scale_and_only_the_key_holder_holds_the_key(compose, services):
    for name in WORKERS:
        worker = services[name]
        assert "container_name" not in worker and "ports" not in worker, f"{name}: --scale needs no fixed name and no host port"
    keyholder, worker = services["airflow-keyholder"], services["airflow-worker"]
    assert keyholder["secrets"] == ["pprl_key"]
    assert keyholder["environment"]["PPRL_KEY_FILE"] == "/run/secrets/pprl_key"
    assert worker["secrets"] == ["pprl_publishing_key"]
    assert worker["environment"]["PPRL_PUBLISHING_KEY_FILE"] == "/run/secrets/pprl_publishing_key"
    assert compose["secrets"]["pprl_key"] == {"file": read_env_file(ENV_EXAMPLE)["PPRL_KEY_FILE_HOST"]}
    assert compose["secrets"]["pprl_publishing_key"] == {"file": read_env_file(ENV_EXAMPLE)["PPRL_PUBLISHING_KEY_FILE_HOST"]}
    for name, service in services.items():
        environment = service.get("environment", {})
        # Only the key file's path may be in a worker's environment, never the key (pipeline.crypto.keys).
        carried = set(KEY_ENVIRONMENT) & set(environment)
        assert carried <= ({KEY_FILE_VARIABLE} if name == "airflow-keyholder" else set()), f"{name} carries {sorted(carried)}"
        if name != "airflow-keyholder":
            assert "pprl_key" not in service.get("secrets", []), f"{name} must not get the linkage key"
        if name != "airflow-worker":
            assert "pprl_publishing_key" not in service.get("secrets", []), f"{name} must not get the publishing key"
            assert "PPRL_PUBLISHING_KEY_FILE" not in environment, f"{name} must not get the publishing key"


def _command(service: dict) -> list[str]:
    return service["command"] if isinstance(service["command"], list) else service["command"].split()


def test_the_key_holder_serves_only_its_queue_and_no_other_worker_serves_it(services):
    from pipeline.orchestration import KEY_HOLDER_QUEUE

    assert _command(services["airflow-keyholder"]) == ["airflow", "celery", "worker", "--queues", KEY_HOLDER_QUEUE]
    for name, service in services.items():
        if name != "airflow-keyholder" and "command" in service:
            assert KEY_HOLDER_QUEUE not in " ".join(_command(service)), f"{name} must not serve the key holder's queue"
    assert "--queues" not in _command(services["airflow-worker"]), "airflow-worker serves Airflow's default queue"


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Mount point -> (volume, mode) of a service's volume mounts."""
    found = {}
    for mount in service.get("volumes", []):
        source, target, *mode = mount.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


# Which zones each service mounts, and how (DESIGN.md's zone table). A service not listed mounts none.
ZONE_ACCESS = {
    "airflow-keyholder": {
        "/data/raw": ("pprl-raw", "rw"),
        "/data/work/raw": ("pprl-quarantine", "rw"),
        "/data/work/pseudonymised": ("pprl-pseudonymised", "rw"),
        "/data/work/reports": ("pprl-reports", "rw"),
    },
    "airflow-worker": {
        # Written too: publication removes a label's working files once it is published.
        "/data/work/pseudonymised": ("pprl-pseudonymised", "rw"),
        "/data/work/linked": ("pprl-linked", "rw"),
        "/data/work/releases": ("pprl-releases", "rw"),
        "/data/work/reports": ("pprl-reports", "rw"),
    },
    # Makes every zone's folders and hands them to AIRFLOW_UID; runs no task and gets no secret.
    "airflow-init": {path: (volume, "rw") for path, volume in ZONE_MOUNTS.items()},
}


def test_each_service_mounts_only_the_zones_it_needs(compose, services):
    for name, service in services.items():
        zones = {target: mount for target, mount in _mounts(service).items() if mount[0] in ZONE_MOUNTS.values()}
        assert zones == ZONE_ACCESS.get(name, {}), f"{name} mounts {zones}"
    assert "secrets" not in services["airflow-init"]
    # raw/, the quarantine and the linkage key: the key holder's worker alone among the running services.
    for name, service in services.items():
        sources = {source for source, _ in _mounts(service).values()}
        if name not in ("airflow-keyholder", "airflow-init"):
            assert not sources & {"pprl-raw", "pprl-quarantine"}, f"{name} must not mount raw/ or the quarantine"
    for volume in ZONE_MOUNTS.values():
        assert volume in compose["volumes"]


def test_run_paths_are_confined_to_the_data_volumes_and_the_secrets(compose, services):
    from pipeline.orchestration.key_holder import IN_PROCESS, KEY_HOLDER_PROCESS
    from pipeline.settings import DATA_ROOTS_VARIABLE

    assert compose["x-airflow-common"]["environment"][DATA_ROOTS_VARIABLE] == "/data:/run/secrets"
    for name in WORKERS:
        assert services[name]["environment"][DATA_ROOTS_VARIABLE] == "/data:/run/secrets", name
    assert services["airflow-keyholder"]["environment"][KEY_HOLDER_PROCESS] == IN_PROCESS


def test_logs_live_on_a_named_volume_shared_by_every_airflow_service(services):
    for name in AIRFLOW_SERVICES:
        assert "airflow-logs:/opt/airflow/logs" in services[name]["volumes"], f"{name} does not share the logs volume"


def test_only_the_ui_is_published_and_on_loopback_by_default(services, env):
    published = {name: service["ports"] for name, service in services.items() if service.get("ports") and not service.get("profiles")}
    assert list(published) == ["airflow-apiserver"]
    assert env["AIRFLOW_API_BIND"] == "127.0.0.1"
    assert services["postgres"]["networks"] == ["backend"] and services["redis"]["networks"] == ["backend"]


def test_no_key_or_env_file_can_reach_the_image():
    ignored = DOCKERIGNORE.read_text().splitlines()
    for pattern in ("*.key.json", ".env", ".git/", ".venv/"):
        assert pattern in ignored, f".dockerignore must exclude {pattern}"
    dockerfile = DOCKERFILE.read_text()
    assert not re.search(r"(?i)^\s*(COPY|ADD)\s.*(key|secret|\.env)", dockerfile, re.MULTILINE)
    assert "PPRL_KEY" not in dockerfile
