"""Issue 3: transaction and statement pooling, prepared statements, parameter tracking,
COPY, client mistakes, limits and timeouts, against real PostgreSQL 15 and real clients.

Each test asserts the exact outcome it names (SQLSTATE, message, server counts seen in
pg_stat_activity from a direct superuser connection, no dirty server reused).
"""
from __future__ import annotations

import struct
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple

import psycopg
import psycopg.errors
import pytest
from psycopg import pq

import harness
from harness import DEADLINE, wait_for
from harness import PgError, RawPg, SYNC, m_bind, m_describe_portal, m_execute, m_parse, message
from conftest import ADMIN_PW, APP_PW

PSQL = str(harness.PG_BIN / "psql")
TXN = "transaction"

# Deadline for anything a test waits on: generous, so that a slow or loaded machine
# (sanitizer builds, two shared cores) changes how long a test runs, never its verdict.


# ---------------------------------------------------------------------------------------
# Helpers


def connect(s, user="app", password=None, db="app", **kw):
    return psycopg.connect(s.dsn(user, password, db), autocommit=True, **kw)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def superuser(pg, db="app"):
    """Direct connection to PostgreSQL (unix socket, trust), bypassing Sluice."""
    return psycopg.connect(host=str(pg.sockdir), port=pg.port, user="postgres", dbname=db,
                           autocommit=True)


@pytest.fixture
def su(pg):
    c = superuser(pg)
    # Servers left by an earlier test's Sluice may take a moment to exit (the counts the
    # tests assert start from zero: checked, not hoped for).
    assert wait_for(lambda: app_servers(c) == 0, DEADLINE), \
        f"{app_servers(c)} app servers left over from an earlier test"
    try:
        yield c
    finally:
        c.close()


APP_SERVERS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                   "AND datname = 'app' AND backend_type = 'client backend'")


def app_servers(su, state: Optional[str] = None) -> int:
    if state is None:
        return one(su, APP_SERVERS_SQL)
    return one(su, APP_SERVERS_SQL + " AND state = %s", (state,))


class Sampler:
    """Samples the number of app server connections in pg_stat_activity in a thread.
    Each sample is (start, end, count): when its query was sent, when it was answered."""

    def __init__(self, pg, interval: float = 0.1):
        self.pg = pg
        self.interval = interval
        self.timed: List[Tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @property
    def samples(self) -> List[int]:
        return [n for _, _, n in self.timed]

    def between(self, t0: float, t1: float) -> List[int]:
        """Counts sampled wholly within [t0, t1]."""
        return [n for a, b, n in self.timed if a >= t0 and b <= t1]

    def _run(self):
        with superuser(self.pg) as c:
            while True:
                a = time.monotonic()
                n = app_servers(c)
                self.timed.append((a, time.monotonic(), n))
                self._started.set()
                if self._stop.is_set():
                    return  # the last sample is taken after the stop was asked
                self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        assert self._started.wait(DEADLINE), "the sampler took no first sample"
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(DEADLINE)
        assert not self._t.is_alive(), "the sampler did not stop"


def run_thread(fn):
    """Starts fn() in a daemon thread; returns (thread, box) where box holds
    'result'/'error' and 'elapsed' once done."""
    box: Dict[str, object] = {}

    def wrap():
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=wrap, daemon=True)
    t.start()
    return t, box


def libpq(s) -> pq.PGconn:
    """A raw blocking libpq connection (psycopg.pq), for prepare/exec_prepared/pipeline."""
    c = pq.PGconn.connect(s.dsn().encode())
    assert c.status == pq.ConnStatus.OK, c.error_message
    return c


def sqlstate(res: pq.PGresult) -> Optional[str]:
    v = res.error_field(pq.DiagnosticField.SQLSTATE)
    return v.decode() if v else None


def raw_login(s, params=None, timeout: float = DEADLINE) -> RawPg:
    c = RawPg("127.0.0.1", s.port, timeout=timeout)
    c.login("app", APP_PW, "app", params)
    return c


def console(s):
    """The admin console (simple query protocol only: no prepared statements)."""
    return psycopg.connect(s.dsn("admin", ADMIN_PW, "sluice"), autocommit=True,
                           prepare_threshold=None)


def cl_waiting(s) -> int:
    """Clients of database app queued for a server, as SHOW POOLS counts them."""
    with console(s) as con:
        cur = con.execute("SHOW POOLS")
        cols = [d.name for d in cur.description]
        return sum(r["cl_waiting"] for r in (dict(zip(cols, x)) for x in cur.fetchall())
                   if r["database"] == "app")


FLUSH = message(b"H")


def read_until_ready(c: RawPg, timeout: float = DEADLINE) -> List[Tuple[bytes, bytes]]:
    """Messages up to and including ReadyForQuery; raises on EOF."""
    c.sock.settimeout(timeout)
    msgs = []
    while True:
        m = c.read_msg()
        if m is None:
            raise ConnectionError(f"closed before ReadyForQuery; got {msgs!r}")
        msgs.append(m)
        if m[0] == b"Z":
            c.txn_status = m[1][:1].decode()
            return msgs


def errors_in(msgs) -> List[Dict[str, str]]:
    return [harness.parse_error_fields(b) for k, b in msgs if k == b"E"]


def data_rows(msgs) -> List[List[Optional[str]]]:
    return [harness.parse_data_row(body) for k, body in msgs if k == b"D"]


def assert_clean_server(s, su, max_servers: int):
    """A new client gets a server that is idle (not in a transaction), with no advisory
    locks or temp tables left over, and no app server is idle in transaction."""
    c = raw_login(s)
    try:
        rows, err = c.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert err is None, err
        assert rows == [["0"]], rows
        assert c.txn_status == "I"
        rows, err = c.query("SELECT to_regclass('pg_temp.leftover') IS NULL, "
                            "current_setting('application_name')")
        assert err is None, err
        assert rows == [["t", ""]], rows
        assert c.txn_status == "I"
    finally:
        c.terminate()
    # A server Sluice closed may still be exiting: polled, with a generous deadline.
    assert wait_for(lambda: app_servers(su, "idle in transaction") == 0, DEADLINE)
    assert wait_for(lambda: app_servers(su, "idle in transaction (aborted)") == 0, DEADLINE)
    assert wait_for(lambda: app_servers(su) <= max_servers, DEADLINE), app_servers(su)


def assert_usable(s):
    with connect(s) as c:
        assert one(c, "SELECT 41 + 1") == 42


# ---------------------------------------------------------------------------------------
# pgbench: 50 clients on 5 servers


@pytest.mark.timeout(120)
@pytest.mark.parametrize("proto", ["simple", "extended", "prepared"])
def test_pgbench_50_clients_pool_of_5(pgbench_db, make_sluice, su, proto):
    # The issue asks for -T 20; CI uses -T 8 to keep the suite's run time down (three
    # protocols). Same -j 2 -c 50 and pool_size 5.
    s = make_sluice(pool_mode=TXN, default_pool_size=5, max_client_conn=200)
    with Sampler(pgbench_db, interval=0.1) as sampler:
        t0 = time.monotonic()
        r = harness.pgbench(["-n", "-j", "2", "-c", "50", "-T", "8", "-M", proto],
                            "127.0.0.1", s.port, "app", APP_PW, "app", timeout=90)
        t1 = time.monotonic()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "number of failed transactions: 0" in r.stdout, out
    res = harness.parse_pgbench(r.stdout)
    assert res.get("processed", 0) > 0, out
    # Sampled before, during (however many samples the machine managed: a count of
    # samples is no property of Sluice) and after the run.
    assert sampler.between(t0, t1), sampler.timed
    assert max(sampler.samples) <= 5, sampler.samples
    # The pool was used up to its size: the bound above was tested at capacity (servers
    # stay in the pool, so the sample taken after the run sees them all).
    assert max(sampler.samples) == 5, sampler.samples
    # Nothing left in a transaction afterwards.
    assert app_servers(su, "idle in transaction") == 0


# ---------------------------------------------------------------------------------------
# Isolation on a pool of one


def test_set_parameters_isolated_between_clients(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    a, b = connect(s), connect(s)
    try:
        params = ("TimeZone", "search_path", "application_name")
        defaults = {p: one(b, f"SHOW {p}") for p in params}
        # One server: both clients run on the same backend.
        assert one(a, "SELECT pg_backend_pid()") == one(b, "SELECT pg_backend_pid()")

        a_vals = {"TimeZone": "Asia/Tokyo", "search_path": "a_schema, public",
                  "application_name": "client_a"}
        assert defaults["TimeZone"] != "Asia/Tokyo"
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        assert one(b, "SHOW TimeZone") == defaults["TimeZone"]
        a.execute("SET search_path = a_schema, public")
        assert one(b, "SHOW search_path") == defaults["search_path"]
        a.execute("SET application_name = 'client_a'")
        assert one(b, "SHOW application_name") == defaults["application_name"]
        for p in params:
            assert one(a, f"SHOW {p}") == a_vals[p], p
            assert one(b, f"SHOW {p}") == defaults[p], p
            assert one(a, f"SHOW {p}") == a_vals[p], p
        # B sets its own; neither sees the other's.
        b.execute("SET TimeZone = 'Europe/Paris'")
        b.execute("SET application_name = 'client_b'")
        for _ in range(3):
            assert one(a, "SHOW TimeZone") == "Asia/Tokyo"
            assert one(b, "SHOW TimeZone") == "Europe/Paris"
            assert one(a, "SELECT current_setting('application_name')") == "client_a"
            assert one(b, "SELECT current_setting('application_name')") == "client_b"
            assert one(b, "SHOW search_path") == defaults["search_path"]
        assert one(a, "SELECT pg_backend_pid()") == one(b, "SELECT pg_backend_pid()")
    finally:
        a.close()
        b.close()


def test_set_parameters_isolated_concurrent_threads(make_sluice):
    """Two threads hammer one server, each with its own TimeZone/application_name."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    zones = ["Asia/Tokyo", "America/Chicago"]
    wrong: List[str] = []

    def worker(i):
        with connect(s) as c:
            c.execute(f"SET TimeZone = '{zones[i]}'")
            c.execute(f"SET application_name = 'thread_{i}'")
            for _ in range(100):
                tz, app = c.execute("SELECT current_setting('TimeZone'), "
                                    "current_setting('application_name')").fetchone()
                if (tz, app) != (zones[i], f"thread_{i}"):
                    wrong.append(f"thread {i} saw {tz}/{app}")

    threads = [run_thread(lambda i=i: worker(i)) for i in range(2)]
    for t, box in threads:
        t.join(60)
        assert not t.is_alive()
        assert "error" not in box, box
    assert not wrong, wrong[:5]


def test_same_prepared_name_different_text_per_client(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    a, b = libpq(s), libpq(s)
    try:
        r = a.prepare(b"s1", b"SELECT 'from A'::text, $1::int + 1")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        r = b.prepare(b"s1", b"SELECT 'from B: ' || $1::text")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        da, db_ = a.describe_prepared(b"s1"), b.describe_prepared(b"s1")
        assert (da.nfields, db_.nfields) == (2, 1)
        for i in range(5):
            ra = a.exec_prepared(b"s1", [str(i).encode()])
            assert ra.status == pq.ExecStatus.TUPLES_OK, ra.error_message
            assert (ra.get_value(0, 0), ra.get_value(0, 1)) == (b"from A", str(i + 1).encode())
            rb = b.exec_prepared(b"s1", [str(i).encode()])
            assert rb.status == pq.ExecStatus.TUPLES_OK, rb.error_message
            assert rb.nfields == 1
            assert rb.get_value(0, 0) == f"from B: {i}".encode()
        pa = a.exec_(b"SELECT pg_backend_pid()").get_value(0, 0)
        pb = b.exec_(b"SELECT pg_backend_pid()").get_value(0, 0)
        assert pa == pb  # really the same server

        # DEALLOCATE ALL clears A's statements only.
        r = a.exec_(b"DEALLOCATE ALL")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        r = a.exec_prepared(b"s1", [b"1"])
        assert r.status == pq.ExecStatus.FATAL_ERROR
        assert sqlstate(r) == "26000", r.error_message
        rb = b.exec_prepared(b"s1", [b"x"])
        assert rb.status == pq.ExecStatus.TUPLES_OK, rb.error_message
        assert rb.get_value(0, 0) == b"from B: x"
        # A can prepare s1 again, with yet another text.
        r = a.prepare(b"s1", b"SELECT 'A again'::text")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        r = a.exec_prepared(b"s1", None)
        assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
        assert r.get_value(0, 0) == b"A again"
    finally:
        a.finish()
        b.finish()


def test_deallocate_all_then_execute_fails_26000(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    c = libpq(s)
    try:
        for name in (b"s1", b"s2"):
            r = c.prepare(name, b"SELECT 1")
            assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        r = c.exec_(b"DEALLOCATE ALL")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        for name in (b"s1", b"s2"):
            r = c.exec_prepared(name, None)
            assert r.status == pq.ExecStatus.FATAL_ERROR, name
            assert sqlstate(r) == "26000", r.error_message
        r = c.exec_(b"SELECT 7")
        assert r.status == pq.ExecStatus.TUPLES_OK and r.get_value(0, 0) == b"7"
    finally:
        c.finish()


def test_libpq_pipeline_results_in_order(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    other = connect(s)
    c = libpq(s)
    try:
        c.enter_pipeline_mode()
        c.send_prepare(b"pp", b"SELECT $1::int * 10")
        for i in range(5):
            c.send_query_prepared(b"pp", [str(i).encode()])
        c.send_query_params(b"SELECT 'last'::text", None)
        c.pipeline_sync()
        c.flush()
        got = []
        r = c.get_result()
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message  # the prepare
        assert c.get_result() is None
        for i in range(5):
            r = c.get_result()
            assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
            got.append(r.get_value(0, 0))
            assert c.get_result() is None
        r = c.get_result()
        assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
        got.append(r.get_value(0, 0))
        assert c.get_result() is None
        r = c.get_result()
        assert r.status == pq.ExecStatus.PIPELINE_SYNC
        c.exit_pipeline_mode()
        assert got == [b"0", b"10", b"20", b"30", b"40", b"last"]
        # The other client shares the only server, before and after.
        assert one(other, "SELECT 5") == 5
        r = c.exec_prepared(b"pp", [b"9"])
        assert r.status == pq.ExecStatus.TUPLES_OK and r.get_value(0, 0) == b"90"
    finally:
        c.finish()
        other.close()


def test_raw_pipeline_several_parse_bind_execute_one_sync(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    other = connect(s)
    c = raw_login(s)
    try:
        batch = b""
        for i in range(4):
            batch += m_parse("", f"SELECT {i} AS n") + m_bind() + m_describe_portal() \
                + m_execute()
        batch += m_parse("named_q", "SELECT $1::text || '!'") \
            + m_bind("", "named_q", (b"hey",)) + m_execute()
        c.send(batch + SYNC)
        msgs = read_until_ready(c)
        assert not errors_in(msgs), errors_in(msgs)
        assert data_rows(msgs) == [["0"], ["1"], ["2"], ["3"], ["hey!"]]
        assert c.txn_status == "I"
        assert [k for k, _ in msgs].count(b"1") == 5  # ParseComplete each
        assert [k for k, _ in msgs].count(b"C") == 5

        # An error in the middle: the rest up to Sync is skipped, as PostgreSQL does.
        c.send(m_parse("", "SELECT 1") + m_bind() + m_execute()
               + m_parse("", "SELECT 1/0") + m_bind() + m_execute()
               + m_parse("", "SELECT 3") + m_bind() + m_execute() + SYNC)
        msgs = read_until_ready(c)
        errs = errors_in(msgs)
        assert [e["C"] for e in errs] == ["22012"], errs
        assert data_rows(msgs) == [["1"]]
        assert c.txn_status == "I"
        assert one(other, "SELECT 6") == 6
        rows, err = c.query("SELECT 'after'")
        assert err is None and rows == [["after"]]
    finally:
        c.terminate()
        other.close()


# ---------------------------------------------------------------------------------------
# Statement mode


def test_statement_mode(make_sluice, su):
    s = make_sluice(pool_mode="statement", default_pool_size=1)
    with connect(s) as c:
        assert one(c, "SELECT 1") == 1
        assert one(c, "SELECT %s::int + 1", (41,)) == 42  # extended protocol
        assert one(c, "SELECT 'x'") == "x"
    c = raw_login(s, timeout=DEADLINE)
    try:
        try:
            rows, err = c.query("BEGIN")
        except ConnectionError as e:
            pytest.fail(f"closed without an error message: {e}")
        assert err is not None, "BEGIN was accepted in statement mode"
        assert "transaction blocks not allowed in statement pooling mode" in err.get("M", ""), err
        # The client is disconnected (raises socket.timeout if it stays open).
        c.read_until_close(timeout=DEADLINE)
    finally:
        c.close()
    # The pool is healthy for the next client, and nothing is left in a transaction.
    with connect(s) as c:
        assert one(c, "SELECT 2") == 2
        assert one(c, "SELECT 3") == 3
    assert app_servers(su, "idle in transaction") == 0
    assert app_servers(su) <= 1


# ---------------------------------------------------------------------------------------
# COPY through transaction mode


@pytest.fixture
def copy_table(su):
    su.execute("DROP TABLE IF EXISTS copy_t")
    su.execute("CREATE TABLE copy_t (id int PRIMARY KEY, t text)")
    su.execute("ALTER TABLE copy_t OWNER TO app")
    yield "copy_t"
    su.execute("DROP TABLE IF EXISTS copy_t")


def test_copy_in_and_out(make_sluice, su, copy_table):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    other = connect(s)
    with connect(s) as c:
        with c.cursor() as cur:
            with cur.copy("COPY copy_t (id, t) FROM STDIN") as cp:
                for i in range(5000):
                    cp.write_row((i, f"row {i}"))
        assert one(c, "SELECT count(*) FROM copy_t") == 5000
        assert one(other, "SELECT count(*) FROM copy_t") == 5000
        rows = []
        with c.cursor() as cur:
            with cur.copy("COPY (SELECT id, t FROM copy_t ORDER BY id) TO STDOUT") as cp:
                for row in cp.rows():
                    rows.append(row)
        assert len(rows) == 5000
        assert rows[0] == ("0", "row 0") and rows[-1] == ("4999", "row 4999")
        # Raw bytes too.
        with c.cursor() as cur:
            with cur.copy("COPY (SELECT id FROM copy_t WHERE id < 3 ORDER BY id) "
                          "TO STDOUT") as cp:
                data = b"".join(bytes(b) for b in cp)
        assert data == b"0\n1\n2\n"
        assert one(c, "SELECT 1") == 1
    assert one(other, "SELECT 2") == 2
    other.close()
    assert app_servers(su) <= 1
    assert app_servers(su, "idle in transaction") == 0


def test_copy_failing_bad_data(make_sluice, su, copy_table):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    with connect(s) as c:
        assert one(c, "SELECT 1") == 1
        before = app_servers(su)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as ei:
            with c.cursor() as cur:
                with cur.copy("COPY copy_t (id, t) FROM STDIN") as cp:
                    cp.write(b"1\tok\n2\tok\nnot_a_number\tbad\n3\tok\n")
        assert ei.value.sqlstate == "22P02"
        # Connection usable, nothing committed, same number of servers.
        assert one(c, "SELECT count(*) FROM copy_t") == 0
        assert one(c, "SELECT 'alive'") == "alive"
        assert app_servers(su) == before
    with connect(s) as c2:
        assert one(c2, "SELECT count(*) FROM copy_t") == 0
    assert app_servers(su, "idle in transaction") == 0
    assert app_servers(su, "idle in transaction (aborted)") == 0


def test_copy_aborted_by_client(make_sluice, su, copy_table):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)

    class Boom(Exception):
        pass

    with connect(s) as c:
        assert one(c, "SELECT 1") == 1
        before = app_servers(su)
        # psycopg sends CopyFail; PostgreSQL answers 57014, which psycopg 3.1 raises in
        # place of our exception.
        with pytest.raises((Boom, psycopg.errors.QueryCanceled)) as ei:
            with c.cursor() as cur:
                with cur.copy("COPY copy_t (id, t) FROM STDIN") as cp:
                    cp.write_row((1, "a"))
                    cp.write_row((2, "b"))
                    raise Boom()
        if isinstance(ei.value, psycopg.Error):
            assert ei.value.sqlstate == "57014", ei.value
            assert "Boom" in str(ei.value)
        assert one(c, "SELECT count(*) FROM copy_t") == 0
        assert one(c, "SELECT 'alive'") == "alive"
        assert app_servers(su) == before
    with connect(s) as c2:
        assert one(c2, "SELECT 2") == 2
    assert app_servers(su, "idle in transaction") == 0


def test_copy_in_client_vanishes(make_sluice, su, copy_table):
    """A client that disconnects in the middle of COPY FROM STDIN: the next client on the
    pool of one gets a clean server and none of the rows."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    c = raw_login(s)
    c.send(message(b"Q", b"COPY copy_t (id, t) FROM STDIN\0"))
    kind, _ = c.read_msg()
    assert kind == b"G", kind  # CopyInResponse
    c.send(message(b"d", b"1\ta\n2\tb\n"))
    # Vanish once the server has the rows (seen in its COPY progress), not after a
    # fixed delay that may or may not have let them arrive.
    assert wait_for(lambda: one(su, "SELECT coalesce(max(tuples_processed), 0) FROM "
                                    "pg_stat_progress_copy WHERE relid = 'copy_t'::regclass")
                    >= 2, DEADLINE), "the COPY rows never reached the server"
    c.abort()
    with connect(s) as c2:
        assert one(c2, "SELECT count(*) FROM copy_t") == 0
        assert one(c2, "SELECT 1") == 1
    assert_clean_server(s, su, 1)


def test_copy_out_then_other_client(make_sluice, su, copy_table):
    """COPY TO STDOUT of a large table, with another client waiting on the pool of one."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    su.execute("INSERT INTO copy_t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    with connect(s) as c:
        t, box = run_thread(lambda: _one_query(s, "SELECT 99"))
        n = 0
        with c.cursor() as cur:
            with cur.copy("COPY copy_t TO STDOUT") as cp:
                for _ in cp.rows():
                    n += 1
        assert n == 20000
        t.join(DEADLINE)
        assert not t.is_alive(), "the waiting client was not served after the COPY"
        assert box.get("result") == 99, box
        assert one(c, "SELECT 1") == 1
    assert app_servers(su) <= 1


def _one_query(s, sql):
    with connect(s) as c:
        return one(c, sql)


# ---------------------------------------------------------------------------------------
# Client mistakes


def test_bind_unknown_statement_26000(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    c = raw_login(s)
    try:
        c.send(m_bind("", "never_prepared") + m_execute() + SYNC)
        msgs = read_until_ready(c)
        errs = errors_in(msgs)
        assert [e["C"] for e in errs] == ["26000"], errs
        assert "never_prepared" in errs[0]["M"], errs
        assert c.txn_status == "I"
        rows, err = c.query("SELECT 1")
        assert err is None and rows == [["1"]]
    finally:
        c.terminate()
    # Same through libpq's PQexecPrepared.
    p = libpq(s)
    try:
        r = p.exec_prepared(b"never_prepared_either", None)
        assert r.status == pq.ExecStatus.FATAL_ERROR
        assert sqlstate(r) == "26000", r.error_message
        r = p.exec_(b"SELECT 2")
        assert r.status == pq.ExecStatus.TUPLES_OK and r.get_value(0, 0) == b"2"
    finally:
        p.finish()
    assert_usable(s)


def test_execute_unknown_portal_34000(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    c = raw_login(s)
    try:
        c.send(m_execute("no_such_portal") + SYNC)
        msgs = read_until_ready(c)
        errs = errors_in(msgs)
        assert [e["C"] for e in errs] == ["34000"], errs
        assert c.txn_status == "I"
        rows, err = c.query("SELECT 1")
        assert err is None and rows == [["1"]]
    finally:
        c.terminate()
    assert_usable(s)
    assert app_servers(su, "idle in transaction") == 0


@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "unflushed"])
def test_syncless_batch_cut_off_by_disconnect(make_sluice, su, flush):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    c = raw_login(s)
    batch = (m_parse("", "BEGIN") + m_bind() + m_execute()
             + m_parse("", "SELECT pg_advisory_xact_lock(4242)") + m_bind() + m_execute()
             + m_parse("", "CREATE TEMP TABLE leftover (i int)") + m_bind() + m_execute()
             + m_parse("", "SET application_name = 'leftover'") + m_bind() + m_execute())
    if flush:
        c.send(batch + FLUSH)
        seen = []
        while [k for k, _ in seen].count(b"C") < 4:
            m = c.read_msg()
            assert m is not None, seen
            assert m[0] != b"E", harness.parse_error_fields(m[1])
            seen.append(m)
        # No Sync yet, so pg_stat_activity still says 'active'; the lock shows the
        # transaction is open on the server.
        assert wait_for(lambda: one(su, "SELECT count(*) FROM pg_locks WHERE "
                                        "locktype = 'advisory' AND granted") == 1, DEADLINE)
    else:
        c.send(batch)
        # Nothing is answered without Sync or Flush, but the batch runs: its lock shows
        # it reached the server (polled, where a fixed 0.3 s sleep hoped so).
        assert wait_for(lambda: one(su, "SELECT count(*) FROM pg_locks WHERE "
                                        "locktype = 'advisory' AND granted") == 1, DEADLINE)
    c.abort()
    # The next client waits for the pool's one server until Sluice has dealt with the
    # vanished one; assert_clean_server polls what PostgreSQL shows afterwards.
    assert_clean_server(s, su, 1)
    assert_usable(s)


# ---------------------------------------------------------------------------------------
# Limits


# workers 1: the only worker accepts its own connections (no main-thread hand-off)
@pytest.mark.parametrize("workers", [1, 2])
def test_max_client_conn_53300(make_sluice, workers):
    s = make_sluice(pool_mode=TXN, default_pool_size=2, max_client_conn=3, workers=workers)
    held = [connect(s) for _ in range(3)]
    try:
        for c in held:
            assert one(c, "SELECT 1") == 1
        c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
        try:
            with pytest.raises(PgError) as ei:
                c.login("app", APP_PW, "app")
        finally:
            c.close()
        assert ei.value.sqlstate == "53300", ei.value.fields
        assert "no more connections allowed" in ei.value.message, ei.value.fields
        held.pop().close()

        def can_connect():
            try:
                assert_usable(s)
                return True
            except psycopg.OperationalError:
                return False
        assert wait_for(can_connect, DEADLINE, 0.2), s.log_tail(20)
        for c in held:
            assert one(c, "SELECT 2") == 2
    finally:
        for c in held:
            c.close()


def _hold_transactions(s, n):
    held = []
    for _ in range(n):
        c = connect(s)
        c.execute("BEGIN")
        c.execute("SELECT 1")
        held.append(c)
    return held


LIMIT_CONFIGS = {
    "max_db_connections": dict(config={"databases": {"app": {"max_db_connections": 2}}}),
    "max_user_connections": dict(config={"users": {"app": {"max_user_connections": 2}}}),
    "max_db_connections_global": dict(max_db_connections=2),
    "max_user_connections_global": dict(max_user_connections=2),
}


@pytest.mark.parametrize("limit", list(LIMIT_CONFIGS))
def test_connection_limit_waits_then_served(make_sluice, su, limit):
    s = make_sluice(pool_mode=TXN, default_pool_size=5, **LIMIT_CONFIGS[limit])
    held = _hold_transactions(s, 2)
    try:
        assert app_servers(su) == 2
        waiter = connect(s)
        t, box = run_thread(lambda: one(waiter, "SELECT 42"))
        # Queued (seen in SHOW POOLS, not assumed after a fixed delay) ...
        assert wait_for(lambda: cl_waiting(s) == 1, DEADLINE), f"not queued: {box}"
        # ... and kept so (the pool also looks at its waiters every second).
        t.join(1.5)
        assert t.is_alive(), f"served beyond the limit: {box}"
        assert app_servers(su) == 2
        held[0].execute("COMMIT")
        t.join(DEADLINE)
        assert not t.is_alive(), "waiting client was not served after a server was freed"
        assert box.get("result") == 42, box
        assert app_servers(su) <= 2
        waiter.close()
    finally:
        for c in held:
            c.close()
    assert_usable(s)
    assert app_servers(su) <= 2


@pytest.mark.parametrize("limit", list(LIMIT_CONFIGS))
def test_connection_limit_query_wait_timeout(make_sluice, su, limit):
    s = make_sluice(pool_mode=TXN, default_pool_size=5, query_wait_timeout=1,
                    **LIMIT_CONFIGS[limit])
    held = _hold_transactions(s, 2)
    try:
        err, elapsed = _wait_timeout_error(s, "SELECT 42")
        assert err.get("C") == "53300", err
        assert "query_wait_timeout" in err.get("M", ""), err
        assert elapsed >= 0.8, elapsed  # not early; no upper bound (the deadline is 30 s)
        assert app_servers(su) == 2
    finally:
        for c in held:
            c.close()
    assert_usable(s)


def _wait_timeout_error(s, sql):
    """Runs sql on a new raw client that has to wait; returns (error fields, seconds).
    The read deadline is generous: the error must come, however slowly."""
    c = raw_login(s, timeout=DEADLINE)
    try:
        t0 = time.monotonic()
        try:
            rows, err = c.query(sql)
        except (ConnectionError, OSError) as e:
            pytest.fail(f"waiting client closed without an error message: {e!r}")
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    assert err is not None, f"query ran ({rows}) instead of timing out in the queue"
    return err, elapsed


def test_query_wait_timeout_pool_of_one(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, query_wait_timeout=1)
    held = _hold_transactions(s, 1)
    try:
        err, elapsed = _wait_timeout_error(s, "SELECT 1")
        assert err.get("C") == "53300", err
        assert "query_wait_timeout" in err.get("M", ""), err
        assert elapsed >= 0.8, elapsed  # not early; no upper bound (the deadline is 30 s)
        # The holder is unaffected.
        assert one(held[0], "SELECT 5") == 5
        held[0].execute("COMMIT")
    finally:
        for c in held:
            c.close()
    assert_usable(s)
    assert app_servers(su) == 1


def test_reserve_pool_after_timeout(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=2, reserve_pool_size=1,
                    reserve_pool_timeout=1)
    held = _hold_transactions(s, 2)
    try:
        assert app_servers(su) == 2
        waiter = connect(s)
        t, box = run_thread(lambda: one(waiter, "SELECT 43"))
        time.sleep(0.5)
        assert t.is_alive(), "served from the reserve before reserve_pool_timeout"
        t.join(DEADLINE)
        assert not t.is_alive(), "no reserve connection after reserve_pool_timeout"
        assert box.get("result") == 43, box
        assert box["elapsed"] >= 0.9, box  # not before reserve_pool_timeout
        assert app_servers(su) == 3  # pool_size + 1
        assert "app/app: taking connection from reserve_pool" in s.log_text(), s.log_tail()
        # The reserve is only one deep: a second waiter waits again.
        waiter2 = connect(s)
        held.append(waiter)
        waiter.execute("BEGIN")
        waiter.execute("SELECT 1")
        t2, box2 = run_thread(lambda: one(waiter2, "SELECT 44"))
        # Queued (seen, not assumed), then given longer than reserve_pool_timeout.
        assert wait_for(lambda: cl_waiting(s) == 1, DEADLINE), f"not queued: {box2}"
        t2.join(2)
        assert t2.is_alive(), f"served beyond pool_size + reserve_pool_size: {box2}"
        assert app_servers(su) == 3
        held[0].execute("COMMIT")
        t2.join(DEADLINE)
        assert not t2.is_alive(), "the second waiter was not served after a COMMIT"
        assert box2.get("result") == 44, box2
        waiter2.close()
    finally:
        for c in held:
            c.close()
    assert_usable(s)
    assert app_servers(su) <= 3


def _pools_row(s) -> Dict[str, int]:
    with console(s) as con:
        cur = con.execute("SHOW POOLS")
        cols = [d.name for d in cur.description]
        return next(dict(zip(cols, r)) for r in cur.fetchall() if r[0] == "app")


def _queue_raw_query(s, sql: str) -> RawPg:
    """A raw client whose query waits in the queue (seen in SHOW POOLS, not assumed)."""
    q = raw_login(s)
    q.send(message(b"Q", sql.encode() + b"\0"))
    assert wait_for(lambda: cl_waiting(s) == 1, DEADLINE), "the query did not queue"
    return q


def test_client_that_leaves_while_queued_gives_its_server_back(make_sluice, su):
    """A request queued for a server (parked in the pool's queue) whose client then goes
    away: the server handed to it when the holder commits goes back clean, the next
    client gets it, and the pool still has exactly one server, idle at the end."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    held = _hold_transactions(s, 1)
    try:
        q = _queue_raw_query(s, "SELECT 7")
        q.close()
        held[0].execute("COMMIT")
        assert wait_for(lambda: cl_waiting(s) == 0, DEADLINE), _pools_row(s)
        with connect(s) as c:
            assert one(c, "SELECT 8") == 8
        assert app_servers(su) == 1
        assert wait_for(lambda: _pools_row(s)["sv_idle"] == 1, DEADLINE), _pools_row(s)
    finally:
        for c in held:
            c.close()
    assert s.alive(), s.log_tail()


def test_kill_client_while_queued(make_sluice, su):
    """KILL_CLIENT on a client whose request waits for a server: the client is
    disconnected at once, the server it is handed later goes back, and the pool serves
    the next client."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    held = _hold_transactions(s, 1)
    try:
        q = _queue_raw_query(s, "SELECT 7")
        with console(s) as con:
            cur = con.execute("SHOW CLIENTS")
            cols = [d.name for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            waiting = [r for r in rows if r["database"] == "app" and r["state"] == "waiting"]
            assert len(waiting) == 1, rows
            con.execute(f"KILL_CLIENT {waiting[0]['id']}")
        msgs = q.read_until_close(timeout=DEADLINE)
        assert not any(t == b"T" or t == b"D" for t, _ in msgs), msgs  # never served
        q.close()
        held[0].execute("COMMIT")
        assert wait_for(lambda: cl_waiting(s) == 0, DEADLINE), _pools_row(s)
        assert_usable(s)
        assert app_servers(su) == 1
    finally:
        for c in held:
            c.close()


def test_queued_requests_are_served_in_order_of_arrival(make_sluice, su):
    """Five requests queued behind one server: each is served once the server frees up,
    first come first served, with the right answer, and the wait shows in SHOW STATS.
    (One worker: with several, a released server may go to a waiter on its own worker
    a bounded number of times ahead of its turn.)"""
    s = make_sluice(pool_mode=TXN, default_pool_size=1, workers=1)
    held = _hold_transactions(s, 1)
    clients = []
    try:
        for i in range(5):
            c = raw_login(s)
            c.send(message(b"Q", f"SELECT {i}, clock_timestamp()".encode() + b"\0"))
            clients.append(c)
            assert wait_for(lambda: cl_waiting(s) == i + 1, DEADLINE), _pools_row(s)
        held[0].execute("COMMIT")
        served = []
        for i, c in enumerate(clients):
            msgs = read_until_ready(c)
            rows = [p for t, p in msgs if t == b"D"]
            assert len(rows) == 1, msgs
            (n,) = struct.unpack("!h", rows[0][:2])
            assert n == 2
            (l0,) = struct.unpack("!i", rows[0][2:6])
            value = int(rows[0][6:6 + l0])
            (l1,) = struct.unpack("!i", rows[0][6 + l0:10 + l0])
            served.append((rows[0][10 + l0:10 + l0 + l1].decode(), value))
        assert [v for _, v in served] == list(range(5))
        assert [t for t, _ in served] == sorted(t for t, _ in served), served
        with console(s) as con:
            cur = con.execute("SHOW STATS")
            cols = [d.name for d in cur.description]
            st = next(dict(zip(cols, r)) for r in cur.fetchall() if r[0] == "app")
        assert st["total_wait_time"] > 0, st
    finally:
        for c in clients + held:
            c.close()


# ---------------------------------------------------------------------------------------
# Timeouts


def test_query_timeout_57014(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, query_timeout=1)
    with connect(s) as c:
        t0 = time.monotonic()
        # Cancelled, not finished: the 57014 before the 30 s sleep is over is the outcome
        # (where an elapsed-time upper bound used to stand); not before the 1 s either.
        with pytest.raises(psycopg.errors.QueryCanceled) as ei:
            c.execute("SELECT pg_sleep(30)")
        elapsed = time.monotonic() - t0
        assert ei.value.sqlstate == "57014"
        assert elapsed >= 0.8, elapsed
        assert one(c, "SELECT 'still usable'") == "still usable"
        assert wait_for(lambda: one(su, "SELECT count(*) FROM pg_stat_activity WHERE "
                                        "query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'")
                        == 0, DEADLINE)
    assert_usable(s)
    assert app_servers(su) <= 1


def test_idle_transaction_timeout_25P03(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, idle_transaction_timeout=1)
    c = raw_login(s)
    try:
        rows, err = c.query("BEGIN")
        assert err is None and c.txn_status == "T"
        c.query("CREATE TEMP TABLE leftover (i int)")
        t0 = time.monotonic()
        msgs = c.read_until_close(timeout=DEADLINE)
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    errs = errors_in(msgs)
    assert [e["C"] for e in errs] == ["25P03"], msgs
    assert elapsed >= 0.8, elapsed  # not early; no upper bound (the deadline is 30 s)
    # The dirty server is not reused: it is closed or rolled back before anyone gets it.
    assert wait_for(lambda: app_servers(su, "idle in transaction") == 0, DEADLINE)
    assert_clean_server(s, su, 1)


def test_transaction_timeout_25P04(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, transaction_timeout=1)
    c = raw_login(s)
    err = None
    t0 = time.monotonic()
    try:
        rows, err = c.query("BEGIN")
        assert err is None
        # Busy transaction (never idle for long): only transaction_timeout can end it.
        while time.monotonic() - t0 < DEADLINE:
            try:
                rows, err = c.query("SELECT 1")
            except (ConnectionError, OSError) as e:
                pytest.fail(f"disconnected without an error message: {e!r}")
            if err is not None:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    assert err is not None, "transaction outlived transaction_timeout"
    assert err.get("C") == "25P04", err
    assert elapsed >= 0.8, elapsed  # not early; no upper bound (the deadline is 30 s)
    assert wait_for(lambda: app_servers(su, "idle in transaction") == 0, DEADLINE)
    assert_clean_server(s, su, 1)


def test_client_idle_timeout_57P05(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, client_idle_timeout=1)
    # An active client is not disconnected.
    busy = raw_login(s, timeout=DEADLINE)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            rows, err = busy.query("SELECT 1")
            assert err is None, err
            time.sleep(0.1)  # far below the 1 s timeout, even on a machine that stalls
    finally:
        busy.terminate()
    c = raw_login(s, timeout=DEADLINE)
    try:
        t0 = time.monotonic()
        msgs = c.read_until_close(timeout=DEADLINE)
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    errs = errors_in(msgs)
    assert [e["C"] for e in errs] == ["57P05"], msgs
    assert elapsed >= 0.8, elapsed  # not early; no upper bound (the deadline is 30 s)
    # Idle after a query too: its server went back at the end of the transaction, on the
    # server side of the relay (the client side was already waiting by then).
    c = raw_login(s, timeout=DEADLINE)
    try:
        rows, err = c.query("SELECT 1")
        assert err is None, err
        msgs = c.read_until_close(timeout=DEADLINE)
    finally:
        c.close()
    assert [e["C"] for e in errors_in(msgs)] == ["57P05"], msgs
    assert_usable(s)
    assert app_servers(su) <= 1


def test_min_pool_size_opens_servers_before_any_client(make_sluice, su):
    # As PgBouncer: a pool exists before any client only for a database with a forced
    # user; min_pool_size then opens its servers right away.
    s = make_sluice(pool_mode=TXN, default_pool_size=5, min_pool_size=2,
                    config={"databases": {"app": {"user": "app", "password": "app_pw"}}})
    ok = wait_for(lambda: app_servers(su) >= 2, DEADLINE, 0.2)
    assert ok, f"min_pool_size 2: {app_servers(su)} servers before any client"
    time.sleep(0.5)
    assert app_servers(su) == 2
    assert_usable(s)
    assert app_servers(su) == 2


def test_min_pool_size_per_database(make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=5,
                    config={"databases": {"app": {"min_pool_size": 3}}})
    # Once the pool exists (after a client), it is kept at min_pool_size.
    assert_usable(s)
    ok = wait_for(lambda: app_servers(su) >= 3, DEADLINE, 0.2)
    assert ok, f"min_pool_size 3: {app_servers(su)} servers"
    assert app_servers(su) == 3


@pytest.fixture
def check_seq(su):
    su.execute("DROP SEQUENCE IF EXISTS sluice_check_seq")
    su.execute("CREATE SEQUENCE sluice_check_seq")
    su.execute("ALTER SEQUENCE sluice_check_seq OWNER TO app")
    yield "sluice_check_seq"
    su.execute("DROP SEQUENCE IF EXISTS sluice_check_seq")


def _check_calls(su) -> int:
    last, called = su.execute("SELECT last_value, is_called FROM sluice_check_seq").fetchone()
    return last if called else 0


def test_server_check_query_runs_with_delay_0(make_sluice, su, check_seq):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, server_check_delay=0,
                    server_check_query="SELECT nextval('public.sluice_check_seq')")
    for i in range(5):
        with connect(s) as c:
            assert one(c, "SELECT %s::int", (i,)) == i
        time.sleep(0.1)
    calls = _check_calls(su)
    assert calls >= 3, f"server_check_query ran {calls} times for 5 reuses"
    # The check's result never reaches the client.
    with connect(s) as c:
        assert c.execute("SELECT 'mine'").fetchall() == [("mine",)]


def test_server_check_delay_0_checks_every_reuse_back_to_back(make_sluice, su, check_seq):
    # 0 means every checkout of an idle server, whatever time passed (PgBouncer's
    # documented meaning), not "idle for longer than 0": back to back, with no sleep, each
    # reuse of the one server still runs the check.
    s = make_sluice(pool_mode=TXN, default_pool_size=1, server_check_delay=0,
                    server_check_query="SELECT nextval('public.sluice_check_seq')")
    with connect(s) as c:
        for i in range(6):
            assert one(c, "SELECT %s::int", (i,)) == i
    calls = _check_calls(su)
    assert calls >= 5, f"server_check_query ran {calls} times for 6 transactions"


def test_server_check_delay_long_skips_check(make_sluice, su, check_seq):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, server_check_delay=30,
                    server_check_query="SELECT nextval('public.sluice_check_seq')")
    for i in range(5):
        with connect(s) as c:
            assert one(c, "SELECT 1") == 1
    assert _check_calls(su) == 0


def test_server_check_replaces_dead_server(pg, make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1, server_check_delay=0,
                    server_check_query="SELECT 1")
    with connect(s) as c:
        pid = one(c, "SELECT pg_backend_pid()")
        assert one(su, "SELECT pg_terminate_backend(%s)", (pid,)) is True
        assert wait_for(lambda: app_servers(su) == 0, DEADLINE)
        # The next transaction gets a fresh, working server, not an error: at once (no
        # sleep to let Sluice notice the death first; server_check_query is what must).
        new_pid = one(c, "SELECT pg_backend_pid()")
        assert new_pid != pid
        assert one(c, "SELECT 1") == 1
    assert app_servers(su) == 1


# ---------------------------------------------------------------------------------------
# Parameter tracking from startup parameters


def test_startup_parameters_tracked_on_shared_server(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    b = connect(s)
    try:
        defaults = {p: one(b, f"SHOW {p}") for p in ("DateStyle", "TimeZone",
                                                      "application_name")}
        a = raw_login(s, {"application_name": "startup_a", "DateStyle": "SQL, DMY",
                          "TimeZone": "America/New_York"})
        try:
            # The welcome carries the client's own values.
            assert a.params.get("application_name") == "startup_a", a.params
            assert a.params.get("DateStyle") == "SQL, DMY", a.params
            assert a.params.get("TimeZone") == "America/New_York", a.params
            for _ in range(3):
                rows, err = a.query("SELECT current_setting('DateStyle'), "
                                    "current_setting('TimeZone'), "
                                    "current_setting('application_name'), "
                                    "pg_backend_pid()")
                assert err is None, err
                assert rows[0][:3] == ["SQL, DMY", "America/New_York", "startup_a"], rows
                a_pid = rows[0][3]
                rows, err = a.query("SELECT '2024-03-02'::date::text")
                assert err is None and rows == [["02/03/2024"]], rows
                assert one(b, "SHOW DateStyle") == defaults["DateStyle"]
                assert one(b, "SHOW TimeZone") == defaults["TimeZone"]
                assert one(b, "SHOW application_name") == defaults["application_name"]
                assert str(one(b, "SELECT pg_backend_pid()")) == a_pid
        finally:
            a.terminate()
    finally:
        b.close()


def test_startup_parameters_from_libpq_env_and_kwargs(make_sluice):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    with connect(s) as b:
        default_ds = one(b, "SHOW DateStyle")
        assert default_ds != "SQL, DMY"
        # psql with PGDATESTYLE / PGTZ / PGAPPNAME (libpq puts them in the startup packet);
        # each -c is its own transaction on the shared server.
        r = subprocess.run([PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(s.port),
                            "-U", "app", "-d", "app", "-c", "SHOW DateStyle",
                            "-c", "SHOW TimeZone", "-c", "SHOW application_name"],
                           capture_output=True, text=True, timeout=30,
                           env=harness.client_env(APP_PW, PGDATESTYLE="SQL, DMY",
                                                  PGTZ="Asia/Kolkata",
                                                  PGAPPNAME="psql_app"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:3] == ["SQL, DMY", "Asia/Kolkata", "psql_app"], r.stdout
        assert one(b, "SHOW DateStyle") == default_ds
        assert one(b, "SHOW application_name") == ""
        # psycopg connect kwargs.
        with connect(s, application_name="kw_app") as a:
            assert a.info.parameter_status("application_name") == "kw_app"
            assert one(b, "SHOW application_name") == ""
            assert one(a, "SHOW application_name") == "kw_app"
            assert one(b, "SHOW application_name") == ""
            assert one(a, "SELECT current_setting('application_name')") == "kw_app"
