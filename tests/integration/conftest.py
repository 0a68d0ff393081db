"""Fixtures: one PostgreSQL and one Redis per session, a Sluice factory per test.

    /usr/bin/python3 -m pytest tests/integration -q

Environment: SLUICE_BIN overrides build/sluice; SLUICE_KEEP_TMP=1 keeps the temp dirs;
SLUICE_TEST_TIMEOUT sets the per-test time limit in seconds (default 90); SLUICE_LOG_DIR
keeps a copy of every Sluice log there, named after its test (scripts/test.sh collects
sanitizer reports from it).
"""
from __future__ import annotations

import faulthandler
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Postgres, Redis, Sluice, deep_merge, default_config  # noqa: E402

APP_PW = "app_pw"
MD5_PW = "md5_pw"
ADMIN_PW = "admin_pw"
STATS_PW = "stats_pw"

DEFAULT_USERS = {"app": APP_PW, "md5user": MD5_PW, "admin": ADMIN_PW, "stats": STATS_PW}

TEST_TIMEOUT = float(os.environ.get("SLUICE_TEST_TIMEOUT", "90"))
LOG_DIR = os.environ.get("SLUICE_LOG_DIR")


def keep_log(s: Sluice, nodeid: str) -> None:
    """Copies a stopped Sluice's log to SLUICE_LOG_DIR as <test>-<sluiceN>.log."""
    if not LOG_DIR or not s.log.exists():
        return
    dest = Path(LOG_DIR)
    dest.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    shutil.copyfile(s.log, dest / f"{name}-{s.dir.name}.log")


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit")


# -- per-test time limit (pytest-timeout is not installed here) --------------------------

class TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _time_limit(request):
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker else TEST_TIMEOUT

    def on_alarm(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise TestTimeout(f"test exceeded {limit}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# -- services ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def workdir():
    return harness.make_tempdir("sluice-it-")


@pytest.fixture(scope="session")
def pg(workdir):
    p = Postgres(base=workdir)
    p.start()
    p.create_role("app", APP_PW)
    p.create_role("md5user", MD5_PW, md5=True)
    p.create_role("admin", ADMIN_PW)
    p.create_role("stats", STATS_PW)
    p.create_database("app", owner="app")
    p.psql("GRANT ALL ON SCHEMA public TO md5user", db="app")
    try:
        yield p
    finally:
        p.stop("fast")


@pytest.fixture(scope="session")
def redis(workdir):
    r = Redis(base=workdir)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def pgbench_db(pg):
    """pgbench tables (scale 1) in database app, owned by app, made once."""
    pg.pgbench_init("app", "app", scale=1)
    return pg


@pytest.fixture
def make_sluice(pg, workdir, request):
    """make_sluice(users=None, userlist=None, args=(), config=None, start=True, **general)

    Starts a Sluice in front of `pg`: session mode, default_pool_size 5, auth_type
    scram-sha-256, userlist with plaintext passwords, database app -> pg. Keyword
    arguments override settings of the `sluice:` section; `config` is deep-merged into the
    whole model (a None value deletes a key)."""
    started = []

    def factory(users=None, userlist=None, args=(), config=None, start=True, **general):
        cfg = default_config(pg, **general)
        if config:
            cfg = deep_merge(cfg, config)
        s = Sluice(cfg, users=DEFAULT_USERS if users is None else users, base=workdir,
                   args=args, userlist=userlist)
        started.append(s)
        if start:
            s.start()
        return s

    yield factory

    failed = getattr(request.node, "rep_call", None)
    failed = failed is not None and failed.failed
    problems = []
    for s in started:
        s.stop()
        problems += s.problems()
        keep_log(s, request.node.nodeid)
        if failed or problems:
            print(f"\n----- sluice log {s.log} (tail) -----\n{s.log_tail(60)}")
    if failed:
        print(f"\n----- postgres log (tail) -----\n{harness.tail(pg.log, 30)}")
    if problems and not failed:
        # A test that passed while Sluice crashed (or a sanitizer complained) is a failure.
        pytest.fail("sluice crashed or reported memory/UB errors:\n" + "\n".join(problems[:20]))


@pytest.fixture
def sluice(make_sluice):
    return make_sluice()
