"""Issue 2: core pooling behaviour against real PostgreSQL 15 and real clients.

Each test asserts the exact outcome it names (SQLSTATE, exit code, no dirty server).
"""
from __future__ import annotations

import random
import re
import signal
import struct
import subprocess
import threading
import time

import psycopg
import psycopg.errors
import pytest

import harness
from harness import DEADLINE, wait_for
from harness import PgError, RawPg, message, parse_error_fields, startup_packet
from conftest import ADMIN_PW, APP_PW, MD5_PW

PSQL = str(harness.PG_BIN / "psql")

# Deadline for anything the test waits on: generous, so that a slow or loaded machine
# (sanitizer builds, two shared cores) changes how long a test runs, never its verdict.


def connect(s, user="app", password=None, db="app", **kw):
    return psycopg.connect(s.dsn(user, password, db), autocommit=True, **kw)


def superuser(pg, db="app"):
    """Direct connection to PostgreSQL (unix socket, trust), bypassing Sluice."""
    return psycopg.connect(host=str(pg.sockdir), port=pg.port, user="postgres", dbname=db,
                           autocommit=True)


def console(s):
    """The admin console (simple query protocol only: no prepared statements)."""
    return psycopg.connect(s.dsn("admin", ADMIN_PW, "sluice"), autocommit=True,
                           prepare_threshold=None)


def app_pool(con) -> dict:
    """SHOW POOLS row of database app, user app (an empty dict while there is none)."""
    cur = con.execute("SHOW POOLS")
    cols = [d.name for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return next((r for r in rows if r["database"] == "app" and r["user"] == "app"), {})


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def run_threads(fn, n, timeout):
    """Runs fn(i) in n daemon threads; returns (results, errors) lists by index."""
    results = [None] * n
    errors = [None] * n

    def wrap(i):
        try:
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001
            errors[i] = e

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, f"threads {hung} still running after {timeout}s"
    return results, errors


def login_error(s, user, password, db="app") -> PgError:
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        with pytest.raises(PgError) as ei:
            c.login(user, password, db)
        return ei.value
    finally:
        c.close()


def assert_usable(s, user="app", db="app"):
    with connect(s, user, db=db) as c:
        assert one(c, "SELECT 41 + 1") == 42


# ---------------------------------------------------------------------------------------
# Authentication


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
@pytest.mark.parametrize("user,password", [("app", APP_PW), ("md5user", MD5_PW)])
def test_psql_login(make_sluice, auth_type, user, password):
    s = make_sluice(auth_type=auth_type)
    # No sslmode in the conninfo: libpq's default 'prefer' sends SSLRequest first.
    conninfo = f"host=127.0.0.1 port={s.port} user={user} dbname=app"
    r = subprocess.run([PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo,
                        "-c", "SELECT 1", "-c", "SELECT current_user"],
                       capture_output=True, text=True, timeout=30,
                       env=harness.client_env(password))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", user]


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
def test_psycopg_login(make_sluice, auth_type):
    s = make_sluice(auth_type=auth_type)
    for user, pw in (("app", APP_PW), ("md5user", MD5_PW)):
        with connect(s, user, pw) as c:
            assert one(c, "SELECT 1") == 1
            assert one(c, "SELECT current_user") == user


def test_raw_client_sees_requested_auth_method(make_sluice):
    """auth_type decides what the client is asked for: SASL for scram, md5 salt for md5."""
    for auth_type, code in (("scram-sha-256", 10), ("md5", 5)):
        s = make_sluice(auth_type=auth_type)
        c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        try:
            c.send(startup_packet("app", "app"))
            kind, body = c.read_msg()
            assert kind == b"R", (kind, body)
            assert struct.unpack("!I", body[:4])[0] == code
        finally:
            c.close()
        s.stop()


def test_userlist_with_scram_verifier(pg, make_sluice):
    secret = pg.role_secret("app")
    assert secret.startswith("SCRAM-SHA-256$")
    s = make_sluice(userlist=f'"app" "{secret}"\n', auth_type="scram-sha-256")
    with connect(s, "app", APP_PW) as c:
        assert one(c, "SELECT current_user") == "app"
    # A second, fresh login (no cached client key) must also work.
    with connect(s, "app", APP_PW) as c:
        assert one(c, "SELECT 1") == 1
    assert login_error(s, "app", "wrong").sqlstate == "28P01"


def test_userlist_with_md5_secret(pg, make_sluice):
    import hashlib
    md5_secret = "md5" + hashlib.md5((MD5_PW + "md5user").encode()).hexdigest()
    s = make_sluice(userlist=f'"md5user" "{md5_secret}"\n', auth_type="md5")
    with connect(s, "md5user", MD5_PW) as c:
        assert one(c, "SELECT current_user") == "md5user"


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
def test_wrong_password_unknown_user_unknown_db(make_sluice, auth_type):
    s = make_sluice(auth_type=auth_type)
    wrong = login_error(s, "app", "not-the-password")
    assert wrong.sqlstate == "28P01", wrong.fields
    unknown = login_error(s, "nosuchuser", "whatever")
    assert unknown.sqlstate == "28P01", unknown.fields
    # No user enumeration: same message once the user name is taken out.
    assert unknown.message.replace("nosuchuser", "USER") == wrong.message.replace("app", "USER")
    assert unknown.fields.get("S") == wrong.fields.get("S")
    nodb = login_error(s, "app", APP_PW, db="nosuchdb")
    assert nodb.sqlstate == "3D000", nodb.fields
    # Sluice still serves.
    assert_usable(s)
    # psql reports the failure too (exit code 2 = connection failure).
    r = s.psql("SELECT 1", password="bad")
    assert r.returncode == 2
    assert "password authentication failed" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# Load


@pytest.mark.timeout(120)
def test_pgbench_session_mode(pgbench_db, make_sluice):
    # Session mode: each of the 20 pgbench clients holds a server for its whole session.
    s = make_sluice(pool_mode="session", default_pool_size=25)
    r = harness.pgbench(["-c", "20", "-j", "2", "-T", "10", "-n"], "127.0.0.1", s.port, "app",
                        APP_PW, "app", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    res = harness.parse_pgbench(r.stdout)
    assert "failed" in res, r.stdout
    assert res["failed"] == 0, r.stdout
    assert res.get("processed", 0) > 0, r.stdout


def test_forty_short_sessions_on_pool_of_five(make_sluice):
    s = make_sluice(pool_mode="session", default_pool_size=5)

    def session(i):
        with connect(s) as c:
            pid = one(c, "SELECT pg_backend_pid()")
            c.execute("SELECT pg_sleep(0.05)")
            return pid

    results, errors = run_threads(session, 40, timeout=60)
    assert all(e is None for e in errors), [repr(e) for e in errors if e]
    pids = set(results)
    assert 1 <= len(pids) <= 5, pids


@pytest.mark.timeout(90)
def test_pgbench_transaction_mode(pgbench_db, make_sluice):
    """20 pgbench clients share 5 server connections in transaction mode."""
    s = make_sluice(pool_mode="transaction", default_pool_size=5)
    r = harness.pgbench(["-c", "20", "-j", "2", "-T", "5", "-n"], "127.0.0.1", s.port, "app",
                        APP_PW, "app", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    res = harness.parse_pgbench(r.stdout)
    assert res.get("failed") == 0, r.stdout
    assert res.get("processed", 0) > 0, r.stdout


@pytest.mark.timeout(90)
def test_pgbench_transaction_mode_prepared(pgbench_db, make_sluice):
    """pgbench -M prepared (named protocol-level statements) in transaction mode: the
    demo's workload. Must neither fail, hang nor leave servers stuck in a transaction."""
    s = make_sluice(pool_mode="transaction", default_pool_size=4, query_wait_timeout=15)
    r = harness.pgbench(["-c", "10", "-j", "2", "-T", "4", "-n", "-M", "prepared"],
                        "127.0.0.1", s.port, "app", APP_PW, "app", timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = harness.parse_pgbench(r.stdout)
    assert res.get("failed") == 0, r.stdout
    assert_usable(s)
    stuck = pgbench_db.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                            "AND state LIKE 'idle in transaction%'")
    assert stuck == "0", "servers left idle in transaction"


def test_transaction_mode_multiplexing(make_sluice):
    """20 clients connected at once on a pool of 2: every transaction runs, on <= 2 backends,
    and a transaction keeps one backend from BEGIN to COMMIT."""
    s = make_sluice(pool_mode="transaction", default_pool_size=2)
    # No protocol-level prepared statements here (see the test below for those).
    conns = [connect(s, prepare_threshold=None) for _ in range(20)]
    try:
        def work(i):
            c = conns[i]
            pids = set()
            for _ in range(5):
                with c.transaction():
                    p1 = one(c, "SELECT pg_backend_pid()")
                    c.execute("SELECT pg_sleep(0.01)")
                    p2 = one(c, "SELECT pg_backend_pid()")
                    assert p1 == p2
                    pids.add(p1)
                pids.add(one(c, "SELECT pg_backend_pid()"))
            return pids

        results, errors = run_threads(work, 20, timeout=60)
        assert all(e is None for e in errors), [repr(e) for e in errors if e]
        all_pids = set().union(*results)
        assert 1 <= len(all_pids) <= 2, all_pids
    finally:
        for c in conns:
            c.close()


def test_transaction_mode_named_prepared_statements(make_sluice):
    """psycopg prepares named statements (_pg3_N) on its own; in transaction mode those
    clients land on shared servers, where the names must not collide (DESIGN 2)."""
    s = make_sluice(pool_mode="transaction", default_pool_size=2)
    conns = [connect(s, prepare_threshold=0) for _ in range(8)]
    try:
        def work(i):
            c = conns[i]
            for k in range(10):
                assert one(c, "SELECT %s::int + 1", (k,)) == k + 1
                assert one(c, "SELECT %s::text || 'x'", (str(i),)) == f"{i}x"
            return True

        results, errors = run_threads(work, 8, timeout=60)
        assert all(e is None for e in errors), [repr(e) for e in errors if e]
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------------------------
# Cancel


SLEEPING_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                "AND query = 'SELECT pg_sleep(30)' AND state = 'active'")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_cancel_request(pg, make_sluice, mode):
    s = make_sluice(pool_mode=mode)
    with connect(s) as c, superuser(pg) as su:
        assert one(c, "SELECT 1") == 1
        seen_running = threading.Event()

        def cancel_once_running():
            # Cancel once the server really runs the query: a fixed delay could fire
            # before the query got there (then nothing is cancelled) on a slow machine.
            if wait_for(lambda: one(su, SLEEPING_SQL) == 1):
                seen_running.set()
                c.cancel()

        canceller = threading.Thread(target=cancel_once_running, daemon=True)
        canceller.start()
        # Cancelled, not finished: the 57014 comes before the 30 s sleep is over (the
        # outcome itself, where an elapsed-time bound used to stand).
        with pytest.raises(psycopg.errors.QueryCanceled) as ei:
            c.execute("SELECT pg_sleep(30)")
        canceller.join(DEADLINE)
        assert seen_running.is_set()
        assert ei.value.sqlstate == "57014"
        assert one(c, "SELECT 2") == 2
        assert wait_for(lambda: one(su, SLEEPING_SQL) == 0), "the server still sleeps"


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_query_wait_timeout(make_sluice, mode):
    """A client that waits longer than query_wait_timeout for a server gets an error; the
    client holding the server and Sluice itself carry on."""
    s = make_sluice(pool_mode=mode, default_pool_size=1, query_wait_timeout=1)
    a = connect(s)
    try:
        a.execute("BEGIN")
        assert one(a, "SELECT 1") == 1
        # The read deadline is generous: the error must come, whenever the machine gets
        # to it; the lower bound below checks that it did not come early.
        b = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        t0 = time.monotonic()
        try:
            try:
                b.login("app", APP_PW, "app")
                rows, err = b.query("SELECT 1")
                assert err is not None, "served by a pool of 1 that was busy"
            except PgError as e:
                err = e.fields
            elapsed = time.monotonic() - t0
        finally:
            b.close()
        assert err.get("C") == "53300", err
        assert "query_wait_timeout" in err.get("M", ""), err
        assert elapsed >= 0.8, elapsed
        assert s.alive(), f"sluice died after query_wait_timeout:\n{s.log_tail()}"
        assert one(a, "SELECT 2") == 2
        a.execute("COMMIT")
    finally:
        a.close()
    assert_usable(s)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_vanishing_clients_do_not_leak_servers(make_sluice, mode):
    """Ten clients vanish (no Terminate) in the middle of transactions and of extended-
    protocol batches; a pool of 2 must still serve the next client at once."""
    s = make_sluice(pool_mode=mode, default_pool_size=2, query_wait_timeout=5)
    for i in range(10):
        c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        c.login("app", APP_PW, "app")
        if i % 2 == 0:
            c.query("BEGIN")
            c.send(message(b"Q", b"SELECT pg_sleep(0.2)\0"))  # abort while it runs
        else:
            # Parse/Bind/Execute of an unknown prepared statement, no Sync, then vanish.
            c.send(message(b"B", b"\0nosuch\0" + struct.pack("!HHH", 0, 0, 0)) +
                   message(b"E", b"\0" + struct.pack("!I", 0)))
        c.abort()
    # Nothing stays linked to the vanished clients: no client is left, no server active.
    with console(s) as con:
        ok = wait_for(lambda: (lambda p: p.get("cl_active") == 0 and p.get("cl_waiting") == 0
                               and p.get("sv_active") == 0)(app_pool(con)))
        assert ok, f"servers still held for vanished clients: {app_pool(con)}"
    # So the next client is served (a leaked server would make it hit query_wait_timeout).
    with connect(s) as d:
        assert one(d, "SELECT 1") == 1
    assert s.alive()


# ---------------------------------------------------------------------------------------
# Dirty server


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_vanished_client_leaves_no_dirty_server(make_sluice, mode):
    s = make_sluice(pool_mode=mode, default_pool_size=1)
    a = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    a.login("app", APP_PW, "app")
    for sql in ("BEGIN", "CREATE TEMP TABLE t(x int)", "SET statement_timeout = '1234'"):
        _, err = a.query(sql)
        assert err is None, err
    assert a.txn_status == "T"
    a.abort()  # no Terminate, RST

    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with connect(s) as b:
                assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                assert one(b, "SELECT to_regclass('pg_temp.t')::text") is None
                assert one(b, "SHOW statement_timeout") == "0"
                assert one(b, "SELECT now() = statement_timestamp()") is True  # not in a txn
                assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            break
        except psycopg.OperationalError:
            # pool of 1: the old server may still be closing
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_session_state_reset_between_clients(make_sluice):
    """Clean disconnect in session mode: server_reset_query (DISCARD ALL) wipes state."""
    s = make_sluice(pool_mode="session", default_pool_size=1)
    with connect(s) as a:
        a.execute("SET statement_timeout = '4321'")
        a.execute("CREATE TEMP TABLE keep_me(x int)")
        pid_a = one(a, "SELECT pg_backend_pid()")
    with connect(s) as b:
        assert one(b, "SHOW statement_timeout") == "0"
        assert one(b, "SELECT to_regclass('pg_temp.keep_me')::text") is None
        pid_b = one(b, "SELECT pg_backend_pid()")
    assert pid_a == pid_b  # reused, not merely replaced


# ---------------------------------------------------------------------------------------
# Bad input


def _send_and_read_until_close(s, payload: bytes, login: bool = False):
    """Sends payload on a new connection (after a login if asked) and returns every
    message up to the close. A send cut short by the close still reads what came before
    it (the kernel hands over the queued bytes before reporting the reset)."""
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        if login:
            c.login("app", APP_PW, "app")
        try:
            c.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return c.read_until_close(timeout=DEADLINE)
    finally:
        c.close()


def _expect_error_then_close(s, payload: bytes, sqlstates, login: bool = False):
    """Exactly one ErrorResponse with one of `sqlstates` and a message, then the close
    (a bare close used to pass too)."""
    msgs = _send_and_read_until_close(s, payload, login)
    assert len(msgs) == 1, msgs
    kind, body = msgs[0]
    if kind == b"E2":  # protocol-2 error text, as PostgreSQL answers a 2.0 startup
        assert body, msgs
        return {"M": body.decode(errors="replace")}
    assert kind == b"E", msgs
    fields = parse_error_fields(body)
    assert fields.get("C") in sqlstates, fields
    assert fields.get("S") == "FATAL", fields
    assert fields.get("M"), fields
    return fields


def test_malformed_startup_packets(make_sluice):
    s = make_sluice()
    rnd = random.Random(1234)
    cases = {
        "length 3": (struct.pack("!I", 3), {"08P01"}),
        "length 20000": (struct.pack("!II", 20000, harness.PROTOCOL_3) + b"x" * 19992,
                         {"08P01"}),
        "protocol 2.0": (startup_packet("app", "app", protocol=0x00020000), {"0A000", "08P01"}),
        "http": (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", {"08P01"}),
        "garbage": (b"\xde\xad\xbe\xef" + bytes(rnd.randrange(256) for _ in range(60)),
                    {"08P01"}),
        "no user": (struct.pack("!II", 9, harness.PROTOCOL_3) + b"\0", {"08P01", "28000"}),
        "unterminated params": (struct.pack("!II", 16, harness.PROTOCOL_3) + b"user\0app",
                                {"08P01"}),
    }
    seen = {}
    with connect(s) as bystander:
        for name, (payload, states) in cases.items():
            seen[name] = _expect_error_then_close(s, payload, states)
            assert s.alive(), f"sluice died on {name}:\n{s.log_tail()}"
            assert one(bystander, "SELECT 1") == 1, name
            assert_usable(s)
    # Protocol 2.0 deserves a clear message, as PostgreSQL gives one.
    assert re.search(r"protocol|version", seen["protocol 2.0"]["M"], re.I), seen


def test_half_sent_startup_does_not_block_others(make_sluice):
    s = make_sluice(client_login_timeout=2)
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    c.send(struct.pack("!I", 100))  # promise 100 bytes, send 4
    try:
        assert_usable(s)
        msgs = c.read_until_close(timeout=DEADLINE)  # client_login_timeout closes it
        # Exactly one FATAL ErrorResponse, 08P01, then the close (an empty list used to pass).
        assert [k for k, _ in msgs] == [b"E"], msgs
        assert b"08P01" in msgs[0][1], msgs
    finally:
        c.close()


def test_ssl_and_gss_requests_get_n(make_sluice):
    s = make_sluice()
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        assert c.ssl_request() == b"N"
        c.login("app", APP_PW, "app")
        rows, err = c.query("SELECT current_user")
        assert err is None and rows == [["app"]]
    finally:
        c.terminate()
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        c.send(struct.pack("!II", 8, harness.GSSENC_REQUEST))
        assert c.read_byte() == b"N"
        c.login("app", APP_PW, "app")
        rows, err = c.query("SELECT 1")
        assert err is None and rows == [["1"]]
    finally:
        c.terminate()


def test_oversized_message_after_login(make_sluice):
    s = make_sluice(max_packet_size=65536)
    with connect(s) as bystander:
        big = "SELECT '" + "x" * 100_000 + "'"
        # One FATAL ErrorResponse (protocol violation or too large), then the close: never
        # a result for the query (an empty answer used to pass too).
        fields = _expect_error_then_close(s, message(b"Q", big.encode() + b"\0"),
                                          {"08P01", "54000"}, login=True)
        assert "max_packet_size" in fields["M"], fields
        assert s.alive()
        assert one(bystander, "SELECT 1") == 1
        assert_usable(s)


def test_unknown_message_type_after_login(make_sluice):
    s = make_sluice(pool_mode="transaction")
    # Exactly one FATAL 08P01, then the close (no message at all used to pass).
    _expect_error_then_close(s, message(b"\x01", b"junk"), {"08P01"}, login=True)
    assert s.alive()
    assert_usable(s)


# ---------------------------------------------------------------------------------------
# Server faults


@pytest.mark.timeout(120)
def test_postgres_restart_under_sluice(pg, make_sluice):
    s = make_sluice()
    old = connect(s)
    assert one(old, "SELECT 1") == 1
    pg.restart("fast")
    try:
        with pytest.raises(psycopg.OperationalError) as ei:
            old.execute("SELECT 1")
            old.execute("SELECT 1")  # a first call may race the server's FATAL
        st = getattr(ei.value, "sqlstate", None)
        assert st in (None, "08006", "57P01", "08003", "08000"), (st, ei.value)
    finally:
        old.close()
    deadline = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < deadline:
        try:
            with connect(s) as c:
                assert one(c, "SELECT 1") == 1
                break
        except psycopg.OperationalError as e:
            last = e
            time.sleep(0.25)
    else:
        pytest.fail(f"no successful connection within {DEADLINE} s after restart: {last}")
    assert s.alive()


@pytest.mark.timeout(60)
def test_server_killed_mid_transaction(pg, make_sluice):
    """The backend serving a client is terminated: the client gets an error, and the next
    client gets a fresh healthy server."""
    s = make_sluice(pool_mode="transaction", default_pool_size=1)
    c = connect(s)
    c.execute("BEGIN")
    pid = one(c, "SELECT pg_backend_pid()")
    # With a timeout pg_terminate_backend returns once the backend has exited, so the next
    # statement cannot reach it still alive, however slowly the signal is acted on.
    assert pg.psql(f"SELECT pg_terminate_backend({pid}, {int(DEADLINE * 1000)})") == "t"
    with pytest.raises(psycopg.OperationalError):
        c.execute("SELECT 1")
    c.close()
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with connect(s) as d:
                assert one(d, "SELECT pg_backend_pid()") != pid
                assert d.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------
# Configuration and signals

BAD_CONFIG = """\
sluice:
  listen_addr: 127.0.0.1
  listen_port: 6432
  pool_mode: sometimes
  default_pool_size: -3
  no_such_setting: 1
  auth_type: scram-sha-256
databases:
  app:
    host: 127.0.0.1
    port: 5432
"""

GOOD_CONFIG = """\
sluice:
  listen_addr: 127.0.0.1
  listen_port: 6432
  pool_mode: transaction
  default_pool_size: 10
  auth_type: scram-sha-256
  auth_file: userlist.txt
databases:
  app:
    host: 127.0.0.1
    port: 5432
    dbname: app
"""


def test_check_reports_every_error_with_position(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG)
    r = subprocess.run([str(harness.sluice_bin()), "--check", str(bad)], capture_output=True,
                       text=True, timeout=20)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    found = {}
    for m in re.finditer(rf"^{re.escape(str(bad))}:(\d+):(\d+): (.+)$", out, re.M):
        found.setdefault(int(m.group(1)), []).append((int(m.group(2)), m.group(3)))
    assert {4, 5, 6} <= set(found), out
    for line in (4, 5, 6):
        assert all(col >= 1 for col, _ in found[line]), found
    assert re.search(r"sometimes|pool_mode", " ".join(t for _, t in found[4])), found
    assert re.search(r"no_such_setting|unknown", " ".join(t for _, t in found[6]), re.I), found

    good = tmp_path / "good.yaml"
    good.write_text(GOOD_CONFIG)
    (tmp_path / "userlist.txt").write_text('"app" "app_pw"\n')
    r = subprocess.run([str(harness.sluice_bin()), "--check", str(good)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sighup_reload_pool_size_keeps_clients(make_sluice):
    s = make_sluice(pool_mode="session", default_pool_size=1)
    a = connect(s)
    try:
        assert one(a, "SELECT 1") == 1
        result = {}

        def second():
            with connect(s) as b:
                result["pid"] = one(b, "SELECT pg_backend_pid()")

        t = threading.Thread(target=second, daemon=True)
        t.start()
        with console(s) as con:
            # The second session is queued (seen, not assumed after a fixed delay) ...
            assert wait_for(lambda: app_pool(con).get("cl_waiting") == 1), app_pool(con)
        # ... and stays so (the pool also looks at its waiters every second).
        t.join(1.0)
        assert t.is_alive() and not result, "pool of 1 served two sessions at once"
        s.update(default_pool_size=2)
        s.reload()
        t.join(DEADLINE)
        assert not t.is_alive(), f"waiting client not served after reload:\n{s.log_tail()}"
        assert "pid" in result
        assert one(a, "SELECT 2") == 2  # the first client survived the reload
        assert s.alive()
    finally:
        a.close()


def test_sighup_with_invalid_config_keeps_running(make_sluice):
    s = make_sluice()
    with connect(s) as a:
        s.config_path.write_text(s.config_path.read_text().replace(
            "pool_mode: session", "pool_mode: sometimes"))
        s.reload()
        # The reload has been tried (and refused), not merely signalled.
        assert wait_for(lambda: "RELOAD failed" in s.log_text()), s.log_tail()
        assert "pool_mode" in s.log_text().split("RELOAD failed", 1)[1], s.log_tail()
        assert s.alive()
        assert one(a, "SELECT 1") == 1
        with console(s) as con:
            cfg = {r[0]: r[1] for r in con.execute("SHOW CONFIG").fetchall()}
        assert cfg["pool_mode"] == "session", "the running configuration was not kept"
    assert_usable(s)


# workers 1: the only worker accepts its own connections (no main-thread hand-off)
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_waits_for_last_client(make_sluice, workers):
    s = make_sluice(workers=workers)
    c = connect(s)
    try:
        assert one(c, "SELECT 1") == 1
        s.signal(signal.SIGTERM)

        def refused():
            # A new client is refused once the SIGTERM has been acted on (polled: the
            # signal is handled asynchronously): the listener is closed, or a client
            # accepted meanwhile gets 57P01. Until then it logs in: leave again.
            # A reset is a refusal too: a connection still in the listen backlog when the
            # listener closes is answered RST by the kernel, at connect or at the first read
            # (seen under the thread sanitizer, whose slower signal handling widens the gap).
            try:
                r = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
            except (ConnectionRefusedError, ConnectionResetError):
                return True
            try:
                r.login("app", APP_PW, "app")
            except ConnectionResetError:
                return True
            except PgError as e:
                assert e.sqlstate == "57P01", e.fields
                return True
            finally:
                r.close()
            return False
        assert wait_for(refused, interval=0.1), "new clients still admitted after SIGTERM"
        assert s.alive(), "exited with a client still connected"
        assert one(c, "SELECT 2") == 2
        # No new clients once shutting down.
        with pytest.raises(psycopg.OperationalError):
            connect(s).close()
        assert one(c, "SELECT 3") == 3
    finally:
        c.close()
    rc = s.wait(DEADLINE)
    assert rc is not None, f"sluice still running {DEADLINE} s after the last client left"
    assert rc == 0, f"exit code {rc}"


def test_default_workers_is_half_the_usable_cores(make_sluice):
    """`workers: 0` starts half the cores this process may run on (its affinity mask),
    at least one, and says so in the log; the pooler still serves."""
    import os
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    s = make_sluice(workers=0)
    word = "thread" if expected == 1 else "threads"
    assert wait_for(lambda: f"{expected} worker {word} (workers: 0, half the usable cores)"
                    in s.log_text(), DEADLINE), s.log_tail()
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_explicit_workers_count_is_used(make_sluice):
    s = make_sluice(workers=3)
    assert wait_for(lambda: "3 worker threads" in s.log_text(), DEADLINE), s.log_tail()
    assert "half the usable cores" not in s.log_text()


def test_listen_addr_star_listens_on_ipv4_and_ipv6(make_sluice):
    """`listen_addr = *` is every address, IPv4 and IPv6, as in PgBouncer: clients reach
    Sluice over 127.0.0.1 and over ::1 (an IPv4-only listener refuses ::1)."""
    s = make_sluice(listen_addr="*")
    assert wait_for(lambda: f"listening on 0.0.0.0:{s.port}" in s.log_text()
                    and f"listening on [::]:{s.port}" in s.log_text(), DEADLINE), s.log_tail()
    for host in ("127.0.0.1", "::1"):
        with psycopg.connect(host=host, port=s.port, user="app", password=APP_PW, dbname="app",
                             autocommit=True, connect_timeout=10) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1, host


def test_quiet_writes_nothing_to_stderr_and_everything_to_the_logfile(make_sluice, workdir):
    """`-q` as PgBouncer's: nothing on stderr, while the logfile still gets the info lines
    (start-up, logins)."""
    logfile = workdir / "quiet-sluice.log"
    s = make_sluice(args=("-q",), logfile=str(logfile), log_connections=True)
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert wait_for(lambda: logfile.exists() and "login: db=app user=app" in logfile.read_text(),
                    DEADLINE), logfile.read_text() if logfile.exists() else "no logfile"
    assert "listening on 127.0.0.1" in logfile.read_text()
    # The harness's log of the process is its stdout and stderr: only the harness's own
    # "=== start" marker may be there.
    lines = [l for l in s.log_text().splitlines() if l.strip() and not l.startswith("=== start")]
    assert lines == [], lines


def test_sighup_reopens_the_log_file(make_sluice, workdir):
    """logrotate's way: the file is renamed, SIGHUP, and Sluice writes to a new file at the
    configured path; nothing more goes to the renamed one."""
    logfile = workdir / "rotated-sluice.log"
    s = make_sluice(logfile=str(logfile), log_connections=True)
    assert wait_for(lambda: logfile.exists() and "listening on" in logfile.read_text(), DEADLINE)
    old = workdir / "rotated-sluice.log.1"
    logfile.rename(old)
    s.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: logfile.exists() and "reopened" in logfile.read_text(), DEADLINE), \
        s.log_tail()
    with psycopg.connect(s.dsn("app", APP_PW, "app"), application_name="after_rotate",
                         autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert wait_for(lambda: "app=after_rotate" in logfile.read_text(), DEADLINE), \
        logfile.read_text()
    assert "after_rotate" not in old.read_text()


def test_trust_still_needs_the_user_in_auth_file(make_sluice):
    """auth_type trust: no password asked, but only users listed in auth_file get in (as
    PgBouncer); `any` takes any name."""
    s = make_sluice(auth_type="trust")
    with psycopg.connect(f"host=127.0.0.1 port={s.port} user=app dbname=app sslmode=disable",
                         autocommit=True, connect_timeout=10) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "app"
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(f"host=127.0.0.1 port={s.port} user=not_listed dbname=app "
                        "sslmode=disable", connect_timeout=10)
    assert "no such user: not_listed" in str(ei.value)
    assert wait_for(lambda: "closing because: no such user: not_listed" in s.log_text(),
                    DEADLINE), s.log_tail()


def test_disconnect_reasons_in_the_log(make_sluice):
    """log_disconnections says why, in PgBouncer's words: Terminate is `client close
    request`, a vanished client `client unexpected eof`, and one that vanished with a
    query running says so."""
    s = make_sluice(log_disconnections=True, pool_mode="transaction")
    polite = RawPg("127.0.0.1", s.port, timeout=10)
    polite.login("app", APP_PW, "app")
    polite.send(message(b"X", b""))
    gone = RawPg("127.0.0.1", s.port, timeout=10)
    gone.login("app", APP_PW, "app")
    gone.close()  # FIN without Terminate
    busy = RawPg("127.0.0.1", s.port, timeout=10)
    busy.login("app", APP_PW, "app")
    busy.send(message(b"Q", b"SELECT pg_sleep(30)\0"))
    time.sleep(0.2)  # (the query reaches the server; the assertion below waits anyway)
    busy.abort()
    reasons = ["closing because: client close request (age=",
               "closing because: client unexpected eof (age=",
               "closing because: client unexpected eof (with a query in progress) (age="]
    assert wait_for(lambda: all(r in s.log_text() for r in reasons), DEADLINE), s.log_tail()
