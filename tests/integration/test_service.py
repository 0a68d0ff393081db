"""Sluice as a service, as PgBouncer users run it: `-d` with a pidfile, `-u USER` (and the
`user` setting) after binding, systemd's notification protocol for a `Type=notify` unit,
and `syslog` / `syslog_ident` / `syslog_facility`."""
from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest

import harness
from harness import DEADLINE, wait_for
from conftest import APP_PW


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child that exited) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def query_one(s, sql="SELECT 1"):
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as c:
        return c.execute(sql).fetchone()[0]


def status_ids(pid: int, key: str):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


# -- -d and the pidfile -------------------------------------------------------------------

def run_daemon(s, timeout=60):
    return subprocess.run([str(harness.sluice_bin()), "-d", str(s.config_path)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(s.dir))


def test_daemon_detaches_writes_its_pid_and_stops_on_sigterm(make_sluice):
    s = make_sluice(start=False)
    pidfile = s.dir / "sluice.pid"
    s.update(pidfile=str(pidfile), logfile=str(s.dir / "daemon.log"))
    r = run_daemon(s)
    pid = None
    try:
        # The parent exits 0 only once the daemon listens: no wait for the port needed.
        assert r.returncode == 0, (r.returncode, r.stderr)
        pid = int(pidfile.read_text())
        assert alive(pid)
        assert query_one(s, "SELECT 41 + 1") == 42
        # A session of its own, so that the terminal's hang-up does not reach it.
        assert os.getsid(pid) == pid
        assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null"
        # A second Sluice on the same pidfile is refused while the first runs.
        r2 = run_daemon(s)
        assert r2.returncode == 1, r2
        assert f"names process {pid}, which is running" in r2.stderr, r2.stderr
        os.kill(pid, signal.SIGTERM)
        assert wait_for(lambda: not alive(pid)), "the daemon did not stop on SIGTERM"
        pid = None
        assert wait_for(lambda: not pidfile.exists()), "pidfile left behind"
        assert "Sluice stopped" in (s.dir / "daemon.log").read_text()
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_daemon_needs_a_pidfile_and_a_log(make_sluice):
    s = make_sluice(start=False)
    r = run_daemon(s)
    assert r.returncode == 1 and "-d needs a pidfile" in r.stderr, r
    s.update(pidfile=str(s.dir / "x.pid"))
    r = run_daemon(s)
    assert r.returncode == 1 and "-d needs a logfile or syslog = 1" in r.stderr, r
    assert not (s.dir / "x.pid").exists()


def test_daemon_start_up_failure_is_the_parents_exit_code(make_sluice):
    """A daemon that cannot listen (the port is taken) makes `sluice -d` fail, with the
    reason on the terminal: scripts and init systems see the failure."""
    s = make_sluice(start=False)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", s.port))
        taken.listen()
        s.update(pidfile=str(s.dir / "f.pid"), logfile=str(s.dir / "f.log"))
        r = run_daemon(s)
    assert r.returncode == 1, r
    assert "cannot listen on 127.0.0.1:" in r.stderr, r.stderr
    assert not (s.dir / "f.pid").exists()


def test_stale_pidfile_is_replaced(make_sluice):
    s = make_sluice(start=False)
    pidfile = s.dir / "stale.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")
    s.update(pidfile=str(pidfile))
    s.start()
    assert int(pidfile.read_text()) == s.proc.pid


# -- -u / user ----------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@needs_root
@pytest.mark.parametrize("how", ["option", "setting"])
def test_switches_user_after_binding(make_sluice, how):
    nobody = pwd.getpwnam("nobody")
    if how == "option":
        s = make_sluice(args=["-u", "nobody"], start=False)
    else:
        s = make_sluice(user="nobody", start=False)
    s.start()
    assert wait_for(lambda: "running as user nobody" in s.log_text()), s.log_tail()
    pid = s.proc.pid
    assert status_ids(pid, "Uid") == [nobody.pw_uid] * 4
    assert status_ids(pid, "Gid") == [nobody.pw_gid] * 4
    # Every thread (workers serve the clients) runs as nobody.
    for task in Path(f"/proc/{pid}/task").iterdir():
        uid_line = next(l for l in (task / "status").read_text().splitlines()
                        if l.startswith("Uid:"))
        assert [int(x) for x in uid_line.split()[1:]] == [nobody.pw_uid] * 4, task
    assert query_one(s) == 1


def test_unknown_user_stops_the_start_up(make_sluice):
    s = make_sluice(args=["-u", "no-such-user-sluice"], start=False)
    p = subprocess.run([str(harness.sluice_bin()), *s.args, str(s.config_path)],
                       capture_output=True, text=True, timeout=60, cwd=str(s.dir))
    assert p.returncode == 1, p
    assert "cannot switch to user no-such-user-sluice: no such user" in p.stderr, p.stderr


# -- systemd notifications ----------------------------------------------------------------

def test_sd_notify_ready_reloading_stopping(make_sluice):
    s = make_sluice(start=False)
    path = s.dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(DEADLINE)
        s.env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        s.start()
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready.splitlines(), ready
        assert f"MAINPID={s.proc.pid}" in ready.splitlines(), ready
        assert query_one(s) == 1  # READY=1 came once clients are served
        s.proc.send_signal(signal.SIGHUP)
        reloading = sock.recv(4096).decode().splitlines()
        assert "RELOADING=1" in reloading, reloading
        assert any(l.startswith("MONOTONIC_USEC=") for l in reloading), reloading
        assert sock.recv(4096).decode().splitlines() == ["READY=1"]
        s.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert s.wait(DEADLINE) == 0


# -- syslog -------------------------------------------------------------------------------

@pytest.fixture
def dev_log():
    """A datagram socket at /dev/log, where syslog(3) writes. Only where none exists and
    we may create it (root in CI's container): the machine's own syslog is never touched."""
    if os.path.exists("/dev/log") or os.path.islink("/dev/log"):
        pytest.skip("/dev/log exists: it belongs to this machine's syslog")
    if not os.access("/dev", os.W_OK):
        pytest.skip("/dev is not writable (not root)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    sock.settimeout(DEADLINE)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink("/dev/log")


def test_syslog_with_ident_and_facility(make_sluice, dev_log):
    s = make_sluice(syslog=1, syslog_ident="sluice-eu", syslog_facility="local3")
    query_one(s)
    pid = s.proc.pid
    lines = []

    def got_login():
        lines.append(dev_log.recv(8192).decode())
        return any("login attempt: db=app user=app" in l for l in lines)

    assert wait_for(got_login), lines
    line = next(l for l in lines if "login attempt" in l)
    # <PRI>: facility local3 (19) * 8 + severity info (6); then ident[pid].
    assert line.startswith("<158>"), line
    assert f"sluice-eu[{pid}]: " in line, line
