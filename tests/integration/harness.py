"""Integration harness: real PostgreSQL, real Redis and Sluice on loopback ports.

Used by the pytest suite (conftest.py) and by scripts/demo.py. Every process started here
is registered and killed at interpreter exit, even when a test or the demo fails; every
wait is bounded in time.

Run the suite with Debian's interpreter (it has psycopg, pytest and yaml):
    /usr/bin/python3 -m pytest tests/integration -q
"""
from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("SLUICE_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("SLUICE_REDIS_SERVER", "/usr/bin/redis-server")
REDIS_SENTINEL = os.environ.get("SLUICE_REDIS_SENTINEL", "/usr/bin/redis-sentinel")
PG_OS_USER = "sluicetest"


def sluice_bin() -> Path:
    # Resolved now: Sluice runs with its own temp dir as working directory.
    return Path(os.environ.get("SLUICE_BIN", str(REPO_ROOT / "build" / "sluice"))).resolve()


# ----------------------------------------------------------------------------------------
# Process bookkeeping: everything we start dies with us.

_procs: List[subprocess.Popen] = []
_procs_lock = threading.Lock()
_tempdirs: List[str] = []


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(argv: List[str], log_path: Optional[Path] = None, env=None, cwd=None,
          pdeathsig: bool = True) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        p = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                             preexec_fn=_pdeathsig if pdeathsig else None)
    finally:
        if log_path:
            out.close()
    with _procs_lock:
        _procs.append(p)
    return p


def _kill(p: subprocess.Popen, first=signal.SIGTERM, grace: float = 3.0) -> None:
    if p.poll() is not None:
        return
    try:
        p.send_signal(first)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            p.kill()
            p.wait(timeout=5)
        except Exception:
            pass
    except ProcessLookupError:
        pass


def kill_all() -> None:
    with _procs_lock:
        procs = list(_procs)
    for p in procs:
        _kill(p, first=signal.SIGQUIT if getattr(p, "_is_postgres", False) else signal.SIGTERM,
              grace=2.0)


def _cleanup() -> None:
    kill_all()
    if os.environ.get("SLUICE_KEEP_TMP"):
        return
    for d in _tempdirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


DEADLINE = 30.0  # seconds: how long a test waits for any condition; generous on purpose


def wait_for(pred, timeout: float = DEADLINE, interval: float = 0.05):
    """Polls pred() until it returns something true (returned at once) or `timeout`
    seconds have passed (then its last, false, value). Tests wait for conditions with
    this rather than sleeping, so that no verdict depends on the machine's speed."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def make_tempdir(prefix: str = "sluice-it-") -> Path:
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)  # the unprivileged PostgreSQL user must traverse it
    _tempdirs.append(d)
    return Path(d)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1",
              proc: Optional[subprocess.Popen] = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def client_env(password: Optional[str] = None, **extra: str) -> Dict[str, str]:
    """Environment for psql/pgbench: no stray PG* variables from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    if password is not None:
        env["PGPASSWORD"] = password
    env.update(extra)
    return env


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_pg_os_user() -> None:
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", PG_OS_USER], check=False, timeout=30,
                       capture_output=True)
        pwd.getpwnam(PG_OS_USER)  # raises if it still does not exist


def as_pg_user(argv: List[str]) -> List[str]:
    """PostgreSQL refuses to run as root. setpriv (not su/runuser) keeps our rlimits."""
    if not is_root():
        return argv
    return ["setpriv", f"--reuid={PG_OS_USER}", f"--regid={PG_OS_USER}", "--init-groups",
            *argv]


# ----------------------------------------------------------------------------------------
# PostgreSQL

class Postgres:
    SUPERUSER = "postgres"

    def __init__(self, base: Optional[Path] = None, port: Optional[int] = None,
                 extra_conf: Optional[Dict[str, Any]] = None):
        self.base = Path(base) if base else make_tempdir("sluice-pg-")
        self.dir = self.base / "pg"
        self.data = self.dir / "data"
        self.sockdir = self.dir
        self.log = self.dir / "postgres.log"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_conf = extra_conf or {}
        self.proc: Optional[subprocess.Popen] = None
        self.md5_users: List[str] = []
        self._initdb()

    # -- setup
    def _initdb(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if is_root():
            ensure_pg_os_user()
            shutil.chown(self.dir, PG_OS_USER, PG_OS_USER)
        r = subprocess.run(as_pg_user([str(PG_BIN / "initdb"), "-D", str(self.data),
                                       "-U", self.SUPERUSER, "-E", "UTF8", "--locale=C",
                                       "--auth-local=trust", "--auth-host=scram-sha-256",
                                       "--no-sync", "--no-instructions"]),
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.sockdir}'",
            "max_connections": 200,
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'64MB'",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %u@%d '",
        }
        conf.update(self.extra_conf)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# sluice test harness\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        self._write_hba()

    def _write_hba(self) -> None:
        # (replication: a Standby's pg_basebackup and its walreceiver, over the socket)
        lines = ["local all all trust", "local replication all trust"]
        # md5-hashed roles cannot answer SCRAM; 'md5' in pg_hba accepts both kinds of secret.
        for u in self.md5_users:
            lines.append(f"host all {u} 127.0.0.1/32 md5")
        lines.append("host all all 127.0.0.1/32 scram-sha-256")
        lines.append("host all all 127.0.0.2/32 scram-sha-256")  # a Standby's address
        path = self.data / "pg_hba.conf"
        path.write_text("\n".join(lines) + "\n")
        if is_root():
            shutil.chown(path, PG_OS_USER, PG_OS_USER)

    # -- lifecycle
    def start(self, timeout: float = 30.0) -> "Postgres":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = spawn(as_pg_user([str(PG_BIN / "postgres"), "-D", str(self.data)]),
                          log_path=self.log, pdeathsig=True)
        self.proc._is_postgres = True  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{tail(self.log)}")
            r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-U", self.SUPERUSER, "-h", str(self.sockdir),
                                "-p", str(self.port)], timeout=10, env=client_env())
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"postgres not ready after {timeout}s:\n{tail(self.log)}")

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
               "immediate": signal.SIGQUIT}[mode]
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- SQL helpers (unix socket, superuser, trust)
    def psql(self, sql: str, user: Optional[str] = None, db: str = "postgres",
             check: bool = True, timeout: float = 60.0) -> str:
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                            "-h", str(self.sockdir), "-p", str(self.port),
                            "-U", user or self.SUPERUSER, "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=timeout, env=client_env())
        if check and r.returncode != 0:
            raise RuntimeError(f"psql failed: {sql!r}\n{r.stderr}")
        return r.stdout.strip()

    def create_role(self, name: str, password: Optional[str], md5: bool = False,
                    superuser: bool = False, login: bool = True) -> None:
        opts = []
        opts.append("LOGIN" if login else "NOLOGIN")
        if superuser:
            opts.append("SUPERUSER")
        if password is not None:
            opts.append("PASSWORD " + quote_literal(password))
        sql = f"CREATE ROLE {quote_ident(name)} {' '.join(opts)};"
        if md5:
            sql = "SET password_encryption = 'md5'; " + sql
            if name not in self.md5_users:
                self.md5_users.append(name)
                self._write_hba()
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = {quote_literal(name)}")
        if exists == "1":
            self.psql(f"DROP OWNED BY {quote_ident(name)}; DROP ROLE {quote_ident(name)};",
                      check=False)
        self.psql(sql)
        if md5 and self.running():
            self.psql("SELECT pg_reload_conf()")

    def create_database(self, name: str, owner: Optional[str] = None) -> None:
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(name)}") == "1":
            return
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner:
            sql += f" OWNER {quote_ident(owner)}"
        self.psql(sql)

    def role_secret(self, name: str) -> str:
        return self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = {quote_literal(name)}")

    def dsn(self, user: str, password: str, db: str) -> str:
        return (f"host=127.0.0.1 port={self.port} user={user} password={password} "
                f"dbname={db} connect_timeout=5 sslmode=disable")

    def pgbench_init(self, db: str, user: str, scale: int = 1, timeout: float = 300) -> None:
        r = subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale),
                            "-h", str(self.sockdir), "-p", str(self.port), "-U", user, db],
                           capture_output=True, text=True, timeout=timeout, env=client_env())
        if r.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{r.stdout}\n{r.stderr}")


class Standby(Postgres):
    """A streaming standby of `primary` (pg_basebackup -R), listening on 127.0.0.2 with the
    primary's port, so that one entry `host=127.0.0.1,127.0.0.2 port=P` names both. Its
    own socket directory; start()/stop()/psql() as for any Postgres."""

    def __init__(self, primary: Postgres, host: str = "127.0.0.2"):
        self.primary = primary
        super().__init__(base=None, port=primary.port,
                         extra_conf={"listen_addresses": f"'{host}'"})
        self.host = host

    def _initdb(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if is_root():
            ensure_pg_os_user()
            shutil.chown(self.dir, PG_OS_USER, PG_OS_USER)
        r = subprocess.run(as_pg_user([str(PG_BIN / "pg_basebackup"), "-D", str(self.data),
                                       "-R", "-X", "stream", "-c", "fast", "--no-sync",
                                       "-h", str(self.primary.sockdir),
                                       "-p", str(self.primary.port), "-U", self.SUPERUSER]),
                           capture_output=True, text=True, timeout=120, env=client_env())
        if r.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# sluice test harness: standby\n")
            f.write(f"unix_socket_directories = '{self.sockdir}'\n")
            f.write("hot_standby = on\n")
            for k, v in self.extra_conf.items():
                f.write(f"{k} = {v}\n")

    def promote(self, timeout: int = 30) -> None:
        self.psql(f"SELECT pg_promote(true, {timeout})")

    def caught_up(self, timeout: float = 30.0) -> bool:
        """Waits until a mark written on the primary now is visible here: everything
        committed before it has been replayed. (Comparing LSNs is not enough: with
        synchronous_commit off the primary's last WAL may sit unflushed for a while.)"""
        self._marks = getattr(self, "_marks", 0) + 1
        mark = f"{id(self)}-{self._marks}"
        self.primary.psql("SET synchronous_commit = on; "
                          "CREATE TABLE IF NOT EXISTS harness_replication_mark (v text); "
                          f"INSERT INTO harness_replication_mark VALUES ('{mark}')")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.psql("SELECT count(*) FROM pg_class WHERE relname = "
                         "'harness_replication_mark'") == "1" and \
                    self.psql("SELECT count(*) FROM harness_replication_mark "
                              f"WHERE v = '{mark}'") == "1":
                return True
            time.sleep(0.05)
        return False


def quote_ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def quote_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# ----------------------------------------------------------------------------------------
# Redis

class Redis:
    """One redis-server. `extra_args` go on its command line (`--replicaof H P`,
    `--requirepass X`, ...); `password` is what command() authenticates with."""

    def __init__(self, base: Optional[Path] = None, port: Optional[int] = None,
                 extra_args: Iterable[str] = (), password: Optional[str] = None,
                 name: str = "redis"):
        self.base = Path(base) if base else make_tempdir("sluice-redis-")
        self.dir = self.base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.dir / "redis.log"
        self.extra_args = list(extra_args)
        self.password = password
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "Redis":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                           "--daemonize", "no", "--protected-mode", "no", *self.extra_args],
                          log_path=self.log)
        _wait_resp_ready(self, timeout, "redis")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc, signal.SIGTERM, grace=5)

    def kill(self) -> None:
        """SIGKILL: the process vanishes without a word to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, *args: str, timeout: float = 2.0) -> Any:
        """One RESP command; returns str/int/list/None. Enough for tests."""
        return resp_command(self.port, args, password=self.password, timeout=timeout)


class Sentinel:
    """One redis-sentinel monitoring `master_name` at 127.0.0.1:`master_port`, with short
    timeouts so that a failover takes seconds (down-after-milliseconds, failover-timeout).
    `password`: the sentinels' own (requirepass, and sentinel-pass to reach each other);
    `master_password`: auth-pass for the master and its replicas."""

    def __init__(self, master_port: int, base: Optional[Path] = None,
                 master_name: str = "mymaster", quorum: int = 2,
                 password: Optional[str] = None, master_password: Optional[str] = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 2000,
                 port: Optional[int] = None):
        self.port = port or free_port()
        self.base = Path(base) if base else make_tempdir("sluice-sentinel-")
        self.dir = self.base / f"sentinel-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"  # Sentinel rewrites it: it must be writable
        self.log = self.dir / "sentinel.log"
        self.master_name = master_name
        self.password = password
        lines = [f"port {self.port}", "bind 127.0.0.1", "protected-mode no",
                 "daemonize no", f"dir {self.dir}",
                 f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
                 f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                 f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
                 f"sentinel parallel-syncs {master_name} 1"]
        if master_password:
            lines.append(f"sentinel auth-pass {master_name} {master_password}")
        if password:
            lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "Sentinel":
        self.proc = spawn([REDIS_SENTINEL, str(self.conf)], log_path=self.log)
        _wait_resp_ready(self, timeout, "redis-sentinel")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc, signal.SIGTERM, grace=5)

    def command(self, *args: str, timeout: float = 2.0) -> Any:
        return resp_command(self.port, args, password=self.password, timeout=timeout)

    def master_addr(self) -> Optional[Tuple[str, int]]:
        """Where this sentinel says the master is (None: unknown or unreachable)."""
        try:
            r = self.command("SENTINEL", "get-master-addr-by-name", self.master_name)
        except (OSError, RuntimeError):
            return None
        return (r[0], int(r[1])) if r else None

    def master_info(self) -> Dict[str, str]:
        """SENTINEL MASTER: its flat field list as a dict (num-slaves, flags, ...)."""
        r = self.command("SENTINEL", "master", self.master_name)
        return dict(zip(r[0::2], r[1::2]))


def _wait_resp_ready(server, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{tail(server.log)}")
        try:
            if server.command("PING") == "PONG":
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready:\n{tail(server.log)}")


def resp_command(port: int, args: Iterable[Any], password: Optional[str] = None,
                 timeout: float = 2.0) -> Any:
    """One RESP command to 127.0.0.1:port (after AUTH when a password is given); returns
    str/int/list/None, raises RuntimeError for an error reply."""
    def encode(parts) -> bytes:
        parts = [str(a).encode() for a in parts]
        out = f"*{len(parts)}\r\n".encode()
        for b in parts:
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        return out
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        if password:
            s.sendall(encode(["AUTH", password]))
            _resp_read(f)
        s.sendall(encode(args))
        return _resp_read(f)


def _resp_read(f) -> Any:
    line = f.readline()
    if not line:
        raise OSError("redis closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"bad RESP {line!r}")


# ----------------------------------------------------------------------------------------
# Sluice

def userlist_text(users: Dict[str, str]) -> str:
    def q(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'
    return "".join(f"{q(u)} {q(p)}\n" for u, p in users.items())


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


class SluiceStartError(RuntimeError):
    pass


class Sluice:
    """One sluice process. `config` is the full YAML model as a dict; listen_port,
    unix_socket_dir and auth_file are filled in when absent."""

    _counter = 0

    def __init__(self, config: Dict[str, Any], users: Optional[Dict[str, str]] = None,
                 base: Optional[Path] = None, args: Iterable[str] = (),
                 userlist: Optional[str] = None):
        Sluice._counter += 1
        self.base = Path(base) if base else make_tempdir("sluice-")
        self.dir = self.base / f"sluice{Sluice._counter}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "sluice.yaml"
        self.userlist_path = self.dir / "userlist.txt"
        self.log = self.dir / "sluice.log"
        self.args = list(args)
        self.env: Optional[Dict[str, str]] = None  # the process environment (None: ours)
        self.proc: Optional[subprocess.Popen] = None
        self.config = dict(config)
        gen = dict(self.config.get("sluice", {}))
        gen.setdefault("listen_addr", "127.0.0.1")
        gen.setdefault("listen_port", free_port())
        gen.setdefault("unix_socket_dir", str(self.dir))
        gen.setdefault("auth_file", str(self.userlist_path))
        self.config["sluice"] = gen
        self.users = dict(users or {})
        self._userlist_override = userlist
        self.write_config()

    @property
    def port(self) -> int:
        return int(self.config["sluice"]["listen_port"])

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def write_config(self, config: Optional[Dict[str, Any]] = None,
                     users: Optional[Dict[str, str]] = None) -> None:
        if config is not None:
            self.config = config
        if users is not None:
            self.users = dict(users)
            self._userlist_override = None
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        text = self._userlist_override if self._userlist_override is not None \
            else userlist_text(self.users)
        self.userlist_path.write_text(text)

    def update(self, **general: Any) -> None:
        """Changes settings of the `sluice:` section in the file (call reload() after)."""
        self.config["sluice"].update(general)
        self.write_config()

    def start(self, timeout: float = 10.0) -> "Sluice":
        binary = sluice_bin()
        if not binary.exists():
            raise SluiceStartError(f"{binary} does not exist (build it first)")
        with open(self.log, "ab") as f:
            f.write(f"=== start {time.strftime('%H:%M:%S')} ===\n".encode())
        self.proc = spawn([str(binary), *self.args, str(self.config_path)], log_path=self.log,
                          cwd=str(self.dir), env=self.env)
        if not wait_port(self.port, timeout=timeout, proc=self.proc):
            rc = self.proc.poll()
            self.stop()
            raise SluiceStartError(
                f"sluice did not accept connections on port {self.port} within {timeout}s "
                f"(exit code {rc}); config:\n{self.config_path.read_text()}\nlog tail:\n"
                f"{tail(self.log)}")
        return self

    def stop(self, grace: float = 5.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is not None and self.exited_on_its_own is None:
            self.exited_on_its_own = self.proc.returncode
        _kill(self.proc, signal.SIGTERM, grace=grace)
        rc = self.proc.returncode
        if rc is not None and rc < 0 and -rc not in (signal.SIGTERM, signal.SIGKILL):
            self.stop_crash = rc
        return rc

    stop_crash: Optional[int] = None
    exited_on_its_own: Optional[int] = None

    SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                         "WARNING: ThreadSanitizer", "runtime error:", "free(): ", "malloc(): ",
                         "corrupted size", "corrupted double-linked", "double free",
                         "Segmentation fault", "terminate called")

    def problems(self) -> List[str]:
        """Crash or sanitizer reports: a nonzero exit we did not cause, or report lines
        in the log."""
        out = []
        rc = self.exited_on_its_own
        if rc is not None and rc != 0:
            out.append(f"sluice exited by itself with code {rc}")
        if self.stop_crash is not None:
            out.append(f"sluice died of signal {-self.stop_crash} while stopping")
        for line in self.log_text().splitlines():
            if any(m in line for m in self.SANITIZER_MARKERS):
                out.append(line.strip())
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def reload(self) -> None:
        self.signal(signal.SIGHUP)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> Optional[int]:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def dsn(self, user: str = "app", password: Optional[str] = None, db: str = "app",
            **extra: Any) -> str:
        if password is None:
            password = self.users.get(user, "")
        parts = {"host": "127.0.0.1", "port": self.port, "user": user, "password": password,
                 "dbname": db, "connect_timeout": 5, "sslmode": "disable"}
        parts.update(extra)
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())

    def psql(self, sql: str, user: str = "app", password: Optional[str] = None,
             db: str = "app", timeout: float = 30.0, extra_args: Iterable[str] = ()
             ) -> subprocess.CompletedProcess:
        if password is None:
            password = self.users.get(user, "")
        return subprocess.run([str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                               "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", db,
                               *extra_args, "-c", sql],
                              capture_output=True, text=True, timeout=timeout,
                              env=client_env(password))


def _conninfo_value(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in " '\\"):
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return s


def pgbench(args: List[str], host: str, port: int, user: str, password: str, db: str,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(PG_BIN / "pgbench"), "-h", host, "-p", str(port), "-U", user,
                           *args, db], capture_output=True, text=True, timeout=timeout,
                          env=client_env(password))


def parse_pgbench(out: str) -> Dict[str, float]:
    import re
    res: Dict[str, float] = {}
    m = re.search(r"number of failed transactions:\s*(\d+)", out)
    if m:
        res["failed"] = int(m.group(1))
    m = re.search(r"number of transactions actually processed:\s*(\d+)", out)
    if m:
        res["processed"] = int(m.group(1))
    m = re.search(r"tps = ([0-9.]+) \((?:without initial connection time|excluding|including reconnection)", out)
    if m:
        res["tps"] = float(m.group(1))
    m = re.search(r"latency average = ([0-9.]+) ms", out)
    if m:
        res["latency_ms"] = float(m.group(1))
    return res


# ----------------------------------------------------------------------------------------
# A raw PostgreSQL v3 protocol client, for what libpq will not do (SQLSTATE of login
# errors, malformed packets, vanishing without Terminate).

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class PgError(Exception):
    def __init__(self, fields: Dict[str, str]):
        self.fields = fields
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self) -> Optional[str]:
        return self.fields.get("C")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


def parse_data_row(body: bytes) -> list:
    """A DataRow body as a list of text values (None for NULL)."""
    (n,) = struct.unpack("!H", body[:2])
    i, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[i:i + 4])
        i += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[i:i + ln].decode())
            i += ln
    return row


def parse_error_fields(body: bytes) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    i = 0
    while i < len(body) and body[i] != 0:
        code = chr(body[i])
        j = body.index(b"\0", i + 1)
        fields[code] = body[i + 1:j].decode(errors="replace")
        i = j + 1
    return fields


def startup_packet(user: str, db: Optional[str], params: Optional[Dict[str, str]] = None,
                   protocol: int = PROTOCOL_3) -> bytes:
    body = struct.pack("!I", protocol)
    kv = {"user": user}
    if db is not None:
        kv["database"] = db
    kv.update(params or {})
    for k, v in kv.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


# Extended-protocol frontend messages, for raw clients.
def m_parse(name: str, sql: str) -> bytes:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def m_bind(portal: str = "", stmt: str = "", params: Tuple[bytes, ...] = ()) -> bytes:
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    body += struct.pack("!h", 0)
    return message(b"B", body)


def m_execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


def m_describe_portal(portal: str = "") -> bytes:
    return message(b"D", b"P" + portal.encode() + b"\0")


SYNC = message(b"S")


def full_client_gets_every_row(c: "RawPg", su, n: int = 1000000) -> None:
    """Sends a query of `n` numbered rows (50 MB for a million: more than every socket
    buffer on the way holds) and reads nothing until PostgreSQL itself waits to write
    (wait_event ClientWrite: Sluice's send to the client stopped part way); then reads
    everything and asserts every row came, in order, intact. `su`: a superuser
    connection to PostgreSQL directly."""
    marker = "full_client_" + str(os.getpid())
    sql = f"SELECT /* {marker} */ i, md5(i::text) FROM generate_series(1, {n}) i"
    c.send(message(b"Q", sql.encode() + b"\0"))
    find = ("SELECT pid, wait_event FROM pg_stat_activity WHERE query LIKE %s "
            "AND pid <> pg_backend_pid()")
    seen: List = []

    def blocked():
        seen[:] = su.execute(find, (f"%{marker}%",)).fetchall()
        return len(seen) == 1 and seen[0][1] == "ClientWrite"

    assert wait_for(blocked, 60, 0.1), f"the server never waited on Sluice: {seen}"
    msgs = []
    c.sock.settimeout(120)
    while True:
        m = c.read_msg()
        assert m is not None, f"EOF after {len(msgs)} messages"
        msgs.append(m)
        if m[0] == b"Z":
            break
    kinds = [k for k, _ in msgs]
    assert kinds[0] == b"T" and kinds[-2:] == [b"C", b"Z"], kinds[:3] + kinds[-3:]
    rows = [p for k, p in msgs if k == b"D"]
    assert len(rows) == n
    for expect, payload in enumerate(rows, start=1):
        ncols, l1 = struct.unpack_from("!hi", payload, 0)
        v1 = payload[6:6 + l1]
        (l2,) = struct.unpack_from("!i", payload, 6 + l1)
        v2 = payload[10 + l1:10 + l1 + l2]
        assert (ncols, v1, v2) == (2, str(expect).encode(),
                                   hashlib.md5(str(expect).encode()).hexdigest().encode()), \
            f"row {expect}: {payload!r}"


class RawPg:
    """Blocking v3 client over a plain socket; every read is bounded by `timeout`."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.params: Dict[str, str] = {}
        self.backend_key: Optional[Tuple[int, int]] = None
        self.txn_status: Optional[str] = None

    # -- bytes
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_byte(self) -> Optional[bytes]:
        if not self._fill(1):
            return None
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def read_msg(self) -> Optional[Tuple[bytes, bytes]]:
        """Next (type, body), or None on EOF."""
        if not self._fill(5):
            return None
        kind = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        if kind == b"E" and (length < 4 or length > 1 << 24):
            # Protocol-2 style ErrorResponse (what PostgreSQL answers a 2.0 startup with):
            # 'E' then a NUL-terminated text, no length. Read to the NUL or EOF.
            while b"\0" not in self.buf[1:]:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
            end = self.buf.find(b"\0", 1)
            end = len(self.buf) if end < 0 else end
            text, self.buf = self.buf[1:end], self.buf[end + 1:]
            return b"E2", text
        if length < 4 or length > 1 << 30:
            raise RuntimeError(f"bad length {length} for message {kind!r}")
        if not self._fill(1 + length):
            return None
        body = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return kind, body

    def read_until_close(self, timeout: float = 5.0) -> List[Tuple[bytes, bytes]]:
        """Messages until EOF (or connection reset). Raises socket.timeout if the server
        neither answers nor closes in time."""
        msgs = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("server neither closed nor finished")
            self.sock.settimeout(left)
            try:
                m = self.read_msg()
            except (ConnectionResetError, BrokenPipeError):
                return msgs
            if m is None:
                return msgs
            msgs.append(m)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def terminate(self) -> None:
        try:
            self.send(message(b"X"))
        except OSError:
            pass
        self.close()

    def abort(self) -> None:
        """Vanish without Terminate: RST if possible."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- protocol
    def ssl_request(self) -> bytes:
        self.send(struct.pack("!II", 8, SSL_REQUEST))
        b = self.read_byte()
        return b or b""

    def login(self, user: str, password: Optional[str], db: Optional[str],
              params: Optional[Dict[str, str]] = None) -> None:
        """Startup + authentication up to ReadyForQuery. Raises PgError on ErrorResponse,
        ConnectionError on EOF."""
        self.send(startup_packet(user, db, params))
        scram: Optional[_ScramClient] = None
        while True:
            m = self.read_msg()
            if m is None:
                raise ConnectionError("server closed the connection during login")
            kind, body = m
            if kind == b"E":
                raise PgError(parse_error_fields(body))
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 0:
                    continue
                if code == 3:
                    self.send(message(b"p", (password or "").encode() + b"\0"))
                elif code == 5:
                    salt = body[4:8]
                    inner = hashlib.md5(((password or "") + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == 10:
                    mechs = [x.decode() for x in body[4:].split(b"\0") if x]
                    if "SCRAM-SHA-256" not in mechs:
                        raise RuntimeError(f"no SCRAM-SHA-256 in {mechs}")
                    scram = _ScramClient(password or "")
                    first = scram.client_first()
                    self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                      + first))
                elif code == 11:
                    assert scram is not None
                    self.send(message(b"p", scram.client_final(body[4:])))
                elif code == 12:
                    assert scram is not None
                    scram.verify_server_final(body[4:])
                else:
                    raise RuntimeError(f"unsupported auth request {code}")
            elif kind == b"S":
                k, v, _ = body.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif kind == b"K":
                self.backend_key = struct.unpack("!II", body[:8])
            elif kind == b"Z":
                self.txn_status = body[:1].decode()
                return
            elif kind == b"N":
                continue
            else:
                raise RuntimeError(f"unexpected message {kind!r} during login")

    def query(self, sql: str) -> Tuple[List[List[Optional[str]]], Optional[Dict[str, str]]]:
        """Simple query. Returns (rows of the last result, error fields or None)."""
        self.send(message(b"Q", sql.encode() + b"\0"))
        rows: List[List[Optional[str]]] = []
        err = None
        while True:
            try:
                m = self.read_msg()
            except ConnectionResetError:
                m = None
            if m is None:
                if err is not None:  # a FATAL error, then the close
                    self.txn_status = None
                    return rows, err
                raise ConnectionError("server closed the connection during a query")
            kind, body = m
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(parse_data_row(body))
            elif kind == b"E":
                err = parse_error_fields(body)
            elif kind == b"Z":
                self.txn_status = body[:1].decode()
                return rows, err


class _ScramClient:
    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def client_first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        sf = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise RuntimeError("SCRAM server nonce does not extend ours")
        salt = base64.b64decode(attrs["s"])
        iters = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_msg = f"{self.first_bare},{sf},{without_proof}".encode()
        client_sig = hmac.new(stored_key, auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth_msg, "sha256").digest()
        return (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()

    def verify_server_final(self, data: bytes) -> None:
        s = data.decode()
        if not s.startswith("v="):
            raise RuntimeError(f"SCRAM server-final: {s}")
        if base64.b64decode(s[2:]) != self.server_signature:
            raise RuntimeError("SCRAM server signature mismatch")


# ----------------------------------------------------------------------------------------
# Default configuration used by tests and the demo.

def default_config(pg: Postgres, **general: Any) -> Dict[str, Any]:
    gen: Dict[str, Any] = {
        "listen_addr": "127.0.0.1",
        "pool_mode": "session",
        "default_pool_size": 5,
        "max_client_conn": 500,
        "auth_type": "scram-sha-256",
        "admin_users": ["admin"],
        "stats_users": ["stats"],
        "workers": 2,
    }
    gen.update(general)
    return {
        "sluice": gen,
        "databases": {
            "app": {"host": "127.0.0.1", "port": pg.port, "dbname": "app"},
        },
    }


# ---------------------------------------------------------------------------------------
# Certificates for TLS tests, made by the openssl CLI (EC P-256: fast to generate)

_CA_CONF = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXT = """\
[v3]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
{san}
"""


def openssl(d: Path, *args: str) -> None:
    r = subprocess.run(["openssl", *args], cwd=str(d), capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")


class CertAuthority:
    """A throwaway CA in directory `d`: `crt`/`key`, and leaf(name, cn, san) certificates
    (server and client use) returned as objects with .crt, .key and .cn. Keys are 0600 and,
    when running as root, owned by the PostgreSQL OS user so that PostgreSQL can read them."""

    def __init__(self, d: Path, cn: str = "Sluice Test CA"):
        self._serial = lambda: str(secrets.randbits(62))
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = cn.replace(" ", "_")
        (self.dir / f"{self.name}.cnf").write_text(_CA_CONF.format(cn=cn))
        self.crt, self.key = self.dir / f"{self.name}.crt", self.dir / f"{self.name}.key"
        openssl(self.dir, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", self.key.name,
                "-out", self.crt.name, "-days", "30", "-config", f"{self.name}.cnf",
                "-set_serial", self._serial())
        self._own(self.crt, self.key)

    def _own(self, *paths: Path) -> None:
        for p in paths:
            if p.suffix == ".key":
                os.chmod(p, 0o600)
            if is_root():
                ensure_pg_os_user()
                shutil.chown(p, PG_OS_USER, PG_OS_USER)

    def leaf(self, name: str, cn: str, san: str = ""):
        from types import SimpleNamespace
        d = self.dir
        (d / f"{name}.ext").write_text(_LEAF_EXT.format(san=f"subjectAltName = {san}" if san else ""))
        openssl(d, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", self.crt.name, "-CAkey",
                self.key.name, "-set_serial", self._serial(), "-days", "30", "-out",
                f"{name}.crt", "-extfile", f"{name}.ext", "-extensions", "v3")
        leaf = SimpleNamespace(crt=d / f"{name}.crt", key=d / f"{name}.key", cn=cn)
        self._own(leaf.crt, leaf.key)
        return leaf


def tls_client_context(ca: Path, alpn=None, cert=None) -> ssl.SSLContext:
    """A client TLS context that verifies against `ca`, offers `alpn` and presents the
    leaf certificate `cert` (a CertAuthority.leaf) when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        ctx.load_cert_chain(str(cert.crt), str(cert.key))
    return ctx


def raw_tls(port: int, ctx: ssl.SSLContext, direct: bool = False, hostname: str = "localhost",
            timeout: float = 10.0) -> "RawPg":
    """A RawPg whose socket is TLS: after SSLRequest/'S', or direct (ClientHello first)."""
    rp = RawPg("127.0.0.1", port, timeout=timeout)
    if not direct:
        assert rp.ssl_request() == b"S"
    rp.sock = ctx.wrap_socket(rp.sock, server_hostname=hostname)
    return rp
