"""A throwaway production-shaped Airflow, started from installed binaries instead of Docker images.

The same parts as docker-compose.yml: Postgres (metadata database and Celery result backend), Redis
(Celery broker), the api-server, scheduler and dag-processor, and Celery workers, each a process of
its own, all bound to 127.0.0.1 on free ports, with a private AIRFLOW_HOME and the repository's dags/.
As in docker-compose.yml, one worker, `keyholder`, serves the key holder's queue with the linkage key
(or several, `keyholder`, `keyholder2`, ..., with `keyholders=N`, as a deployment scales that queue);
the others (`worker1`, ...) serve the default queue with the publishing key only. With `confined`,
those others run without any capability (see `drop_capabilities`): they cannot open a file another
user owns, such as a key file or a raw/ folder given to that user.
The auth manager is FAB, as in docker-compose.yml, and the REST API is used the way a data engineer
uses it: a token from `POST /auth/token`, then `/api/v2`.

    binaries, missing = find_server_binaries()
    with AirflowStack(root, binaries=binaries, key_file=key) as stack:  # started and ready
        run_id = stack.api.trigger("pprl_pseudonymise", conf)
        stack.wait_for_run("pprl_pseudonymise", run_id, timeout=300)
    # every process is stopped here, even after an error

Each service runs in its own process group, with a parent-death signal so that it stops even when
the test process is killed outright. Stopping signals the group and every descendant found (task
processes run in process groups of their own), then kills whatever is left, and checks the ports are
free again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from pipeline.crypto.keys import KEY_FILE_VARIABLE
from pipeline.orchestration import KEY_HOLDER_QUEUE
from pipeline.orchestration.embedded import DAGS_FOLDER, airflow_env
from pipeline.orchestration.key_holder import IN_PROCESS, KEY_HOLDER_PROCESS
from pipeline.settings import DATA_ROOTS_VARIABLE

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ADMIN_USER = "admin"
DB_USER = "airflow"
DB_NAME = "airflow"
FINISHED = {"success", "failed"}


class ServiceError(RuntimeError):
    """A service did not start or stopped early; the message ends with the tail of its log."""


# ---------------------------------------------------------------------------------------------
# Finding the server binaries


@dataclass(frozen=True)
class ServerBinaries:
    postgres_bin: Path  # folder holding initdb and postgres
    redis_server: Path


def find_server_binaries() -> tuple[ServerBinaries | None, str]:
    """The Postgres and Redis server binaries, or None and what is missing.

    Postgres: `PPRL_PG_BIN` if set, else `initdb` on PATH, else the newest /usr/lib/postgresql/*/bin
    (Debian and Ubuntu keep the server binaries off PATH). Redis: `redis-server` on PATH.
    """
    candidates = []
    if os.environ.get("PPRL_PG_BIN"):
        candidates.append(Path(os.environ["PPRL_PG_BIN"]))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True)
    candidates += debian
    postgres_bin = next((c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()), None)
    redis = shutil.which("redis-server")
    missing = []
    if postgres_bin is None:
        missing.append("PostgreSQL server binaries (initdb, postgres; apt package postgresql, or set PPRL_PG_BIN)")
    if redis is None:
        missing.append("redis-server (apt package redis-server)")
    if missing:
        return None, "missing " + " and ".join(missing)
    return ServerBinaries(postgres_bin=postgres_bin, redis_server=Path(redis)), ""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it; a race with another program is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_PR_SET_PDEATHSIG = 1
# Loaded here, in the parent, so that the forked child only makes the system call (no dlopen,
# no import) between fork and exec, where little is safe.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP = 24
_CAP_LAST = int(Path("/proc/sys/kernel/cap_last_cap").read_text()) if Path("/proc/sys/kernel/cap_last_cap").exists() else 40


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the test process dies, however it dies (Linux)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def drop_capabilities() -> None:
    """In the child, before exec: empty the capability bounding set, so the program it runs has none.

    Run by root, the program keeps uid 0 but loses CAP_DAC_OVERRIDE and every other capability: the
    kernel then lets it open only files whose owner, group or mode allow uid 0 as such, and no other
    process's /proc/<pid>/environ or memory that holds more capabilities than it does. The test runs
    the link and publish workers this way, as a stand-in for the uid of their own that a deployment
    gives them (Python here may live where no other uid can run it).
    """
    for cap in range(_CAP_LAST + 1):
        if _LIBC.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(126)


def _confined_preexec() -> None:
    _die_with_parent()
    drop_capabilities()


def can_confine() -> tuple[bool, str]:
    """Whether workers can be started without capabilities here (root, and the kernel lets it)."""
    if os.geteuid() != 0:
        return False, "not running as root, so there are no capabilities to drop and no other owner to give the key"
    done = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop_capabilities, capture_output=True, timeout=60)
    return (done.returncode == 0, "" if done.returncode == 0 else f"dropping capabilities failed ({done.returncode})")


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path
    ports: tuple[int, ...] = ()
    # SIGINT is Postgres's fast shutdown; SIGTERM would wait for every client to disconnect.
    stop_signal: int = signal.SIGTERM

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ServiceError(f"{self.name} exited with code {code}; log {self.log_path}:\n{self.log_tail()}")


def start_process(
    name: str, argv: list[str], log_dir: Path, env: Mapping[str, str], *, cwd: Path, user: str | None = None,
    ports: tuple[int, ...] = (), stop_signal: int = signal.SIGTERM, confined: bool = False,
) -> Service:
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
            start_new_session=True, preexec_fn=_confined_preexec if confined else _die_with_parent, user=user,
        )
    finally:
        log.close()
    return Service(name=name, process=process, log_path=log_path, ports=ports, stop_signal=stop_signal)


def stop_services(services: list[Service], timeout: float = 30.0) -> list[str]:
    """Stop services together, with everything they started; return what had to be killed.

    Each gets its stop signal, sent to its process group and to the group of every descendant
    (Airflow runs each task in a process group of its own); whatever is still alive after
    `timeout` seconds is killed.
    """
    family: list[psutil.Process] = []
    for service in services:
        try:
            root = psutil.Process(service.process.pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        family += members
        groups = {service.process.pid}
        for proc in members:
            with contextlib.suppress(psutil.Error, OSError):
                groups.add(os.getpgid(proc.pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, service.stop_signal)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    killed = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            killed.append(f"{proc.name()} ({proc.pid})")
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for service in services:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=5)
    return killed


def stop_service(service: Service, timeout: float = 30.0) -> list[str]:
    return stop_services([service], timeout)


def wait_until(what: str, ready: Callable[[], bool], timeout: float, services: list[Service], interval: float = 0.5) -> None:
    """Poll `ready` until it answers True; fail early, with a log tail, if a service has died.

    Errors from `ready` count as "not yet" (a server still starting refuses connections), except a
    ServiceError, which says waiting is pointless.
    """
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            service.check_alive()
        try:
            if ready():
                return
        except ServiceError:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {s.name} ({s.log_path}):\n{s.log_tail(15)}" for s in services)
            raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The REST API, as a data engineer uses it


@dataclass
class RestApi:
    base_url: str
    username: str
    password: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self._token: str | None = None

    def token(self) -> str:
        response = self.client.post("/auth/token", json={"username": self.username, "password": self.password})
        response.raise_for_status()
        return response.json()["access_token"]

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            self._token = self.token()
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, f"/api/v2{path}", headers=self._headers(), **kwargs)
        if response.status_code == 401:  # The token expired: get a new one once.
            self._token = None
            response = self.client.request(method, f"/api/v2{path}", headers=self._headers(), **kwargs)
        if response.is_error:
            raise AssertionError(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def trigger(self, dag_id: str, conf: Mapping[str, Any], run_id: str | None = None) -> str:
        # Airflow 3 requires logical_date in the body; null means "a run not tied to a data interval".
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf)}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs_for_partition(self, dag_id: str, partition_key: str) -> list[dict[str, Any]]:
        # The pattern is a substring search, so the exact key is checked here.
        params = {"partition_key_pattern": partition_key, "limit": 100}
        runs = self.request("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]
        return [run for run in runs if run.get("partition_key") == partition_key]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]

    def dag_ids(self) -> set[str]:
        return {dag["dag_id"] for dag in self.request("GET", "/dags", params={"limit": 100})["dags"]}

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/importErrors")["import_errors"]

    def health(self) -> dict[str, Any]:
        return self.client.get("/api/v2/monitor/health").json()

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------------
# The stack


class AirflowStack:
    """Postgres, Redis and Airflow with the CeleryExecutor; a context manager that always cleans up."""

    def __init__(
        self, root: Path, *, binaries: ServerBinaries, key_file: Path, workers: int = 1, worker_concurrency: int = 2,
        dags_folder: Path = DAGS_FOLDER, progress: Callable[[str], None] = lambda line: None, publishing_key_file: Path | None = None,
        confined: bool = False, data_roots: tuple[Path, ...] = (), keyholders: int = 1,
    ):
        self.root = Path(root)
        self.binaries = binaries
        self.key_file = Path(key_file)
        self.publishing_key_file = Path(publishing_key_file) if publishing_key_file else None
        self.workers = workers  # besides the key holder's
        self.keyholders = keyholders  # workers of the key holder's queue, each with the linkage key
        self.confined = confined
        self.data_roots = tuple(Path(p) for p in data_roots)
        self.worker_concurrency = worker_concurrency
        self.dags_folder = Path(dags_folder)
        self.progress = progress
        self.home = self.root / "airflow"
        self.log_dir = self.root / "service-logs"
        self.services: list[Service] = []
        self.one_offs: list[Service] = []  # commands that end by themselves, stopped only if still running
        self.worker_names: list[str] = []
        self.timings: dict[str, float] = {}
        self.stop_timings: dict[str, float] = {}
        self.killed: list[str] = []
        self._pg_dir: Path | None = None
        self.api: RestApi | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> AirflowStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.db_password = secrets.token_urlsafe(16)
        self.admin_password = secrets.token_urlsafe(16)
        self._step("postgres", self._start_postgres)
        self._step("redis", self._start_redis)
        self.api_port = free_port()
        self.env = self._airflow_env()
        self._step("db migrate", lambda: self._airflow_cli(["db", "migrate"], timeout=240))
        self._step("airflow services", self._start_airflow)
        self._step("DAGs parsed", self._wait_for_dags)
        self.timings["ready"] = time.monotonic() - started
        self.progress(f"stack ready in {self.timings['ready']:.1f}s: {self.timings}")

    def _step(self, name: str, action: Callable[[], None]) -> None:
        started = time.monotonic()
        action()
        self.timings[name] = round(time.monotonic() - started, 1)

    def stop(self) -> None:
        """Airflow first (workers finish or are killed), then Redis, then Postgres; then the files."""
        if self.api is not None:
            self.api.close()
        # Airflow's services all at once (a Celery worker's warm shutdown lets a running task end),
        # then the broker, then the database they all write to.
        infrastructure = ("redis", "postgres")
        waves = {"airflow": [s for s in self.services if s.name not in infrastructure] + self.one_offs}
        waves.update({name: [s for s in self.services if s.name == name] for name in infrastructure})
        for label, wave in waves.items():
            stopping = time.monotonic()
            self.killed += stop_services(wave, timeout=60)
            self.stop_timings[label] = round(time.monotonic() - stopping, 1)
        self.one_offs = []
        # Anything still running from this stack's folders escaped its service's process tree
        # (a daemonising child, say): kill it, and fail, since it should not have happened.
        orphans = []
        for proc in self._leftovers():
            with contextlib.suppress(psutil.Error):
                orphans.append(f"{proc.name()} ({proc.pid}): {' '.join(proc.cmdline())[:200]}")
                proc.kill()
        busy = [f"{s.name}:{port}" for s in self.services for port in s.ports if not port_is_free(port)]
        self.services = []
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
            self._pg_dir = None
        if orphans or busy:
            raise ServiceError(f"after stopping every service: orphan processes {orphans}, ports still in use {busy}")

    def _leftovers(self) -> list[psutil.Process]:
        """Processes running in or on this stack's folders or its AIRFLOW_HOME, except this one and its parents."""
        markers = [str(self.root)] + ([str(self._pg_dir)] if self._pg_dir else [])
        me = psutil.Process()
        exempt = {me.pid, *(parent.pid for parent in me.parents())}
        found = []
        for proc in psutil.process_iter():
            if proc.pid in exempt:
                continue
            with contextlib.suppress(psutil.Error):
                seen = " ".join([*proc.cmdline(), proc.cwd(), proc.environ().get("AIRFLOW_HOME", "")])
                if any(marker in seen for marker in markers):
                    found.append(proc)
        return found

    # -- Postgres and Redis ---------------------------------------------------------------------

    def _start_postgres(self) -> None:
        # Postgres refuses to run as root. Its folder is made outside pytest's tmp tree (0700 and
        # owned by root), so that the `postgres` user can reach it.
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                raise ServiceError("running as root and there is no 'postgres' user to run Postgres as") from None
        self._pg_dir = Path(tempfile.mkdtemp(prefix="pprl-it-postgres-"))
        data, socket_dir = self._pg_dir / "data", self._pg_dir / "socket"
        socket_dir.mkdir()
        password_file = self._pg_dir / "password"
        password_file.write_text(self.db_password + "\n")
        if user:
            for path in (self._pg_dir, socket_dir, password_file):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        bindir = self.binaries.postgres_bin
        initdb = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={password_file}", "-E", "UTF8",
             "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            capture_output=True, text=True, user=user, cwd=self._pg_dir, timeout=120,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise ServiceError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        self.pg_port = free_port()
        # Durability is switched off: this database lives for a few minutes and speed matters.
        argv = [
            str(bindir / "postgres"), "-D", str(data), "-p", str(self.pg_port), "-k", str(socket_dir),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        service = start_process(
            "postgres", argv, self.log_dir, _plain_env(), cwd=self._pg_dir, user=user, ports=(self.pg_port,),
            stop_signal=signal.SIGINT,
        )
        self.services.append(service)
        import psycopg2

        def connect(dbname: str):
            return psycopg2.connect(
                host="127.0.0.1", port=self.pg_port, user=DB_USER, password=self.db_password, dbname=dbname, connect_timeout=3
            )

        wait_until("Postgres to accept connections", lambda: connect("postgres").close() is None, 60, [service])
        with contextlib.closing(connect("postgres")) as conn:
            conn.autocommit = True
            conn.cursor().execute(f"CREATE DATABASE {DB_NAME}")

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        redis_dir = self.root / "redis"
        redis_dir.mkdir()
        argv = [
            str(self.binaries.redis_server), "--bind", "127.0.0.1", "--port", str(self.redis_port),
            "--dir", str(redis_dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        service = start_process("redis", argv, self.log_dir, _plain_env(), cwd=redis_dir, ports=(self.redis_port,))
        self.services.append(service)
        import redis

        wait_until("Redis to answer PING", lambda: redis.Redis(port=self.redis_port, socket_timeout=2).ping(), 30, [service])

    # -- Airflow --------------------------------------------------------------------------------

    def _airflow_env(self) -> dict[str, str]:
        """The settings docker-compose.yml gives every Airflow container, pointed at local services."""
        db = f"{DB_USER}:{self.db_password}@127.0.0.1:{self.pg_port}/{DB_NAME}"
        # A key in the test's own environment must not leak in (PPRL_KEY would be refused, PPRL_KEY_FILE
        # or PPRL_PUBLISHING_KEY_FILE name another key).
        env = {k: v for k, v in airflow_env(self.home, self.dags_folder).items() if not k.startswith(("PPRL_KEY", "PPRL_PUBLISHING"))}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        from cryptography.fernet import Fernet

        env.update(
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__CORE__AUTH_MANAGER=FAB_AUTH_MANAGER,
            AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.api_port}/execution/",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://{db}",
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            # The driver is named: SQLAlchemy 2.1 opens a bare postgresql:// with psycopg 3, which
            # is not installed (Airflow 3.3 itself uses psycopg2, and asyncpg for async sessions).
            AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql+psycopg2://{db}",
            AIRFLOW__CELERY__WORKER_CONCURRENCY=str(self.worker_concurrency),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{self.api_port}",
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(48),
            AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
            # As docker-compose.yml: a task's slot is freed about a second after it ends, not five.
            AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="1",
            # Celery names its processes with setproctitle, which by default writes the title over the
            # process's environment block; then /proc/<pid>/environ no longer shows what a worker was
            # started with, and the test that reads it (for keys that must not be there) would see nothing.
            SPT_NOENV="1",
        )
        if self.data_roots:
            env[DATA_ROOTS_VARIABLE] = os.pathsep.join(str(p) for p in self.data_roots)
        return env

    def _airflow_cli(self, args: list[str], timeout: float) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home, capture_output=True, text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise ServiceError(f"airflow {' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def _start_airflow(self) -> None:
        airflow = [sys.executable, "-m", "airflow"]
        # The FAB admin account first, as docker-compose.yml's init job does: `users create` and the
        # api-server both sync FAB's permissions at start-up, and run side by side they race on
        # the same rows (UniqueViolation on ab_permission_view_role).
        admin = start_process(
            "users-create",
            [*airflow, "users", "create", "--username", ADMIN_USER, f"--password={self.admin_password}", "--role",
             "Admin", "--firstname", "Integration", "--lastname", "Test", "--email", "admin@example.invalid"],
            self.log_dir, self.env, cwd=self.home,
        )  # fmt: skip
        self.one_offs.append(admin)
        try:
            code = admin.process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"airflow users create took over 180s; log {admin.log_path}:\n{admin.log_tail()}") from None
        if code != 0:
            raise ServiceError(f"airflow users create failed ({code}); log {admin.log_path}:\n{admin.log_tail()}")
        api = start_process(
            "api-server", [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"],
            self.log_dir, self.env, cwd=self.home, ports=(self.api_port,),
        )  # fmt: skip
        self.services.append(api)
        self.services.append(start_process("scheduler", [*airflow, "scheduler"], self.log_dir, self.env, cwd=self.home))
        self.services.append(start_process("dag-processor", [*airflow, "dag-processor"], self.log_dir, self.env, cwd=self.home))
        # As docker-compose.yml: the key holder's workers alone get the linkage key and serve its
        # queue (in-process, as airflow-keyholder); the others serve the default queue and get the
        # publishing key only. Workers on one machine need their own Celery hostnames and log-server ports.
        for number in range(1, self.keyholders + 1):
            log_port = free_port()
            name = "keyholder" if number == 1 else f"keyholder{number}"
            env = {**self.env, KEY_FILE_VARIABLE: str(self.key_file), KEY_HOLDER_PROCESS: IN_PROCESS,
                   "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port)}  # fmt: skip
            argv = [*airflow, "celery", "worker", "--queues", KEY_HOLDER_QUEUE, "--celery-hostname", f"{name}@%h"]
            self.services.append(start_process(name, argv, self.log_dir, env, cwd=self.home, ports=(log_port,)))
            self.worker_names.append(name)
        for number in range(1, self.workers + 1):
            log_port = free_port()
            name = f"worker{number}"
            env = {**self.env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port)}
            if self.publishing_key_file:  # the publish task signs with it, as PPRL_PUBLISHING_KEY_FILE in docker-compose.yml
                env["PPRL_PUBLISHING_KEY_FILE"] = str(self.publishing_key_file)
            argv = [*airflow, "celery", "worker", "--celery-hostname", f"{name}@%h"]
            service = start_process(name, argv, self.log_dir, env, cwd=self.home, ports=(log_port,), confined=self.confined)
            self.services.append(service)
            self.worker_names.append(name)
        self.api = RestApi(f"http://127.0.0.1:{self.api_port}", ADMIN_USER, self.admin_password)
        wait_until("the api-server to issue a token", lambda: bool(self.api.token()), 120, self.services)
        wait_until("Celery workers to be ready", self._workers_ready, 120, self.services)

    def _workers_ready(self) -> bool:
        # Celery logs "<hostname> ready." once the worker consumes from the broker. Each worker has a
        # log of its own, and the "@" right after the name keeps `keyholder` from matching `keyholder2@`.
        workers = [s for s in self.services if s.name in self.worker_names]
        return all(re.search(rf"\b{s.name}@\S+ ready\.", s.log_path.read_text(errors="replace")) for s in workers)

    def celery_task_counts(self) -> dict[str, int]:
        """Tasks each Celery worker has run since it started, from `celery inspect stats`."""
        done = subprocess.run(
            [sys.executable, "-m", "celery", "--app", "airflow.providers.celery.executors.celery_executor.app",
             "inspect", "stats", "--json", "--timeout", "5"],
            env=self.env, cwd=self.home, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise ServiceError(f"celery inspect stats failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        return {host.split("@")[0]: sum(info.get("total", {}).values()) for host, info in stats.items()}

    def _wait_for_dags(self) -> None:
        from pipeline.orchestration import PIPELINE_DAGS

        def parsed() -> bool:
            errors = self.api.import_errors()
            if errors:
                raise ServiceError(f"DAG import errors: {errors}")
            return set(PIPELINE_DAGS) <= self.api.dag_ids()

        wait_until("the dag-processor to parse the pipeline's DAGs", parsed, 120, self.services, interval=1)

    # -- helpers for tests ----------------------------------------------------------------------

    def check_alive(self) -> None:
        for service in self.services:
            service.check_alive()

    def worker(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Poll one run until it finishes; fail with its task states and the services' state."""
        state: dict[str, Any] = {}

        def finished() -> bool:
            state.update(self.api.run(dag_id, run_id))
            return state["state"] in FINISHED

        wait_until(f"{dag_id} run {run_id}", finished, timeout, self.services, interval=1)
        return state

    def wait_for_downstream_run(
        self, dag_id: str, upstream_dag_id: str, upstream_run_id: str, partition_key: str, timeout: float
    ) -> dict[str, Any]:
        """Wait for the run of `dag_id` that an asset event of one upstream run created, then for it to finish.

        The downstream runs are partitioned by release label; among that label's runs, the one wanted
        is the one whose triggering asset event came from `upstream_run_id`.
        """
        found: list[dict[str, Any]] = []

        def created() -> bool:
            found.clear()
            for run in self.api.runs_for_partition(dag_id, partition_key):
                events = self.api.request("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
                sources = {(e["source_dag_id"], e["source_run_id"]) for e in events["asset_events"]}
                if (upstream_dag_id, upstream_run_id) in sources:
                    found.append(run)
            return bool(found)

        what = f"the {dag_id} run for {partition_key} that {upstream_dag_id} run {upstream_run_id} triggers"
        wait_until(what, created, timeout, self.services, interval=1)
        if len(found) != 1:
            raise AssertionError(f"{upstream_run_id} triggered {len(found)} {dag_id} runs: {[r['dag_run_id'] for r in found]}")
        return self.wait_for_run(dag_id, found[0]["dag_run_id"], timeout)

    def describe_run(self, dag_id: str, run_id: str) -> str:
        """A run's task instances with state, try and worker, and where their logs are."""
        lines = [f"{dag_id} {run_id} (task logs under {self.home / 'logs'}):"]
        for ti in self.api.task_instances(dag_id, run_id):
            index = f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
            lines.append(f"  {ti['task_id']}{index}: {ti['state']}, try {ti.get('try_number')}, on {ti.get('hostname')}")
        return "\n".join(lines)


def _plain_env() -> dict[str, str]:
    """Environment for Postgres and Redis: nothing of the test's own (no AIRFLOW_*, no PPRL_*)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {name: os.environ[name] for name in keep if name in os.environ}


def main() -> None:
    """Start the stack by hand, to try the REST API or debug the integration test; Ctrl-C stops it.

        .venv/bin/python tests/integration/airflow_stack.py --key demo/secrets/demo.key.json
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--key", type=Path, required=True, help="the 0600 linkage key file the workers use")
    parser.add_argument("--publishing-key", type=Path, help="the 0600 publishing key file the workers sign releases with")
    parser.add_argument("--root", type=Path, help="folder for the services' files (default: a new temporary one)")
    parser.add_argument("--workers", type=int, default=1, help="workers of the default queue, besides the key holder's")
    parser.add_argument("--keyholders", type=int, default=1, help="workers of the key holder's queue")
    args = parser.parse_args()
    binaries, missing = find_server_binaries()
    if binaries is None:
        sys.exit(missing)
    root = args.root or Path(tempfile.mkdtemp(prefix="pprl-stack-"))
    publishing = args.publishing_key.resolve() if args.publishing_key else None
    with AirflowStack(
        root, binaries=binaries, key_file=args.key.resolve(), workers=args.workers, keyholders=args.keyholders,
        progress=print, publishing_key_file=publishing,
    ) as stack:
        print(f"UI and REST API: {stack.api.base_url}  user {ADMIN_USER}  password {stack.admin_password}")
        print(f"AIRFLOW_HOME {stack.home}; service logs in {stack.log_dir}. Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                stack.check_alive()
                time.sleep(2)


if __name__ == "__main__":
    main()
