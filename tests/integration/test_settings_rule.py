"""The settings rule, end to end: `sluice --check` refuses a setting Sluice does not support
with FILE:LINE:COL (exit 1), names the settings that have no effect in one warning (exit 0),
and the same warning is logged at start-up. Then the settings that only a parser test named
before, each exercised against a running Sluice (tests/unit/config/settings_rule_test.cpp
asks for a test per implemented setting)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import threading
import subprocess
from pathlib import Path

import psycopg
import pytest

import harness
from harness import DEADLINE, PgError, RawPg, SYNC, m_parse, message, startup_packet, wait_for

WARNING = ('settings with no effect in Sluice: {} (see README "Settings with no effect")')


def check(path: Path, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.sluice_bin()), "--check", str(path)], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


@pytest.fixture
def tmp():
    return harness.make_tempdir("sluice-rule-")


# -- --check ------------------------------------------------------------------------------

def test_check_refuses_an_unsupported_setting_with_its_position(tmp):
    ini = tmp / "pgbouncer.ini"
    ini.write_text("[databases]\n"
                   "app = host=127.0.0.1 port=5432 dbname=app\n"
                   "\n"
                   "[pgbouncer]\n"
                   "listen_port = 6432\n"
                   "  unix_socket_group = postgres\n")
    r = check(ini)
    assert r.returncode == 1, r
    assert f"{ini}:6:3: setting unix_socket_group is not supported: " in r.stderr, r.stderr
    assert "configuration is valid" not in r.stdout


def test_check_reports_every_refused_setting(tmp):
    ini = tmp / "pgbouncer.ini"
    ini.write_text("[databases]\n"
                   "app = host=127.0.0.1 connect_query='SELECT 1'\n"
                   "[pgbouncer]\n"
                   "unix_socket_group = postgres\n"
                   "tcp_socket_buffer = 65536\n"
                   "disable_pqexec = 1\n")
    r = check(ini)
    assert r.returncode == 1, r
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{ini}:4:1: setting unix_socket_group is not supported: "), \
        r.stderr
    assert lines[1].startswith(f"{ini}:5:1: setting tcp_socket_buffer is not supported: "), \
        r.stderr
    assert lines[2].startswith(f"{ini}:6:1: setting disable_pqexec is not supported: "), \
        r.stderr
    assert len(lines) == 3, r.stderr  # connect_query is a setting that works

    y = tmp / "sluice.yaml"
    y.write_text("sluice:\n  listen_port: 6432\n  peer_id: 1\n")
    r = check(y)
    assert r.returncode == 1, r
    assert r.stderr.startswith(f"{y}:3:3: setting peer_id is not supported: "), r.stderr


def test_check_names_the_settings_with_no_effect(tmp):
    ini = tmp / "pgbouncer.ini"
    ini.write_text("[databases]\n"
                   "app = host=127.0.0.1 port=5432 dbname=app\n"
                   "[pgbouncer]\n"
                   "listen_port = 6432\n"
                   "dns_max_ttl = 30\n"
                   "tcp_defer_accept = 1\n")
    r = check(ini)
    assert r.returncode == 0, r
    assert r.stderr == f"{ini}: warning: " + WARNING.format("dns_max_ttl, tcp_defer_accept") + "\n"
    assert "configuration is valid" in r.stdout

    plain = tmp / "plain.ini"
    plain.write_text("[pgbouncer]\nlisten_port = 6432\n")
    r = check(plain)
    assert r.returncode == 0, r
    assert "warning" not in r.stderr, r.stderr


def test_startup_logs_one_warning_naming_them(make_sluice):
    s = make_sluice(dns_max_ttl=30, pkt_buf=8192, sbuf_loopcnt=10)
    assert s.psql("SELECT 1").stdout.strip() == "1"
    text = s.log_text()
    line = WARNING.format("dns_max_ttl, pkt_buf, sbuf_loopcnt")
    assert text.count(line) == 1, s.log_tail()
    # SHOW CONFIG lists a no-op with the value the file gave.
    rows = s.psql("SHOW CONFIG", user="admin", db="sluice").stdout
    assert "dns_max_ttl|30|15|yes" in rows.splitlines(), rows


def test_no_warning_without_no_op_settings(make_sluice):
    s = make_sluice()
    assert s.psql("SELECT 1").stdout.strip() == "1"
    assert "settings with no effect" not in s.log_text()


# -- implemented settings, exercised ----------------------------------------------------------

@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listen_backlog_is_the_listening_socket_backlog(make_sluice):
    s = make_sluice(listen_backlog=37)
    out = subprocess.run(["ss", "-ltnH", f"( sport = :{s.port} )"], capture_output=True,
                         text=True, timeout=10).stdout
    # For a listening socket ss shows the backlog as Send-Q (the third column).
    assert [line.split()[2] for line in out.splitlines()] == ["37"], out


@pytest.mark.parametrize("where", ["sluice", "database"])
def test_max_db_client_connections(make_sluice, where):
    if where == "sluice":
        s = make_sluice(max_db_client_connections=1)
    else:
        s = make_sluice(config={"databases": {"app": {"max_db_client_connections": 1}}})
    first = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        first.login("app", s.users["app"], "app")
        second = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        with pytest.raises(PgError) as e:
            second.login("app", s.users["app"], "app")
        assert e.value.sqlstate == "53300"
        assert "(max_db_client_connections)" in e.value.message, e.value.message
        second.close()
    finally:
        first.terminate()
    # The slot is free again once the first client has left.
    assert wait_for(lambda: s.psql("SELECT 1").returncode == 0)


def test_client_limits_hold_under_concurrent_logins(make_sluice):
    """30 logins at once on two workers with max_db_client_connections 4: exactly 4 get in
    (each login takes its place under one lock, so two logins running at the same time
    cannot both pass), the rest get 53300, and the places come back when clients leave."""
    s = make_sluice(workers=2, config={"databases": {"app": {"max_db_client_connections": 4}}})
    results, lock = [], threading.Lock()
    start = threading.Barrier(30)

    def login(i):
        c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        try:
            start.wait(DEADLINE)
            c.login("app", s.users["app"], "app")
            outcome = "in"
        except PgError as e:
            outcome = e.sqlstate
            c.close()
            c = None
        with lock:
            results.append((outcome, c))

    threads = [threading.Thread(target=login, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    try:
        outcomes = sorted(o for o, _ in results)
        assert outcomes == ["53300"] * 26 + ["in"] * 4, outcomes
    finally:
        for _, c in results:
            if c is not None:
                c.terminate()
    # Every place is given back: four new clients get in one after the other.
    def four_in():
        held = []
        try:
            for _ in range(4):
                c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
                held.append(c)
                c.login("app", s.users["app"], "app")
            return True
        except PgError:
            return False
        finally:
            for c in held:
                c.close()
    assert wait_for(four_in, timeout=DEADLINE)


@pytest.mark.parametrize("always", [True, False])
def test_server_reset_query_always(make_sluice, always):
    # Transaction mode, one server: the reset query runs after each transaction only with
    # server_reset_query_always, and what it sets is visible to the next transaction.
    s = make_sluice(pool_mode="transaction", default_pool_size=1,
                    server_reset_query="SET statement_timeout = 4321",
                    server_reset_query_always=always)
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        c.login("app", s.users["app"], "app")
        rows, err = c.query("SELECT 1")
        assert err is None
        rows, err = c.query("SHOW statement_timeout")
        assert err is None
        assert rows == [["4321ms" if always else "0"]]
    finally:
        c.terminate()


def test_scram_iterations_are_what_the_server_first_message_says(make_sluice):
    s = make_sluice(scram_iterations=1234)  # userlist passwords are plaintext here
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        c.send(startup_packet("app", "app"))
        kind, body = c.read_msg()
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 10, (kind, body)
        scram = harness._ScramClient(s.users["app"])
        first = scram.client_first()
        c.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        kind, body = c.read_msg()
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 11, (kind, body)
        attrs = dict(kv.split("=", 1) for kv in body[4:].decode().split(","))
        assert attrs["i"] == "1234"
        # And the login completes with that count.
        c.send(message(b"p", scram.client_final(body[4:])))
        kind, body = c.read_msg()
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 12, (kind, body)
    finally:
        c.close()


def test_max_held_message_size_bounds_a_named_parse(make_sluice):
    # In transaction mode Sluice keeps the text of a named Parse whole; a longer one than
    # max_held_message_size is refused with 54000 and the connection stays usable.
    s = make_sluice(pool_mode="transaction", max_held_message_size=1024)
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        c.login("app", s.users["app"], "app")
        c.send(m_parse("big", "SELECT '" + "x" * 2000 + "'") + SYNC)
        errors = []
        while True:
            kind, body = c.read_msg()
            if kind == b"E":
                errors.append(harness.parse_error_fields(body))
            if kind == b"Z":
                break
        assert [e.get("C") for e in errors] == ["54000"], errors
        assert "max_held_message_size" in errors[0].get("M", ""), errors
        rows, err = c.query("SELECT 2")
        assert err is None and rows == [["2"]]
    finally:
        c.terminate()


@pytest.mark.parametrize("connections,disconnections", [(True, False), (False, True)])
def test_log_connections_and_disconnections(make_sluice, connections, disconnections):
    s = make_sluice(log_connections=connections, log_disconnections=disconnections)
    assert s.psql("SELECT 1").stdout.strip() == "1"
    line = re.compile(r"closing because: client close request \(age=\d+s\): db=app user=app")
    wait_for(lambda: not disconnections or line.search(s.log_text()))
    text = s.log_text()
    assert ("login: db=app user=app" in text) == connections, s.log_tail()
    assert bool(line.search(text)) == disconnections, s.log_tail()
    # The server side in PgBouncer's words too.
    new_server = re.compile(r"server \d+ app/app@127\.0\.0\.1:\d+ new connection to server")
    assert bool(new_server.search(text)) == connections, s.log_tail()


def test_server_closing_reasons_in_the_log(make_sluice):
    """server_idle_timeout and server_lifetime close idle servers with PgBouncer's
    `closing because:` reasons, read from the log right after they happen."""
    s = make_sluice(server_idle_timeout=1, server_lifetime=3600)
    assert s.psql("SELECT 1").stdout.strip() == "1"
    idle = re.compile(r"server \d+ app/app@127\.0\.0\.1:\d+ closing because: server idle "
                      r"timeout \(age=\d+s\)")
    assert wait_for(lambda: idle.search(s.log_text())), s.log_tail()
    s.update(server_idle_timeout=600, server_lifetime=1)
    s.reload()
    assert s.psql("SELECT 1").stdout.strip() == "1"
    life = re.compile(r"closing because: server lifetime over \(age=[1-9]\d*s\)")
    assert wait_for(lambda: life.search(s.log_text())), s.log_tail()


@pytest.mark.parametrize("on", [True, False])
def test_log_pooler_errors(make_sluice, on):
    """The fatal errors Sluice itself sends a client (here: an unknown database) are
    logged with log_pooler_errors = 1, and not with 0."""
    s = make_sluice(log_pooler_errors=on)
    r = s.psql("SELECT 1", db="no_such_db")
    assert r.returncode != 0 and 'database "no_such_db" does not exist' in r.stderr, r
    line = re.compile(r'client \d+ \(127\.0\.0\.1:\d+\): pooler error: 3D000 database '
                      r'"no_such_db" does not exist')
    # The line is written before the error is sent: psql has exited, so it is there or
    # it will never be.
    assert bool(line.search(s.log_text())) == on, s.log_tail()
    # The reason, in PgBouncer's words, whatever log_pooler_errors says.
    assert re.search(r"client \d+ closing because: no such database: no_such_db", s.log_text())


def two_servers(s):
    """The backend pids of two transactions open at once (so on two servers)."""
    with psycopg.connect(s.dsn(), autocommit=True) as a, \
            psycopg.connect(s.dsn(), autocommit=True) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        pids = {a.execute("SELECT pg_backend_pid()").fetchone()[0],
                b.execute("SELECT pg_backend_pid()").fetchone()[0]}
        a.execute("COMMIT")
        b.execute("COMMIT")
    return pids


def backend_pids(s, n):
    """The backend pid of n sequential one-statement transactions of one client."""
    with psycopg.connect(s.dsn(), autocommit=True) as c:
        return [c.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(n)]


@pytest.mark.parametrize("round_robin", [False, True])
def test_server_round_robin(make_sluice, round_robin):
    """Two idle servers: with server_round_robin = 0 the most recently used one serves
    every transaction; with 1 they take turns (the longest idle first)."""
    s = make_sluice(pool_mode="transaction", min_pool_size=2, server_round_robin=round_robin)
    two = two_servers(s)
    assert len(two) == 2
    pids = backend_pids(s, 6)
    assert set(pids) <= two
    if round_robin:
        assert all(pids[i] != pids[i + 1] for i in range(5)), pids
    else:
        assert len(set(pids)) == 1, pids


def test_connect_query_runs_on_each_new_server(make_sluice, pg):
    """connect_query runs once per new server connection, before a client has it: what
    it sets is the server's starting state. A failing one is logged and the server used."""
    pg.psql("CREATE TABLE IF NOT EXISTS connect_log (pid int); TRUNCATE connect_log; "
            "GRANT ALL ON connect_log TO app", db="app")
    s = make_sluice(pool_mode="transaction", config={"databases": {"app": {
        "connect_query": "INSERT INTO connect_log VALUES (pg_backend_pid()); "
                         "SET application_name = 'warmed'"}}})
    pids = two_servers(s)
    with psycopg.connect(s.dsn(), autocommit=True) as a:
        logged = [r[0] for r in a.execute("SELECT pid FROM connect_log").fetchall()]
    assert sorted(logged) == sorted(pids), (logged, pids)
    bad = make_sluice(config={"databases": {"app": {"connect_query": "SELECT no_such_column"}}})
    with psycopg.connect(bad.dsn(), autocommit=True) as c:
        assert c.execute("SELECT 7").fetchone()[0] == 7
    assert wait_for(lambda: "connect_query failed: column \"no_such_column\" does not exist"
                    in bad.log_text()), bad.log_tail()
    # One that leaves a transaction open would hand clients a dirty server: it is closed,
    # and the client told why.
    dirty = make_sluice(config={"databases": {"app": {"connect_query": "BEGIN"}}})
    r = dirty.psql("SELECT 1")
    assert r.returncode != 0, r
    assert "connect_query: it left the server inside a transaction" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_application_name_add_host(make_sluice, mode):
    """The server sees where the client comes from: "app - addr:port", set at login; a
    later SET replaces it. Off, the name reaches the server unchanged."""
    s = make_sluice(pool_mode=mode, application_name_add_host=1)
    with psycopg.connect(s.dsn(), autocommit=True, application_name="billing") as c:
        sock = socket.socket(fileno=os.dup(c.pgconn.socket))
        client_port = sock.getsockname()[1]
        sock.close()
        seen = c.execute("SELECT current_setting('application_name')").fetchone()[0]
        assert seen == f"billing - 127.0.0.1:{client_port}", seen
        if mode == "session":
            c.execute("SET application_name = 'renamed'")
            assert c.execute("SHOW application_name").fetchone()[0] == "renamed"
    off = make_sluice(pool_mode=mode)
    with psycopg.connect(off.dsn(), autocommit=True, application_name="billing") as c:
        assert c.execute("SHOW application_name").fetchone()[0] == "billing"


@pytest.mark.parametrize("fast", [True, False])
def test_server_fast_close(make_sluice, fast):
    """Session mode, RECONNECT: with server_fast_close = 1 a client between transactions
    loses its server and its connection at once (a client inside a transaction first
    finishes it); with 0 both keep going until the client leaves."""
    s = make_sluice(pool_mode="session", server_fast_close=fast)
    idle = psycopg.connect(s.dsn(), autocommit=True)
    busy = psycopg.connect(s.dsn(), autocommit=True)
    try:
        idle.execute("SELECT 1")
        busy.execute("BEGIN")
        busy.execute("SELECT 1")
        r = s.psql("RECONNECT", user="admin", db="sluice")
        assert r.returncode == 0, r.stderr
        if fast:
            closed = re.compile(r"closing because: server connection closed by "
                                r"server_fast_close")
            assert wait_for(lambda: len(closed.findall(s.log_text())) == 1), s.log_tail()
            with pytest.raises(psycopg.OperationalError):
                idle.execute("SELECT 1")
            # Inside its transaction the client keeps its server up to COMMIT.
            assert busy.execute("SELECT 2").fetchone()[0] == 2
            busy.execute("COMMIT")
            assert wait_for(lambda: len(closed.findall(s.log_text())) == 2), s.log_tail()
            with pytest.raises(psycopg.OperationalError):
                busy.execute("SELECT 3")
        else:
            assert idle.execute("SELECT 1").fetchone()[0] == 1
            busy.execute("COMMIT")
            assert busy.execute("SELECT 3").fetchone()[0] == 3
            assert "server_fast_close" not in s.log_text()
    finally:
        idle.close()
        busy.close()


def test_query_wait_notify(make_sluice):
    """A client queued for a server longer than query_wait_notify gets one NOTICE (in
    PgBouncer's words) and is then served as usual."""
    s = make_sluice(pool_mode="transaction", default_pool_size=1, query_wait_notify=0.2)
    holder = psycopg.connect(s.dsn(), autocommit=True)
    waiter = psycopg.connect(s.dsn(), autocommit=True)
    notices = []
    waiter.add_notice_handler(lambda d: notices.append(d.message_primary))
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # the only server
        t = threading.Thread(target=lambda: waiter.execute("SELECT 2"), daemon=True)
        t.start()
        assert wait_for(lambda: notices), "no NOTICE while queued"
        assert notices == ["No server connection available in postgres server, client is "
                           "being queued"], notices
        holder.execute("COMMIT")
        t.join(DEADLINE)
        assert not t.is_alive()
        assert waiter.execute("SELECT 3").fetchone()[0] == 3
        assert len(notices) == 1, notices  # once per wait; no wait, no notice
    finally:
        holder.close()
        waiter.close()


def test_log_format_json(make_sluice):
    """log_format: json writes one JSON object per line (time, level, pid, thread,
    message), with what a client chose (here a database name with quotes and a
    backslash) escaped, so that a log shipper can always parse it."""
    s = make_sluice(log_format="json", logfile="json.log")
    assert s.psql("SELECT 1").stdout.strip() == "1"
    evil = 'x"y\\z'
    r = s.psql("SELECT 1", db=evil)
    assert r.returncode != 0
    log = s.dir / "json.log"
    assert wait_for(lambda: "pooler error" in log.read_text()), log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(set(r) == {"time", "level", "pid", "thread", "message"} for r in records)
    assert {r["pid"] for r in records} == {s.proc.pid}
    assert any(r["message"].startswith("client ") and "login attempt: db=app user=app" in
               r["message"] and r["level"] == "info" for r in records), records
    assert any(f'database "{evil}" does not exist' in r["message"] for r in records), records


@pytest.mark.parametrize("verbose", [0, 1])
def test_verbose_turns_on_debug_lines(make_sluice, verbose):
    s = make_sluice(verbose=verbose)
    assert s.psql("SELECT 1").stdout.strip() == "1"
    # Connecting to a server is a debug line.
    assert bool(re.search(r"server \d+: connecting to ", s.log_text())) == bool(verbose), \
        s.log_tail()


def test_database_datestyle_and_timezone(make_sluice):
    s = make_sluice(config={"databases": {"app": {"datestyle": "SQL, DMY",
                                                  "timezone": "Asia/Tokyo"}}})
    with psycopg.connect(s.dsn(), autocommit=True) as c:
        assert c.execute("SHOW DateStyle").fetchone()[0] == "SQL, DMY"
        assert c.execute("SHOW TimeZone").fetchone()[0] == "Asia/Tokyo"


# -- pgbouncer.ini by PgBouncer's rules -------------------------------------------------------

def test_ini_last_key_wins_and_no_host_is_the_unix_socket(pg, tmp):
    """A pgbouncer.ini as tools leave it: an override appended at the end (the last
    occurrence wins), a %include whose [databases] entry replaces one of the main file's,
    and an entry without host, which reaches
    PostgreSQL over its Unix socket in unix_socket_dir (pg_hba's `local` line applies:
    client_addr is NULL on the server)."""
    first, port = harness.free_port(), harness.free_port()
    (tmp / "userlist.txt").write_text('"app" "app_pw"\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text("[databases]\n"
                   f"app = host=127.0.0.1 port={pg.port} dbname=postgres\n"
                   f"local = port={pg.port} dbname=app\n"
                   "\n"
                   "[pgbouncer]\n"
                   "listen_addr = 127.0.0.1\n"
                   f"listen_port = {first}\n"
                   f"unix_socket_dir = {pg.sockdir}\n"
                   "auth_type = scram-sha-256\n"
                   "auth_file = userlist.txt\n"
                   "; appended by a deployment tool:\n"
                   f"listen_port = {port}\n"
                   "%include overrides.ini\n")
    # Included in place, by a name relative to the working directory (PgBouncer's rule).
    (tmp / "overrides.ini").write_text("[databases]\n"
                                       f"app = host=127.0.0.1 port={pg.port} dbname=app\n")
    r = subprocess.run([str(harness.sluice_bin()), "--check", str(ini)], capture_output=True,
                       text=True, timeout=30, cwd=tmp)
    assert r.returncode == 0, r
    log = tmp / "sluice.log"
    p = harness.spawn([harness.sluice_bin(), ini], log_path=log, cwd=tmp)
    try:
        assert harness.wait_port(port, DEADLINE, proc=p), harness.tail(log)
        dsn = f"host=127.0.0.1 port={port} user=app password=app_pw sslmode=disable"
        with psycopg.connect(dsn + " dbname=app", autocommit=True) as c:
            assert c.execute("SELECT current_database()").fetchone()[0] == "app"  # the last
            assert c.execute("SELECT client_addr FROM pg_stat_activity "
                             "WHERE pid = pg_backend_pid()").fetchone()[0] is not None
        with psycopg.connect(dsn + " dbname=local", autocommit=True) as c:
            assert c.execute("SELECT current_database()").fetchone()[0] == "app"
            assert c.execute("SELECT client_addr FROM pg_stat_activity "
                             "WHERE pid = pg_backend_pid()").fetchone()[0] is None  # socket
        with pytest.raises(ConnectionRefusedError):  # the overridden listen_port
            socket.create_connection(("127.0.0.1", first), timeout=5).close()
    finally:
        p.terminate()
        p.wait(10)


def run_console(port, password, sql):
    """Rows of a console SHOW as lists of text, through psql (a real client)."""
    r = subprocess.run([str(harness.PG_BIN / "psql"), "-X", "-At", "-F", "|", "-h", "127.0.0.1",
                        "-p", str(port), "-U", "admin", "-d", "pgbouncer", "-c", sql],
                       capture_output=True, text=True, timeout=30,
                       env=harness.client_env(password))
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_realistic_pgbouncer_ini_and_its_yaml_conversion(pg, pgbench_db, tmp):
    """A pgbouncer.ini as a PgBouncer user has it: several databases by connection string,
    one without host (PostgreSQL's Unix socket), [users], %include, an old alias
    (reserve_pool), admin users and a no-op. Sluice serves psql and pgbench from it; then
    `sluice --convert` prints YAML that `--check` accepts and that yields the same SHOW
    CONFIG, DATABASES and USERS."""
    port = harness.free_port()
    (tmp / "userlist.txt").write_text('"app" "app_pw"\n"admin" "admin_pw"\n')
    (tmp / "databases.ini").write_text(
        "[databases]\n"
        f"reports = host=127.0.0.1 port={pg.port} dbname=app pool_size=2 reserve_pool=1\n")
    ini = tmp / "pgbouncer.ini"
    ini.write_text(
        ";; production pooler\n"
        "[databases]\n"
        f"app = host=127.0.0.1 port={pg.port} dbname=app pool_mode=transaction\n"
        f"local = port={pg.port} dbname=app application_name=via-socket\n"
        f"postgres = host=127.0.0.1 port={pg.port} auth_user=app\n"
        "%include databases.ini\n"
        "\n"
        "[users]\n"
        "app = pool_mode=session max_user_connections=10\n"
        "\n"
        "[pgbouncer]\n"
        "  listen_addr = 127.0.0.1\n"
        f"  listen_port = {port}\n"
        f"  unix_socket_dir = {pg.sockdir}\n"
        "  auth_type = scram-sha-256\n"
        "  auth_file = userlist.txt\n"
        "  admin_users = admin\n"
        "  default_pool_size = 5\n"
        "  server_idle_timeout = 120\n"
        "  query_wait_timeout = 30.5\n"
        "  ignore_startup_parameters = extra_float_digits\n"
        "# a no-op: named in the start-up warning\n"
        "  dns_max_ttl = 30\n"
        "  max_client_conn = 500\n")
    assert check(ini, cwd=tmp).returncode == 0, check(ini, cwd=tmp)

    def run_and_read(config):
        log = tmp / (config.name + ".log")
        p = harness.spawn([harness.sluice_bin(), config], log_path=log, cwd=tmp)
        try:
            assert harness.wait_port(port, DEADLINE, proc=p), harness.tail(log)
            seen = {what: run_console(port, "admin_pw", f"SHOW {what}")
                    for what in ("CONFIG", "DATABASES", "USERS")}
            if config.suffix == ".ini":
                dsn = f"host=127.0.0.1 port={port} user=app password=app_pw sslmode=disable"
                with psycopg.connect(dsn + " dbname=local", autocommit=True) as c:
                    assert c.execute("SELECT client_addr IS NULL, current_setting("
                                     "'application_name') FROM pg_stat_activity WHERE pid = "
                                     "pg_backend_pid()").fetchone() == (True, "via-socket")
                r = subprocess.run([str(harness.PG_BIN / "psql"), "-X", "-At", "-h", "127.0.0.1",
                                    "-p", str(port), "-U", "app", "-d", "reports", "-c",
                                    "SELECT count(*) FROM pgbench_branches"],
                                   capture_output=True, text=True, timeout=30,
                                   env=harness.client_env("app_pw"))
                assert r.returncode == 0 and r.stdout.strip() == "1", r
                b = harness.pgbench(["-n", "-S", "-c", "4", "-t", "50"], "127.0.0.1", port,
                                    "app", "app_pw", "app")
                assert b.returncode == 0, b.stderr
                res = harness.parse_pgbench(b.stdout)
                assert res.get("processed") == 200 and res.get("failed", 0) == 0, b.stdout
            assert "settings with no effect in Sluice: dns_max_ttl" in log.read_text()
            return seen
        finally:
            p.terminate()
            p.wait(10)

    from_ini = run_and_read(ini)
    r = subprocess.run([str(harness.sluice_bin()), "--convert", str(ini)], capture_output=True,
                       text=True, timeout=30, cwd=tmp)
    assert r.returncode == 0, r.stderr
    converted = tmp / "converted.yaml"
    converted.write_text(r.stdout)
    assert "reserve_pool_size: \"1\"" in r.stdout  # the alias, by its current name
    # Paths are absolute in the conversion: it checks from anywhere.
    assert check(converted).returncode == 0, (check(converted), r.stdout)
    from_yaml = run_and_read(converted)
    for what in ("CONFIG", "DATABASES", "USERS"):
        assert from_yaml[what] == from_ini[what], (what, r.stdout)
    config_rows = {row.split("|")[0]: row.split("|")[1] for row in from_ini["CONFIG"]}
    assert config_rows["query_wait_timeout"] == "30.5" and config_rows["dns_max_ttl"] == "30"


# -- the options startup parameter (psql's PGOPTIONS, JDBC's options) -----------------------

@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_options_startup_parameter(make_sluice, mode):
    s = make_sluice(pool_mode=mode, ignore_startup_parameters=["extra_float_digits", "work_mem"])
    dsn = s.dsn()
    with psycopg.connect(dsn, autocommit=True,
                         options=r"-c TimeZone=Asia/Tokyo --search_path=app,\ public") as c:
        assert c.execute("SHOW TimeZone").fetchone()[0] == "Asia/Tokyo"
        assert c.execute("SHOW search_path").fetchone()[0] == "app, public"
    # An ignored parameter is dropped, as PgBouncer does: the server keeps its default.
    with psycopg.connect(dsn, autocommit=True, options="-c work_mem=1MB") as c:
        assert c.execute("SHOW work_mem").fetchone()[0] == "4MB"
    with pytest.raises(psycopg.OperationalError,
                       match="unsupported options startup parameter: only '-c config=val' and "
                             "'--config=val' are allowed"):
        psycopg.connect(dsn, options="-d 5").close()
    with pytest.raises(psycopg.OperationalError,
                       match="unsupported startup parameter in options: statement_timeout"):
        psycopg.connect(dsn, options="-c statement_timeout=5s").close()
    assert s.alive()
