"""Issue 4: the admin console (PgBouncer's SHOW and control commands) and /metrics.

Every SHOW is compared with PgBouncer's column list (names and order); control commands
are checked by their effect on real clients (pgbench, psycopg) and real PostgreSQL.
"""
from __future__ import annotations

import csv
import io
import re
import signal
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

import psycopg
import psycopg.errors
import pytest

import harness
from harness import DEADLINE, wait_for
from harness import PgError, RawPg, message
from conftest import ADMIN_PW, APP_PW, STATS_PW

PSQL = str(harness.PG_BIN / "psql")

# Deadline for anything a test waits on: generous, so that a slow or loaded machine
# (sanitizer builds, two shared cores) changes how long a test runs, never its verdict.


# PgBouncer 1.25's columns, in order (shared/reference/pgbouncer-compat.md).
STATS_FIELDS = ["server_assignment_count", "xact_count", "query_count", "bytes_received",
                "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                "server_parse_count", "bind_count", "client_login_count"]
CONN_COLUMNS = ["type", "user", "database", "replication", "state", "addr", "port", "local_addr",
                "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed",
                "ptr", "link", "remote_pid", "tls", "application_name", "prepared_statements",
                "id"]
EXPECTED_COLUMNS = {
    "POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
              "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
              "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
              "pool_mode", "load_balance_hosts"],
    "STATS": ["database", "total_server_assignment_count", "total_xact_count",
              "total_query_count", "total_received", "total_sent", "total_xact_time",
              "total_query_time", "total_wait_time", "total_client_parse_count",
              "total_server_parse_count", "total_bind_count", "total_client_login_count",
              "avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv",
              "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
              "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count",
              "avg_client_login_count"],
    "STATS_TOTALS": ["database"] + STATS_FIELDS,
    "STATS_AVERAGES": ["database"] + STATS_FIELDS,
    "TOTALS": ["name", "value"],
    "CLIENTS": CONN_COLUMNS,
    # Sluice's own columns come after all of PgBouncer's, so that tools reading PgBouncer's
    # by position or by name see them unchanged: each server's role (primary/standby),
    # and for each database how its hosts are chosen and what each turned out to be.
    "SERVERS": CONN_COLUMNS + ["role"],
    "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                  "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
                  "max_connections", "current_connections", "max_client_connections",
                  "current_client_connections", "paused", "disabled",
                  "target_session_attrs", "host_roles"],
    "USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
              "current_connections", "max_user_client_connections",
              "current_client_connections"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "LISTS": ["list", "items"],
    "STATE": ["key", "value"],
    "VERSION": ["version"],
    "MEM": ["name", "size", "used", "free", "memtotal"],
    "SOCKETS": CONN_COLUMNS + ["recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain",
                               "pkt_avail", "send_avail"],
}
EXPECTED_COLUMNS["ACTIVE_SOCKETS"] = EXPECTED_COLUMNS["SOCKETS"]


# ---------------------------------------------------------------------------------------
# helpers

def run_thread(fn):
    """fn() in a daemon thread: (thread, box), box["result"] or box["error"] once done."""
    box = {}

    def wrap():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=wrap, daemon=True)
    t.start()
    return t, box


def admin_conn(s, user="admin", password=None, db="sluice"):
    """psycopg connection to the console. The console speaks only the simple query
    protocol: psycopg 3 uses it for queries without parameters on a non-prepared cursor."""
    if password is None:
        password = {"admin": ADMIN_PW, "stats": STATS_PW}.get(user, "")
    return psycopg.connect(s.dsn(user, password, db), autocommit=True, prepare_threshold=None)


def show(conn, what):
    """(column names, rows as dicts) of SHOW what."""
    cur = conn.execute(f"SHOW {what}")
    cols = [d.name for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return cols, rows


def console_psql(s, sql, user="admin", password=ADMIN_PW, db="sluice", csv_out=True):
    args = [PSQL, "-X", "-h", "127.0.0.1", "-p", str(s.port), "-U", user, "-d", db,
            "-v", "ON_ERROR_STOP=1", "-c", sql]
    if csv_out:
        args.insert(1, "--csv")
    return subprocess.run(args, capture_output=True, text=True, timeout=30,
                          env=harness.client_env(password))


def console_error(s, sql, user="admin"):
    with admin_conn(s, user) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        return ei.value


def stat_row(conn, db="app"):
    _, rows = show(conn, "STATS")
    return next(r for r in rows if r["database"] == db)


def pool_row(conn, db="app"):
    _, rows = show(conn, "POOLS")
    return next((r for r in rows if r["database"] == db), {})


def clients_of(conn, db="app"):
    return [r for r in show(conn, "CLIENTS")[1] if r["database"] == db]


def settle(conn, db="app"):
    """Waits until every client of `db` has left Sluice (a session is removed only after
    its last transaction was counted): the counters then hold all of a finished run."""
    assert wait_for(lambda: not clients_of(conn, db)), clients_of(conn, db)


def pgbench(s, args, user="app", password=APP_PW, db="app", timeout=120):
    return harness.pgbench(args, "127.0.0.1", s.port, user, password, db, timeout=timeout)


def metrics_text(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def metric_value(text, name, **labels):
    from prometheus_client.parser import text_string_to_metric_families
    total = 0.0
    found = False
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                total += smp.value
                found = True
    assert found, f"no sample {name} {labels}"
    return total


# ---------------------------------------------------------------------------------------
# Access


def test_every_show_has_pgbouncer_columns(make_sluice):
    s = make_sluice()
    # some traffic so that pools, servers and clients exist
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as app:
        app.execute("SELECT 1")
        with admin_conn(s) as c:
            for what, expected in EXPECTED_COLUMNS.items():
                cols, rows = show(c, what)
                assert cols == expected, what
            _, clients = show(c, "CLIENTS")
            assert {r["database"] for r in clients} >= {"app", "sluice"}
            _, servers = show(c, "SERVERS")
            assert len(servers) == 1 and servers[0]["database"] == "app"
            assert servers[0]["link"] in {r["ptr"] for r in clients}


@pytest.mark.parametrize("db", ["sluice", "pgbouncer"])
def test_psql_console_and_alias(make_sluice, db):
    s = make_sluice()
    for what, expected in EXPECTED_COLUMNS.items():
        r = console_psql(s, f"SHOW {what}", db=db)
        assert r.returncode == 0, r.stderr
        header = next(csv.reader(io.StringIO(r.stdout)))
        assert header == expected, what
    r = console_psql(s, "SHOW VERSION", db=db)
    version_line = subprocess.run([str(harness.sluice_bin()), "--version"], capture_output=True,
                                  text=True, timeout=10).stdout.splitlines()[0]
    assert list(csv.reader(io.StringIO(r.stdout)))[1] == [version_line]


def test_show_help_and_unknown_commands(make_sluice):
    s = make_sluice()
    r = console_psql(s, "SHOW HELP", csv_out=False)
    assert r.returncode == 0
    assert "SHOW" in r.stderr and "PAUSE" in r.stderr  # a NOTICE, as PgBouncer
    for bad in ["SHOW NOTHING_LIKE_THIS", "FROBNICATE", "PAUSE a b", "KILL_CLIENT abc",
                "SELECT 1"]:
        e = console_error(s, bad)
        assert e.sqlstate == "42601", bad
        assert "SHOW HELP" in (e.diag.message_hint or ""), bad


def test_ordinary_user_cannot_enter_console(make_sluice):
    s = make_sluice()
    for db in ["sluice", "pgbouncer"]:
        c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        try:
            with pytest.raises(PgError) as ei:
                c.login("app", APP_PW, db)
            assert ei.value.sqlstate == "28000"
        finally:
            c.close()
    # wrong password for an admin: refused like any login
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        with pytest.raises(PgError) as ei:
            c.login("admin", "wrong", "sluice")
        assert ei.value.sqlstate == "28P01"
    finally:
        c.close()


def test_stats_user_is_read_only(make_sluice):
    s = make_sluice()
    with admin_conn(s, "stats") as c:
        cols, _ = show(c, "POOLS")
        assert cols == EXPECTED_COLUMNS["POOLS"]
        for cmd in ["PAUSE", "PAUSE app", "RESUME", "RELOAD", "KILL app", "SHUTDOWN",
                    "DISABLE app", "SET default_pool_size = 7", "SUSPEND", "RECONNECT"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(cmd)
        _, state = show(c, "STATE")
        assert {r["key"]: r["value"] for r in state}["paused"] == "no"
        _, cfg = show(c, "CONFIG")
        assert {r["key"]: r["value"] for r in cfg}["default_pool_size"] == "5"
    assert s.alive()


def test_driver_parameters_and_extended_protocol(make_sluice):
    s = make_sluice()
    with admin_conn(s) as c:
        c.execute("SET extra_float_digits = 3")
        c.execute("SET application_name = 'tool'")
        assert c.execute("SHOW server_version").fetchone()[0].startswith("15")
        assert c.execute("SHOW transaction isolation level").fetchone()[0] == "read committed"
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute("SHOW no_such_parameter")
        # several commands in one query: every result comes back
        cur = c.execute("SHOW VERSION; SHOW STATE")
        assert [d.name for d in cur.description] == ["version"]
        assert cur.nextset()
        assert [d.name for d in cur.description] == ["key", "value"]
    # the extended protocol: one clear error, then the session is still usable
    raw = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        raw.login("admin", ADMIN_PW, "sluice")
        raw.send(message(b"P", b"\0SHOW POOLS\0\0\0") + message(b"B", b"\0\0\0\0\0\0\0\0")
                 + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        kinds, err = [], None
        while True:
            kind, body = raw.read_msg()
            kinds.append(kind)
            if kind == b"E":
                err = harness.parse_error_fields(body)
            if kind == b"Z":
                break
        assert kinds == [b"E", b"Z"]
        assert err["C"] == "08P01" and "simple query" in err["M"]
        rows, err = raw.query("SHOW VERSION")
        assert err is None and rows[0][0].startswith("Sluice ")
    finally:
        raw.terminate()


# ---------------------------------------------------------------------------------------
# Stats


@pytest.mark.timeout(120)
def test_stats_grow_with_pgbench(make_sluice, pgbench_db):
    s = make_sluice(pool_mode="transaction", stats_period=1)
    # pgbench runs a couple of set-up queries of its own besides the -t transactions: two
    # runs that differ only in -t must differ by exactly that many transactions.
    deltas = []
    for n in (10, 60):
        with admin_conn(s) as c:
            settle(c)
            before = stat_row(c)
        r = pgbench(s, ["-n", "-c", "4", "-t", str(n), "-S"])
        assert r.returncode == 0, r.stderr
        assert harness.parse_pgbench(r.stdout)["processed"] == 4 * n
        with admin_conn(s) as c:
            settle(c)
            after = stat_row(c)
        deltas.append(after["total_xact_count"] - before["total_xact_count"])
    assert deltas[1] - deltas[0] == 4 * 50
    assert 4 * 10 <= deltas[0] <= 4 * 10 + 5
    with admin_conn(s) as c:
        after = stat_row(c)
        # -S: one SELECT per transaction, plus pgbench's own setup queries
        assert after["total_query_count"] - before["total_query_count"] >= 200
        assert after["total_received"] > before["total_received"]
        assert after["total_sent"] > before["total_sent"]
        assert after["total_xact_time"] > before["total_xact_time"]
        # pgbench logs in once for its set-up queries, then once per client
        assert after["total_client_login_count"] - before["total_client_login_count"] == 5
        _, totals = show(c, "STATS_TOTALS")
        assert next(t for t in totals if t["database"] == "app")["xact_count"] == \
            after["total_xact_count"]
        _, tot = show(c, "TOTALS")
        assert {t["name"]: t["value"] for t in tot}["total_xact_count"] == after["total_xact_count"]
        _, lat = show(c, "LATENCY")
        row = next(x for x in lat if x["database"] == "app")
        assert row["xact_count"] >= 200
        assert 0 < row["xact_p50"] <= row["xact_p90"] <= row["xact_p99"] <= row["xact_p99_9"]
    # Averages are recomputed every stats_period (1 s here): with traffic going on, the
    # app row of STATS_AVERAGES and the periodic log line show a nonzero rate (an empty
    # STATS_AVERAGES used to pass, and both were looked at once after a 2.5 s sleep).
    stop = threading.Event()

    def traffic():
        with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a:
            while not stop.is_set():
                a.execute("SELECT 1")
                stop.wait(0.01)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        with admin_conn(s) as c:
            def averaged():
                avg = next((a for a in show(c, "STATS_AVERAGES")[1] if a["database"] == "app"),
                           None)
                return avg is not None and avg["xact_count"] > 0 and avg["query_count"] > 0
            assert wait_for(averaged), show(c, "STATS_AVERAGES")[1]
            cols, avgs = show(c, "STATS_AVERAGES")
            assert cols == EXPECTED_COLUMNS["STATS_AVERAGES"]
        assert wait_for(lambda: re.search(r"\[app\] stats: [1-9][0-9]* xacts/s",
                                          s.log_text())), s.log_tail()
    finally:
        stop.set()
        t.join(DEADLINE)
    assert not t.is_alive()


# ---------------------------------------------------------------------------------------
# Control


@pytest.mark.timeout(150)
def test_pause_holds_pgbench_and_resume_continues(make_sluice, pgbench_db):
    s = make_sluice(pool_mode="transaction", default_pool_size=2, query_wait_timeout=60)
    result = {}

    def bench():
        result["r"] = pgbench(s, ["-n", "-c", "4", "-T", "8", "-S"], timeout=120)

    with admin_conn(s) as c:
        t = threading.Thread(target=bench, daemon=True)
        t.start()
        # PAUSE once pgbench is seen running its transactions (was: after a 2 s sleep,
        # which on a slow machine may be before pgbench got going).
        assert wait_for(lambda: (lambda r: r and r["total_xact_count"] >= 20)(
            next((x for x in show(c, "STATS")[1] if x["database"] == "app"), None))), \
            show(c, "STATS")[1]
        c.execute("PAUSE")  # returns once no server is active
        assert pool_row(c)["sv_active"] == 0
        xacts = stat_row(c)["total_xact_count"]
        # pgbench's clients queue up (seen, not assumed) ...
        assert wait_for(lambda: pool_row(c)["cl_waiting"] > 0), pool_row(c)
        # ... and over a while (time for anything wrongly let through to show) nothing runs.
        time.sleep(1.5)
        assert stat_row(c)["total_xact_count"] == xacts  # held
        assert pool_row(c)["cl_waiting"] > 0
        assert {r["key"]: r["value"] for r in show(c, "STATE")[1]}["paused"] == "yes"
        c.execute("RESUME")
    t.join(120)
    assert not t.is_alive(), "pgbench did not finish after RESUME"
    r = result["r"]
    assert r.returncode == 0, r.stdout + r.stderr
    res = harness.parse_pgbench(r.stdout)
    assert res.get("failed", 0) == 0
    assert res["processed"] > 0
    with admin_conn(s) as c:
        assert stat_row(c)["total_xact_count"] > xacts


def test_pause_database_and_new_pools_wait(make_sluice):
    s = make_sluice(pool_mode="transaction", query_wait_timeout=30)
    with admin_conn(s) as c:
        c.execute("PAUSE app")
        _, dbs = show(c, "DATABASES")
        assert next(d for d in dbs if d["name"] == "app")["paused"] == 1
        done = {}

        def query():
            with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a:
                done["v"] = a.execute("SELECT 7").fetchone()[0]

        t = threading.Thread(target=query, daemon=True)
        t.start()
        # The client is queued on its (new) pool, which is paused: seen in SHOW POOLS
        # (was assumed after a 1 s sleep), then kept waiting for a while.
        assert wait_for(lambda: pool_row(c).get("cl_waiting") == 1), show(c, "POOLS")[1]
        t.join(1.0)
        assert "v" not in done  # its (new) pool is paused
        assert pool_row(c).get("cl_waiting") == 1
        c.execute("RESUME app")
        t.join(DEADLINE)
        assert not t.is_alive(), "the client was not served after RESUME app"
        assert done.get("v") == 7


def test_reload_picks_up_pool_size_and_reports_broken_file(make_sluice):
    s = make_sluice()
    with admin_conn(s) as c:
        s.update(default_pool_size=9)
        c.execute("RELOAD")
        _, cfg = show(c, "CONFIG")
        assert {r["key"]: r["value"] for r in cfg}["default_pool_size"] == "9"
        _, dbs = show(c, "DATABASES")
        assert next(d for d in dbs if d["name"] == "app")["pool_size"] == 9

        good = s.config_path.read_text()
        s.config_path.write_text(good + "\nsluice_typo: [unclosed\n")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("RELOAD")
        assert ei.value.sqlstate == "F0000"
        assert ei.value.diag.message_primary == "RELOAD failed, see logs for additional details"
        assert "sluice.yaml" in (ei.value.diag.message_detail or "")
        s.config_path.write_text(good.replace("default_pool_size: 9", "default_pool_size: 3")
                                 + "\nnot_a_setting: 1\n")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("RELOAD")
        assert ei.value.sqlstate == "F0000"
        _, cfg = show(c, "CONFIG")
        assert {r["key"]: r["value"] for r in cfg}["default_pool_size"] == "9"  # unchanged
    assert s.alive()


def test_set_changes_a_setting(make_sluice):
    s = make_sluice()
    with admin_conn(s) as c:
        c.execute("SET default_pool_size = 11")
        c.execute("SET query_wait_timeout = '30s'")
        cfg = {r["key"]: r for r in show(c, "CONFIG")[1]}
        assert cfg["default_pool_size"]["value"] == "11"
        assert cfg["default_pool_size"]["default"] == "20"
        assert cfg["query_wait_timeout"]["value"] == "30"
        assert cfg["listen_port"]["changeable"] == "no"
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SET default_pool_size = lots")
        assert ei.value.sqlstate == "22023"
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SET listen_port = 1")
        assert ei.value.sqlstate == "55P02"
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SET no_such_setting = 1")
        assert ei.value.sqlstate == "42704"
        assert next(d for d in show(c, "DATABASES")[1] if d["name"] == "app")["pool_size"] == 11


def test_connection_ids_are_unique_across_clients_and_servers(make_sluice):
    """As PgBouncer: SHOW CLIENTS lists the console connection itself, and one id names one
    connection whether it is a client's or a server's, newer ones with larger ids."""
    s = make_sluice()
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a:
        a.execute("SELECT 1")
        with admin_conn(s) as c:
            clients = show(c, "CLIENTS")[1]
            servers = show(c, "SERVERS")[1]
            assert any(r["database"] == "sluice" and r["user"] == "admin" for r in clients), clients
            ids = [r["id"] for r in clients + servers]
            assert len(ids) == len(set(ids)) >= 3, (clients, servers)
            app_client = next(r for r in clients if r["database"] == "app")
            console = next(r for r in clients if r["database"] == "sluice")
            server = next(r for r in servers if r["database"] == "app")
            # The client logged in, then its server was made, then the console connected.
            assert app_client["id"] < server["id"] < console["id"], (clients, servers)


def test_prepared_statements_columns(make_sluice):
    """SHOW CLIENTS and SHOW SERVERS count the prepared statements Sluice tracks in
    transaction mode: the client's names, and those that exist on each server."""
    s = make_sluice(pool_mode="transaction")
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a, admin_conn(s) as c:
        for i in range(3):
            a.execute(f"SELECT {i} + %s", (1,), prepare=True)  # three named statements
        me = next(r for r in show(c, "CLIENTS")[1] if r["database"] == "app")
        assert me["prepared_statements"] == 3, me
        servers = [r for r in show(c, "SERVERS")[1] if r["database"] == "app"]
        assert sum(r["prepared_statements"] for r in servers) == 3, servers
        console = next(r for r in show(c, "CLIENTS")[1] if r["database"] == "sluice")
        assert console["prepared_statements"] == 0


def test_show_sockets_and_active_sockets(make_sluice):
    """SOCKETS lists every client and server connection; ACTIVE_SOCKETS only those at work
    (a client in a transaction and its server, the console running the SHOW)."""
    s = make_sluice(pool_mode="transaction")  # an idle client then holds no server
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as busy, \
            psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as idle, \
            admin_conn(s) as c:
        busy.execute("BEGIN")
        busy.execute("SELECT 1")
        idle.execute("SELECT 1")
        _, every = show(c, "SOCKETS")
        ids = {(r["type"], r["id"]) for r in every}
        clients = {r["id"] for r in show(c, "CLIENTS")[1]}
        servers = {r["id"] for r in show(c, "SERVERS")[1]}
        assert ids == {("C", i) for i in clients} | {("S", i) for i in servers}, every
        _, active = show(c, "ACTIVE_SOCKETS")
        assert {r["state"] for r in active} <= {"active", "waiting"}, active
        busy_row = next(r for r in show(c, "CLIENTS")[1]
                        if r["database"] == "app" and r["state"] == "active")
        assert busy_row["id"] in {r["id"] for r in active if r["type"] == "C"}
        assert len([r for r in active if r["type"] == "C" and r["database"] == "app"]) == 1
        assert all(r["recv_pos"] is None for r in every)  # not sampled (README)


def test_kill_drops_database_clients(make_sluice):
    s = make_sluice()
    clients = [psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) for _ in range(3)]
    try:
        for a in clients:
            a.execute("SELECT 1")
        with admin_conn(s) as c:
            c.execute("KILL app")
            for a in clients:
                with pytest.raises(psycopg.OperationalError):
                    a.execute("SELECT 1")
            assert wait_for(lambda: not clients_of(c)), clients_of(c)
            # the console itself survives; as PgBouncer, the database stays paused: a new
            # client logs in and waits until RESUME.
            assert show(c, "VERSION")[1]
            assert next(d for d in show(c, "DATABASES")[1] if d["name"] == "app")["paused"] == 1
            late = psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True)
            try:
                t, box = run_thread(lambda: late.execute("SELECT 5").fetchone()[0])
                assert wait_for(lambda: pool_row(c).get("cl_waiting") == 1), pool_row(c)
                assert t.is_alive()
                c.execute("RESUME app")
                t.join(DEADLINE)
                assert box.get("result") == 5, box
            finally:
                late.close()
    finally:
        for a in clients:
            a.close()


def test_kill_client_disable_enable_reconnect_wait_close(make_sluice):
    s = make_sluice()
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a, admin_conn(s) as c:
        a.execute("SELECT 1")
        pid_before = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        me = next(r for r in show(c, "CLIENTS")[1] if r["database"] == "app")
        c.execute(f"KILL_CLIENT {me['id']}")
        with pytest.raises(psycopg.OperationalError):
            a.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("KILL_CLIENT 999999")
        assert (ei.value.sqlstate, ei.value.diag.message_primary) == ("08P01", "client not found")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("KILL_CLIENT x1")
        assert "invalid client pointer supplied" in ei.value.diag.message_primary
        c.execute("DISABLE app")
        assert next(d for d in show(c, "DATABASES")[1] if d["name"] == "app")["disabled"] == 1
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(s.dsn("app", APP_PW, "app"))
        c.execute("ENABLE app")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("DISABLE nosuchdb")
        assert (ei.value.sqlstate, ei.value.diag.message_primary) == \
            ("08P01", "no such database: nosuchdb")
    a = psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True)
    with admin_conn(s) as c:
        pid1 = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.execute("RECONNECT app")
        assert any(r["close_needed"] == 1 for r in show(c, "SERVERS")[1])
        # session mode: the server is closed when `a` releases it, i.e. disconnects
        threading.Timer(1.0, a.close).start()
        t0 = time.monotonic()
        c.execute("WAIT_CLOSE app")
        assert time.monotonic() - t0 >= 0.9
        assert not any(r["close_needed"] == 1 for r in show(c, "SERVERS")[1])
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a:
        assert a.execute("SELECT pg_backend_pid()").fetchone()[0] not in (pid1, pid_before)


# workers 1: the only worker accepts its own connections (no main-thread hand-off)
@pytest.mark.parametrize("workers", [1, 2])
def test_shutdown(make_sluice, workers):
    s = make_sluice(workers=workers)
    with admin_conn(s) as c:
        c.execute("SHUTDOWN")
    rc = s.wait(DEADLINE)
    assert rc is not None, f"sluice still running {DEADLINE} s after SHUTDOWN"
    assert rc == 0, f"exit code {rc}"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_console_during_shutdown_and_a_second_signal(make_sluice, sig, workers):
    """During a graceful shutdown the console answers SHOW (to watch the drain) but
    refuses other commands, RESUME included, with PgBouncer's 08P01 "pooler is shutting
    down"; the same signal again exits at once although a client still holds a server.
    With one worker, that worker also holds the listeners."""
    s = make_sluice(workers=workers)
    # Closed by hand: a `with` block would send COMMIT to a Sluice that has exited.
    app = psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True)
    c = admin_conn(s)
    try:
        app.execute("BEGIN")
        app.execute("SELECT 1")  # holds its server: neither SIGTERM nor SIGINT ends yet
        s.proc.send_signal(sig)
        assert wait_for(lambda: "waiting for" in s.log_text()), s.log_tail()
        for cmd in ["RESUME", "PAUSE", "RELOAD", "KILL app", "SET default_pool_size = 3"]:
            with pytest.raises(psycopg.Error) as ei:
                c.execute(cmd)
            assert ei.value.sqlstate == "08P01", (cmd, ei.value.sqlstate)
            assert "pooler is shutting down" in str(ei.value), (cmd, str(ei.value))
        assert pool_row(c)["cl_active"] == 1  # SHOW still answers
        assert s.proc.poll() is None, "exited while a client held its server"
        s.proc.send_signal(sig)
        rc = s.wait(DEADLINE)
    finally:
        app.close()
        c.close()
    assert rc == 0, f"a second {sig.name} did not end Sluice within {DEADLINE} s: {rc}"
    assert "during shutdown: exiting now" in s.log_text()


def test_suspend_and_resume(make_sluice):
    s = make_sluice(pool_mode="transaction")
    with admin_conn(s) as c:
        c.execute("SUSPEND")
        state = {r["key"]: r["value"] for r in show(c, "STATE")[1]}
        assert state == {"active": "no", "paused": "yes", "suspended": "yes"}
        c.execute("RESUME")
        state = {r["key"]: r["value"] for r in show(c, "STATE")[1]}
        assert state == {"active": "yes", "paused": "no", "suspended": "no"}
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as a:
        assert a.execute("SELECT 1").fetchone()[0] == 1


# ---------------------------------------------------------------------------------------
# Prometheus


@pytest.mark.timeout(120)
def test_metrics_parse_and_agree_with_show_stats(make_sluice, pgbench_db):
    from prometheus_client.parser import text_string_to_metric_families
    port = harness.free_port()
    s = make_sluice(pool_mode="transaction", metrics_listen=f"127.0.0.1:{port}")
    assert harness.wait_port(port, DEADLINE)
    r = pgbench(s, ["-n", "-c", "3", "-t", "40", "-S"])
    assert r.returncode == 0, r.stderr
    with admin_conn(s) as c:
        settle(c)  # pgbench's sessions are over, so both views below see all of its run
    text = metrics_text(port)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ["sluice_client_connections", "sluice_server_connections", "sluice_transactions",
                 "sluice_queries", "sluice_received_bytes", "sluice_sent_bytes",
                 "sluice_wait_seconds", "sluice_pool_size", "sluice_errors",
                 "sluice_query_duration_seconds", "sluice_transaction_duration_seconds",
                 "sluice_wait_duration_seconds"]:
        assert name in families, name
    assert families["sluice_transactions"].type == "counter"
    assert families["sluice_query_duration_seconds"].type == "histogram"
    with admin_conn(s) as c:
        st = stat_row(c)
    assert metric_value(text, "sluice_transactions_total", database="app") == st["total_xact_count"]
    assert metric_value(text, "sluice_queries_total", database="app") == st["total_query_count"]
    assert metric_value(text, "sluice_received_bytes_total", database="app") == st["total_received"]
    assert st["total_xact_count"] >= 120
    count = metric_value(text, "sluice_transaction_duration_seconds_count", database="app")
    inf = metric_value(text, "sluice_transaction_duration_seconds_bucket", database="app", le="+Inf")
    assert count == inf == st["total_xact_count"]
    assert metric_value(text, "sluice_pool_size", database="app") == 5
    # other paths
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
    assert ei.value.code == 404


def test_console_outlives_client_login_timeout(make_sluice):
    s = make_sluice(client_login_timeout=1)
    with admin_conn(s) as c:
        t0 = time.monotonic()
        # A client that never finishes its startup, opened after the console logged in:
        # once client_login_timeout has closed it, a timer started for the console would
        # have fired too (a bare 2 s sleep did not show that the timeout had come).
        probe = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        try:
            probe.send(struct.pack("!I", 100))  # promise 100 bytes, send 4
            msgs = probe.read_until_close(timeout=DEADLINE)
        finally:
            probe.close()
        assert [k for k, _ in msgs] == [b"E"], msgs
        assert "client_login_timeout" in harness.parse_error_fields(msgs[0][1])["M"], msgs
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # and at least as long as before
        assert show(c, "VERSION")[1]


def test_show_mem_counts_what_is_really_held(make_sluice):
    """SHOW MEM's buffer and relay rows are counted where memory is taken and given back:
    idle clients hold no relay scratch and no I/O buffer; a client whose query is running
    holds one scratch, given back when it ends."""
    s = make_sluice(pool_mode="transaction", default_pool_size=2)
    clients = [psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) for _ in range(30)]
    try:
        for c in clients:
            assert c.execute("SELECT 1").fetchone() == (1,)
        with admin_conn(s) as a:
            def mem():
                return {r["name"]: r for r in show(a, "MEM")[1]}

            # Every client is idle: nothing held (the console's own read holds no scratch).
            m = wait_for(lambda: (lambda m: m if m["relay_scratch"]["used"] == 0 else None)(mem()),
                         timeout=DEADLINE)
            assert m, mem()
            assert m["client_cache"]["used"] == 31, m  # 30 clients and this console
            # Idle clients and idle servers hold no buffer block (blocks wait on free lists);
            # the one in use is this console's, reading the command it answers.
            assert m["iobuf_cache"]["used"] == 1, m
            assert m["relay_scratch"]["size"] > 0, m
            assert m["iobuf_cache"]["memtotal"] == \
                (1 + m["iobuf_cache"]["free"]) * m["iobuf_cache"]["size"], m
            # The allocator's own account: at least what the rows above hold is in use.
            heap = m["heap"]
            assert heap["size"] == 1 and heap["memtotal"] == heap["used"] + heap["free"], heap
            assert heap["used"] >= m["client_cache"]["memtotal"] + m["relay_scratch"]["memtotal"], m

            # A query in progress: its reply is due, the relay holds its request storage.
            t, box = run_thread(lambda: clients[0].execute("SELECT pg_sleep(3)").fetchone())
            held = wait_for(lambda: mem()["relay_scratch"]["used"] == 1, timeout=DEADLINE)
            assert held, mem()
            t.join(DEADLINE)
            assert box.get("error") is None, box
            assert wait_for(lambda: mem()["relay_scratch"]["used"] == 0, timeout=DEADLINE), mem()

            # A client that leaves while its reply is due: the storage goes with the
            # session, and is not counted as held any more.
            raw = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
            raw.login("app", APP_PW, "app")
            raw.send(message(b"Q", b"SELECT pg_sleep(3)\0"))
            assert wait_for(lambda: mem()["relay_scratch"]["used"] == 1, timeout=DEADLINE), mem()
            raw.close()
            assert wait_for(lambda: mem()["relay_scratch"]["used"] == 0, timeout=DEADLINE), mem()
    finally:
        for c in clients:
            c.close()
