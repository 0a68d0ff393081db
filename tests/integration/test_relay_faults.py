"""Relay faults and large messages, with real drivers against real PostgreSQL 15.

What this file pins (each test asserts the exact outcome):
  1. Large parameter values (17 kB, 1 MB, 32 MB; text and bytea) through Parse/Bind in
     every pool mode, with psycopg 3 (named prepared and unnamed statements, pipeline
     mode) and asyncpg; and a large statement text in Parse.
  2. Pipelines with an error whose Sync is sent after the ErrorResponse reached the
     client, then prepared statements (also with evictions mid-pipeline), then a normal
     query: psycopg, libpq (psycopg.pq) and a raw protocol client.
  3. A pooled idle server terminated by pg_terminate_backend: new and old clients are
     served by a healthy server, both after a long idle period and right after use.
  4. A NotificationResponse arriving on a pooled server in transaction mode never reaches
     another client.
  5. A server killed mid-result: the client gets 57P01/08006 and the pool recovers.
  6. A client that does not read a 300 MB result: Sluice's memory stays bounded
     (backpressure to the server), and it still serves others.
  7. A PostgreSQL restart under pgbench: pgbench ends by itself, and Sluice serves new
     clients once PostgreSQL is back (last in the file: it restarts the shared server).

Every wait is a condition polled against a deadline; nothing relies on elapsed time.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import select
import struct
import subprocess
import time
from typing import Dict, List, Optional, Tuple

import psycopg
import psycopg.errors
import pytest
from psycopg import pq

import harness
from harness import DEADLINE, wait_for
from harness import RawPg, SYNC, m_bind, m_execute, m_parse, message
from conftest import APP_PW

try:
    import asyncpg
except ImportError:  # pragma: no cover - Debian's python3-asyncpg is expected
    asyncpg = None

TXN = "transaction"
MODES = ["session", "transaction", "statement"]


# ---------------------------------------------------------------------------------------
# Helpers


def connect(s, **kw) -> psycopg.Connection:
    return psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True, **kw)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def superuser(pg, db="app") -> psycopg.Connection:
    """Direct connection to PostgreSQL (unix socket, trust), bypassing Sluice."""
    return psycopg.connect(host=str(pg.sockdir), port=pg.port, user="postgres", dbname=db,
                           autocommit=True, connect_timeout=10)


APP_SERVERS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                   "AND datname = 'app' AND backend_type = 'client backend'")


@pytest.fixture
def su(pg):
    c = superuser(pg)
    # Servers left by an earlier test's Sluice may take a moment to exit.
    wait_for(lambda: one(c, APP_SERVERS_SQL) == 0, 10)
    try:
        yield c
    finally:
        c.close()


def backend_alive(su, pid: int) -> bool:
    return one(su, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) > 0


def terminate(su, pid: int) -> None:
    assert one(su, "SELECT pg_terminate_backend(%s)", (pid,)) is True, pid
    assert wait_for(lambda: not backend_alive(su, pid), 20), \
        f"backend {pid} still in pg_stat_activity 20 s after pg_terminate_backend"


def raw_login(s) -> RawPg:
    c = RawPg("127.0.0.1", s.port, timeout=10)
    c.login("app", APP_PW, "app")
    return c




def read_until(c: RawPg, kinds: bytes, timeout: float = 10.0) -> List[Tuple[bytes, bytes]]:
    """Messages up to and including the first whose type is in `kinds`; raises on EOF
    and socket.timeout when nothing more comes."""
    c.sock.settimeout(timeout)
    msgs = []
    while True:
        m = c.read_msg()
        if m is None:
            raise ConnectionError(f"closed before any of {kinds!r}; got {msgs!r}")
        msgs.append(m)
        if m[0] in [kinds[i:i + 1] for i in range(len(kinds))]:
            if m[0] == b"Z":
                c.txn_status = m[1][:1].decode()
            return msgs


def kinds_of(msgs) -> List[bytes]:
    return [k for k, _ in msgs]


def errors_in(msgs) -> List[Dict[str, str]]:
    return [harness.parse_error_fields(b) for k, b in msgs if k == b"E"]


def libpq_conn(s) -> pq.PGconn:
    """A raw libpq connection (psycopg.pq) in non-blocking mode: every wait happens in
    Python (select with a deadline), so the per-test time limit can interrupt it, which
    it cannot inside a blocking libpq call."""
    c = pq.PGconn.connect(s.dsn("app", APP_PW, "app").encode())
    assert c.status == pq.ConnStatus.OK, c.error_message
    c.nonblocking = 1
    return c


def libpq_flush(c: pq.PGconn, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while c.flush() == 1:
        if time.monotonic() > deadline:
            pytest.fail(f"libpq output not sent within {timeout}s")
        select.select([c.socket], [c.socket], [], 0.5)
        c.consume_input()


def libpq_wait_result(c: pq.PGconn, timeout: float = 10.0) -> Optional[pq.PGresult]:
    libpq_flush(c, timeout)
    deadline = time.monotonic() + timeout
    while c.is_busy():
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no result within {timeout}s")
        select.select([c.socket], [], [], min(left, 0.5))
        c.consume_input()
    return c.get_result()


def libpq_exec(c: pq.PGconn, sql: bytes, params=None, name: Optional[bytes] = None
               ) -> pq.PGresult:
    """One query outside pipeline mode (unnamed, or the prepared statement `name`),
    without blocking libpq calls; returns its last result."""
    if name is None:
        c.send_query_params(sql, params)
    else:
        c.send_query_prepared(name, params)
    last = None
    while True:
        r = libpq_wait_result(c)
        if r is None:
            assert last is not None
            return last
        last = r


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def assert_serves_new_client(s, timeout: float = 30.0) -> None:
    """A new client through Sluice runs a query, within a generous deadline."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            with connect(s) as c:
                assert one(c, "SELECT 'fresh'") == "fresh"
                return
        except psycopg.OperationalError as e:
            last = e
            time.sleep(0.2)
    pytest.fail(f"no new client served within {timeout}s: {last!r}")


# ---------------------------------------------------------------------------------------
# 1. Large values through Parse/Bind

SMALL_SIZES = [17_000, 1_000_000]
BIG = 32_000_000
# Every mode with the two smaller sizes; 32 MB once per driver and kind (transaction).
SIZE_CASES = [(m, n) for m in MODES for n in SMALL_SIZES] + [(TXN, BIG)]
KINDS = ["text", "bytea"]
ECHO_LIMIT = 1_000_000  # values up to this size also come back whole (large DataRow)
PIPELINE_CASES = [(m, n) for m in MODES for n in SMALL_SIZES]


def make_value(kind: str, n: int):
    """n bytes of random content: an ASCII str for text, bytes for bytea."""
    if kind == "text":
        return os.urandom((n + 1) // 2).hex()[:n]
    return os.urandom(n)


def expected(value) -> Tuple[int, str]:
    data = value.encode() if isinstance(value, str) else value
    return len(data), hashlib.md5(data).hexdigest()


def psycopg_query(kind: str, n: int) -> str:
    ph = "%t" if kind == "text" else "%b"  # text or binary parameter format
    echo = ", v" if n <= ECHO_LIMIT else ""
    return f"SELECT length(v), md5(v){echo} FROM (SELECT {ph}::{kind} AS v) s"


def check_row(row, value, n: int) -> None:
    assert row is not None
    ln, md5 = expected(value)
    assert (row[0], row[1]) == (ln, md5), (row[0], row[1], ln, md5)
    if n <= ECHO_LIMIT:
        assert row[2] == value, "echoed value differs"


def sluice_for(make_sluice, mode: str):
    return make_sluice(pool_mode=mode, default_pool_size=2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,size", SIZE_CASES)
def test_large_value_psycopg_prepared(make_sluice, mode, size, kind):
    """psycopg prepare=True: a named statement (Parse once, then Bind only), twice."""
    s = sluice_for(make_sluice, mode)
    q = psycopg_query(kind, size)
    with connect(s) as c:
        for i in range(2):
            v = make_value(kind, size)
            cur = c.cursor()
            cur.execute(q, (v,), prepare=True)
            check_row(cur.fetchone(), v, size)
        assert one(c, "SELECT 'still usable'") == "still usable"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,size", SIZE_CASES)
def test_large_value_psycopg_unnamed(make_sluice, mode, size, kind):
    """psycopg default extended protocol with the unnamed statement."""
    s = sluice_for(make_sluice, mode)
    q = psycopg_query(kind, size)
    with connect(s) as c:
        v = make_value(kind, size)
        cur = c.cursor()
        cur.execute(q, (v,), prepare=False)
        check_row(cur.fetchone(), v, size)
        assert one(c, "SELECT 'still usable'") == "still usable"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,size", PIPELINE_CASES)
def test_large_value_psycopg_pipeline(make_sluice, mode, size, kind):
    """Several large statements in one psycopg pipeline (prepared and unnamed mixed),
    then a small one; all answered in order. (32 MB goes through the libpq pipeline
    test below: psycopg 3.1.7's pure-Python pipeline deadlocks on exit with messages
    that large against PostgreSQL directly too, psycopg issue #685, fixed in 3.1.18.)"""
    s = sluice_for(make_sluice, mode)
    q = psycopg_query(kind, size)
    values = [make_value(kind, size) for _ in range(3)]
    with connect(s) as c:
        with c.pipeline():
            curs = []
            for i, v in enumerate(values):
                cur = c.cursor()
                cur.execute(q, (v,), prepare=(i != 1))
                curs.append(cur)
            last = c.cursor()
            last.execute("SELECT 'after big ones'")
        for cur, v in zip(curs, values):
            check_row(cur.fetchone(), v, size)
        assert last.fetchone()[0] == "after big ones"
        assert one(c, "SELECT 'still usable'") == "still usable"


def libpq_large_pipeline(c: pq.PGconn, kind: str, values: list, timeout: float = 90.0
                         ) -> List[tuple]:
    """libpq pipeline (psycopg.pq, non-blocking): a named prepare, the large values
    alternately through the named statement and the unnamed one, a small query, one
    Sync; the output buffer is flushed while results are read (no deadlock)."""
    fmt = 0 if kind == "text" else 1
    sql = f"SELECT length(v), md5(v) FROM (SELECT $1::{kind} AS v) s".encode()
    c.enter_pipeline_mode()
    c.send_prepare(b"rf_big", sql)
    for i, v in enumerate(values):
        data = v.encode() if isinstance(v, str) else v
        if i % 2 == 0:
            c.send_query_prepared(b"rf_big", [data], param_formats=[fmt])
        else:
            c.send_query_params(sql, [data], param_formats=[fmt])
    c.send_query_params(b"SELECT 'after big ones'", None)
    c.pipeline_sync()
    libpq_flush(c, timeout)
    got = []
    for _ in range(len(values) + 3):
        r = libpq_wait_result(c, timeout)
        assert r is not None
        st = pq.ExecStatus(r.status).name
        if r.status == pq.ExecStatus.TUPLES_OK:
            got.append((st, *(r.get_value(0, j) for j in range(r.nfields))))
        else:
            state = r.error_field(pq.DiagnosticField.SQLSTATE)
            got.append((st,) if state is None else (st, state.decode()))
        if r.status != pq.ExecStatus.PIPELINE_SYNC:
            assert libpq_wait_result(c) is None
    c.exit_pipeline_mode()
    return got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,size", SIZE_CASES)
def test_large_value_libpq_pipeline(make_sluice, mode, size, kind):
    s = sluice_for(make_sluice, mode)
    values = [make_value(kind, size) for _ in range(3)]
    c = libpq_conn(s)
    try:
        got = libpq_large_pipeline(c, kind, values)
        want = [("COMMAND_OK",)]
        want += [("TUPLES_OK", str(expected(v)[0]).encode(), expected(v)[1].encode())
                 for v in values]
        want += [("TUPLES_OK", b"after big ones"), ("PIPELINE_SYNC",)]
        assert got == want, got
        r = libpq_exec(c, b"SELECT 'still usable'")
        assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
        assert r.get_value(0, 0) == b"still usable"
    finally:
        c.finish()


@pytest.mark.skipif(asyncpg is None, reason="python3-asyncpg not installed")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,size", SIZE_CASES)
def test_large_value_asyncpg(make_sluice, mode, size, kind):
    """asyncpg: always named prepared statements, binary parameters."""
    s = sluice_for(make_sluice, mode)
    echo = ", $1" if size <= ECHO_LIMIT else ""
    q = f"SELECT length($1::{kind}), md5($1::{kind}){echo}"

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=s.port, user="app",
                                     password=APP_PW, database="app", ssl=False, timeout=10,
                                     command_timeout=60)
        try:
            for i in range(2):
                v = make_value(kind, size)
                row = await conn.fetchrow(q, v)
                check_row(tuple(row), v, size)
            assert await conn.fetchval("SELECT length($1::text)", "x" * 17_000) == 17_000
            assert await conn.fetchval("SELECT 'still usable'") == "still usable"
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(asyncio.wait_for(run(), 100))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", SMALL_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_large_statement_text_prepared(make_sluice, mode, size):
    """A large statement text in Parse (a literal of `size` characters), prepared, run
    three times; in transaction mode a second client shares the pool in between."""
    s = make_sluice(pool_mode=mode, default_pool_size=1)
    lit = make_value("text", size)
    q = f"SELECT length(v), md5(v) FROM (SELECT '{lit}'::text || %t AS v) s"
    with connect(s) as c:
        for i in range(3):
            cur = c.cursor()
            cur.execute(q, (str(i),), prepare=True)
            assert cur.fetchone() == expected(lit + str(i))
            if mode != "session":
                with connect(s) as other:
                    assert one(other, "SELECT 'other'") == "other"


# ---------------------------------------------------------------------------------------
# 2. Pipelines with an error, Sync sent after the error reached the client


def wait_pipeline_result(conn: psycopg.Connection, timeout: float = 10.0) -> None:
    """Reads from the socket into libpq until the first pending pipeline result is
    complete (PQisBusy false), without letting psycopg process it."""
    pg = conn.pgconn
    deadline = time.monotonic() + timeout
    while pg.is_busy():
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no result for the pipelined statement within {timeout}s")
        select.select([pg.socket], [], [], min(left, 0.5))
        pg.consume_input()


def psycopg_pipeline_after_error(c: psycopg.Connection, n_prepared: int) -> list:
    """The scenario; returns what happened, in order."""
    out: list = []
    with c.pipeline() as p:
        c.cursor().execute("SELECT 1/0")
        wait_pipeline_result(c)  # the ErrorResponse is in the client now
        for q in ("SELECT 2", "SELECT 3"):
            try:
                c.cursor().execute(q)
                out.append("queued")
            except psycopg.Error as e:
                out.append(f"{type(e).__name__} at execute")
        try:
            p.sync()
            out.append("sync ok")
        except psycopg.Error as e:
            out.append(f"sync {type(e).__name__}")
        curs = []
        for k in range(n_prepared):
            cur = c.cursor()
            cur.execute(f"SELECT %s::int + {k}", (100,), prepare=True)
            curs.append(cur)
        p.sync()
        out.append([cur.fetchone()[0] for cur in curs])
    out.append(one(c, "SELECT 'after'"))
    return out


def expected_after_error(n_prepared: int) -> list:
    # What psycopg 3.1 reports against PostgreSQL directly.
    return ["queued", "queued", "sync DivisionByZero", [100 + k for k in range(n_prepared)],
            "after"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_psycopg_pipeline_error_then_prepared(make_sluice, mode):
    s = make_sluice(pool_mode=mode, default_pool_size=1)
    with connect(s) as c:
        assert psycopg_pipeline_after_error(c, 1) == expected_after_error(1)
        # Again on the same connection: the prepared statement now exists client-side.
        assert psycopg_pipeline_after_error(c, 1) == expected_after_error(1)
        assert one(c, "SELECT 'end'") == "end"


@pytest.mark.timeout(60)
def test_psycopg_pipeline_error_then_prepared_with_evictions(make_sluice):
    """max_prepared_statements 2 and 8 distinct prepared statements in one pipeline:
    Sluice evicts server-side statements mid-pipeline; every one is answered right,
    again when re-run (re-prepared on demand), with another client sharing the server."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1, max_prepared_statements=2)
    with connect(s) as c, connect(s) as other:
        assert psycopg_pipeline_after_error(c, 8) == expected_after_error(8)
        assert one(other, "SELECT 'other'") == "other"
        assert psycopg_pipeline_after_error(c, 8) == expected_after_error(8)
        for k in range(8):  # outside a pipeline, in reverse order
            kk = 7 - k
            cur = c.cursor()
            cur.execute(f"SELECT %s::int + {kk}", (100,), prepare=True)
            assert cur.fetchone()[0] == 100 + kk
        assert one(other, "SELECT 'other'") == "other"


def libpq_next(c: pq.PGconn) -> Tuple[str, Optional[str], Optional[bytes]]:
    """The next result as (status name, sqlstate, first value), consuming the NULL that
    ends a query's results in pipeline mode."""
    r = libpq_wait_result(c)
    assert r is not None
    st = pq.ExecStatus(r.status).name
    state = r.error_field(pq.DiagnosticField.SQLSTATE)
    val = r.get_value(0, 0) if r.status == pq.ExecStatus.TUPLES_OK and r.ntuples else None
    if r.status not in (pq.ExecStatus.PIPELINE_SYNC,):
        assert libpq_wait_result(c) is None
    return st, state.decode() if state else None, val


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_prepared", [200, 2])
def test_libpq_pipeline_flush_error_then_sync_and_prepared(make_sluice, max_prepared):
    """libpq pipeline: a failing query and a Flush; once the error result is in, more
    queries, Sync, then named prepares and executions (evicted mid-pipeline when
    max_prepared_statements is 2), Sync; then a plain query outside the pipeline."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1, max_prepared_statements=max_prepared)
    other = connect(s)
    c = libpq_conn(s)
    try:
        c.enter_pipeline_mode()
        c.send_query_params(b"SELECT 1/0", None)
        c.send_flush_request()
        assert libpq_next(c)[:2] == ("FATAL_ERROR", "22012")
        c.send_query_params(b"SELECT 2", None)
        c.send_query_params(b"SELECT 3", None)
        c.pipeline_sync()
        names = [f"lp_stmt_{k}".encode() for k in range(6)]
        for k, name in enumerate(names):
            c.send_prepare(name, f"SELECT $1::int * 10 + {k}".encode())
        for k, name in enumerate(names):
            c.send_query_prepared(name, [b"7"])
        for name in reversed(names):
            c.send_query_prepared(name, [b"8"])
        c.pipeline_sync()
        got = [libpq_next(c) for _ in range(3)]
        assert got == [("PIPELINE_ABORTED", None, None), ("PIPELINE_ABORTED", None, None),
                       ("PIPELINE_SYNC", None, None)], got
        got = [libpq_next(c) for _ in range(len(names) * 3 + 1)]
        want = [("COMMAND_OK", None, None)] * len(names) \
            + [("TUPLES_OK", None, str(70 + k).encode()) for k in range(len(names))] \
            + [("TUPLES_OK", None, str(80 + k).encode()) for k in reversed(range(len(names)))] \
            + [("PIPELINE_SYNC", None, None)]
        assert got == want, got
        c.exit_pipeline_mode()
        assert one(other, "SELECT 'other'") == "other"
        r = libpq_exec(c, b"SELECT 'after pipeline'")
        assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
        assert r.get_value(0, 0) == b"after pipeline"
        for k, name in enumerate(names):
            r = libpq_exec(c, b"", [b"9"], name=name)
            assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
            assert r.get_value(0, 0) == str(90 + k).encode()
    finally:
        c.finish()
        other.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_raw_error_without_sync_then_bind_execute_sync(make_sluice, mode):
    """Parse/Bind/Execute of a failing statement with no Sync: the ErrorResponse comes;
    Bind/Execute/Sync then get exactly ReadyForQuery (PostgreSQL skips to Sync); a
    further Parse/Bind/Execute/Sync works, with the named statement again after."""
    s = make_sluice(pool_mode=mode, default_pool_size=1)
    c = raw_login(s)
    try:
        c.send(m_parse("", "SELECT 1/0") + m_bind() + m_execute())
        msgs = read_until(c, b"E")
        assert kinds_of(msgs) == [b"1", b"E"], msgs
        assert errors_in(msgs)[0]["C"] == "22012", msgs
        c.send(m_bind() + m_execute() + SYNC)
        msgs = read_until(c, b"Z")
        assert kinds_of(msgs) == [b"Z"], msgs
        assert c.txn_status == "I"
        c.send(m_parse("rf_ok", "SELECT $1::int * 2") + m_bind("", "rf_ok", (b"21",))
               + m_execute() + SYNC)
        msgs = read_until(c, b"Z")
        assert kinds_of(msgs) == [b"1", b"2", b"D", b"C", b"Z"], msgs
        assert harness.parse_data_row(msgs[2][1]) == ["42"]
        assert c.txn_status == "I"
        c.send(m_bind("", "rf_ok", (b"50",)) + m_execute() + SYNC)
        msgs = read_until(c, b"Z")
        assert kinds_of(msgs) == [b"2", b"D", b"C", b"Z"], msgs
        assert harness.parse_data_row(msgs[1][1]) == ["100"]
        rows, err = c.query("SELECT 'simple after'")
        assert err is None and rows == [["simple after"]], (rows, err)
    finally:
        c.terminate()
    assert_serves_new_client(s)


# ---------------------------------------------------------------------------------------
# 3. pg_terminate_backend on a pooled idle server


def wait_idle_for_a_second(su, pid: int) -> None:
    """PostgreSQL reports the backend idle for at least a second (longer than Sluice's
    idle-server poll interval)."""
    ok = wait_for(lambda: one(su, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s "
                                  "AND state = 'idle' AND now() - state_change > "
                                  "interval '1 second'", (pid,)) == 1, 20)
    assert ok, f"backend {pid} never idle for 1 s"


def run_in_order(new_first: bool, s, old) -> None:
    def new_client():
        with connect(s) as n:
            assert one(n, "SELECT 'new'") == "new"

    def old_client():
        assert one(old, "SELECT 'old'") == "old"

    for step in ((new_client, old_client) if new_first else (old_client, new_client)):
        step()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("when", ["long_idle", "right_after_use"])
@pytest.mark.parametrize("pool_size", [1, 3])
def test_terminated_idle_server_is_not_handed_out(pg, make_sluice, su, pool_size, when):
    s = make_sluice(pool_mode=TXN, default_pool_size=pool_size)
    old = connect(s)
    try:
        for rnd in range(3):
            pid = one(old, "SELECT pg_backend_pid()")
            if when == "long_idle":
                wait_idle_for_a_second(su, pid)
            terminate(su, pid)
            run_in_order(rnd % 2 == 0, s, old)
            assert one(old, "SELECT pg_backend_pid()") != pid
    finally:
        old.close()
    assert s.alive()


# ---------------------------------------------------------------------------------------
# 4. Notifications on a pooled server do not leak to another client


class DirectListener:
    """A direct connection LISTENing on the channel: when it has its copy of a NOTIFY,
    the notification is committed and every listening backend has been signalled."""

    def __init__(self, pg, channel: str):
        self.conn = superuser(pg)
        self.got: List[str] = []
        self.conn.add_notify_handler(lambda n: self.got.append(n.payload))
        self.conn.execute(f"LISTEN {channel}")

    def wait(self, payload: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while payload not in self.got:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"direct listener never got {payload!r}")
            select.select([self.conn.pgconn.socket], [], [], min(left, 0.2))
            self.conn.execute("SELECT 1")  # reads and dispatches pending notifications

    def close(self) -> None:
        self.conn.close()


@pytest.mark.timeout(60)
def test_notification_on_pooled_server_not_seen_by_other_client(pg, make_sluice, su):
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    chan = "relay_chan"
    a = connect(s)
    listener = DirectListener(pg, chan)
    b = connect(s)
    seen_b: List[Tuple[str, str]] = []
    b.add_notify_handler(lambda n: seen_b.append((n.channel, n.payload)))
    try:
        a.execute(f"LISTEN {chan}")
        # 1: the notification arrives while the server sits idle in the pool.
        su.execute(f"NOTIFY {chan}, 'idle-in-pool'")
        listener.wait("idle-in-pool")
        for i in range(20):
            assert one(b, "SELECT %s::int", (i,)) == i
        assert seen_b == [], seen_b
        # 2: it arrives while B holds the server in a transaction; PostgreSQL sends it
        # when the server goes idle, i.e. around B's COMMIT.
        b.execute("BEGIN")
        assert one(b, "SELECT 'txn start'") == "txn start"
        su.execute(f"NOTIFY {chan}, 'during-b-txn'")
        listener.wait("during-b-txn")
        assert one(b, "SELECT 'in txn'") == "in txn"
        b.execute("COMMIT")
        for i in range(20):
            assert one(b, "SELECT %s::int", (i,)) == i
        assert seen_b == [], seen_b
    finally:
        listener.close()
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_notification_on_pooled_server_raw_client_gets_no_A_message(pg, make_sluice, su):
    """The same with a raw client B that inspects every message it receives."""
    s = make_sluice(pool_mode=TXN, default_pool_size=1)
    chan = "relay_chan_raw"
    a = connect(s)
    listener = DirectListener(pg, chan)
    b = raw_login(s)
    try:
        a.execute(f"LISTEN {chan}")
        su.execute(f"NOTIFY {chan}, 'idle-in-pool'")
        listener.wait("idle-in-pool")
        seen: List[bytes] = []
        for i in range(20):
            b.send(message(b"Q", f"SELECT {i}".encode() + b"\0"))
            msgs = read_until(b, b"Z")
            seen += kinds_of(msgs)
            assert harness.parse_data_row([m for m in msgs if m[0] == b"D"][0][1]) == [str(i)]
        assert b"A" not in seen, seen
        # Nothing arrives unasked either: the next bytes on B are the answer to a query.
        b.send(message(b"Q", b"SELECT 'last'\0"))
        msgs = read_until(b, b"Z")
        assert kinds_of(msgs) == [b"T", b"D", b"C", b"Z"], msgs
    finally:
        listener.close()
        a.close()
        b.terminate()


# ---------------------------------------------------------------------------------------
# 5. Server killed mid-result

KILLED_STATES = {"57P01": "admin_shutdown", "08006": "connection_failure"}
SLOW_RESULT = ("SELECT /* relay_kill_marker */ g, repeat('x', 1000), pg_sleep(0.005) "
               "FROM generate_series(1, 4000) g")
ROWS_BEFORE_KILL = 20


def running_pid(su, marker: str, timeout: float = 20.0) -> int:
    sql = ("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
           "AND pid <> pg_backend_pid()")
    box: List[int] = []

    def found():
        rows = su.execute(sql, (f"%{marker}%",)).fetchall()
        box[:] = [r[0] for r in rows]
        return len(box) == 1

    assert wait_for(found, timeout), f"no single running backend for {marker}: {box}"
    return box[0]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_server_killed_mid_result_psycopg(pg, make_sluice, su, mode):
    s = make_sluice(pool_mode=mode, default_pool_size=2)
    c = connect(s)
    got = 0
    killed = None
    try:
        with pytest.raises(psycopg.Error) as ei:
            for _row in c.cursor().stream(SLOW_RESULT):
                got += 1
                if got == ROWS_BEFORE_KILL:
                    killed = running_pid(su, "relay_kill_marker")
                    assert one(su, "SELECT pg_terminate_backend(%s)", (killed,)) is True
        st = ei.value.sqlstate
        assert st in KILLED_STATES, \
            f"expected SQLSTATE 57P01 or 08006, got {st!r}: {type(ei.value).__name__}: {ei.value}"
        assert ROWS_BEFORE_KILL <= got < 4000
    finally:
        c.close()
    assert killed is not None
    assert wait_for(lambda: not backend_alive(su, killed), 20)
    assert_serves_new_client(s)
    with connect(s) as n:
        assert one(n, "SELECT pg_backend_pid()") != killed
    assert s.alive()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_server_killed_mid_result_raw(pg, make_sluice, su, mode):
    """Raw client: rows arrive, the backend is terminated, the client sees an
    ErrorResponse 57P01/08006 (and then EOF or ReadyForQuery), never a silent close."""
    s = make_sluice(pool_mode=mode, default_pool_size=2)
    c = raw_login(s)
    try:
        c.send(message(b"Q", SLOW_RESULT.encode() + b"\0"))
        rows = 0
        c.sock.settimeout(10)
        while rows < ROWS_BEFORE_KILL:
            m = c.read_msg()
            assert m is not None, "closed before the rows came"
            rows += m[0] == b"D"
        killed = running_pid(su, "relay_kill_marker")
        assert one(su, "SELECT pg_terminate_backend(%s)", (killed,)) is True
        msgs = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                m = c.read_msg()
            except (ConnectionResetError, BrokenPipeError):
                m = None
            if m is None:
                break
            msgs.append(m)
            if m[0] == b"Z":
                break
        else:
            pytest.fail("neither EOF nor ReadyForQuery within 30 s after the kill")
        errs = errors_in(msgs)
        assert errs, f"connection ended without an ErrorResponse: {kinds_of(msgs)[-5:]}"
        assert errs[0].get("C") in KILLED_STATES, errs
        assert b"C" not in kinds_of(msgs), "CommandComplete for a killed query"
    finally:
        c.close()
    assert wait_for(lambda: not backend_alive(su, killed), 20)
    assert_serves_new_client(s)
    assert s.alive()


# ---------------------------------------------------------------------------------------
# 6. Slow reader: memory stays bounded


HUGE_RESULT = ("SELECT /* relay_slow_reader */ repeat('x', 1000) "
               "FROM generate_series(1, 300000)")
RSS_BOUND_KB = 64 * 1024


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["session", TXN])
def test_slow_reader_memory_bounded(pg, make_sluice, su, mode):
    s = make_sluice(pool_mode=mode, default_pool_size=1)
    pid = s.proc.pid
    with connect(s) as warm:
        assert one(warm, "SELECT 1") == 1
    c = raw_login(s)
    base = rss_kb(pid)
    samples: List[Tuple[str, Optional[str], int]] = []
    try:
        c.send(message(b"Q", HUGE_RESULT.encode() + b"\0"))
        backend = running_pid(su, "relay_slow_reader")
        sql = "SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s"

        def settled():
            row = su.execute(sql, (backend,)).fetchone()
            state, wait_event = row if row else (None, None)
            samples.append((state, wait_event, rss_kb(pid)))
            if state != "active":
                return True  # finished: the whole result went somewhere
            last = samples[-10:]
            return (len(last) == 10 and all(w == "ClientWrite" for _, w, _ in last)
                    and max(r for *_, r in last) - min(r for *_, r in last) < 1024)

        assert wait_for(settled, 60, 0.1), f"never settled: {samples[-5:]}"
        state = samples[-1][0]
        growth = samples[-1][2] - base
        assert state == "active", (
            f"the server finished the 300 MB result while the client read nothing "
            f"(state {state!r}); sluice RSS grew {growth} kB")
        assert growth < RSS_BOUND_KB, f"sluice RSS grew {growth} kB (bound {RSS_BOUND_KB})"
    finally:
        c.abort()
    assert_serves_new_client(s)
    assert s.alive()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["session", TXN])
def test_slow_reader_gets_every_byte_in_order(make_sluice, su, mode):
    """A client that does not read fills its socket: Sluice's send then takes only part
    of a reply, and the rest must follow from the very byte where the socket stopped (the
    server side's handler leaves that rest to server_loop). Every row arrives, in order,
    intact, once the client reads."""
    s = make_sluice(pool_mode=mode, default_pool_size=1, workers=1)
    c = raw_login(s)
    try:
        harness.full_client_gets_every_row(c, su)
    finally:
        c.abort()
    assert_serves_new_client(s)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["session", TXN])
def test_client_stalled_mid_message_does_not_stall_its_worker(make_sluice, mode):
    """A client that sends part of a message and then nothing (slowloris) must not hold
    its worker: with one worker, every other client shares it. The stalled client's
    message is completed afterwards and answered as usual."""
    s = make_sluice(pool_mode=mode, default_pool_size=2, workers=1)
    stalled = raw_login(s)
    other = raw_login(s)
    q = b"SELECT 'stalled' AS x\0"
    msg = b"Q" + struct.pack("!I", 4 + len(q)) + q
    try:
        # Stalled inside the 5-byte header: the relay cannot forward a partial header,
        # so the bytes wait in Sluice. (Once the header is complete, the rest streams.)
        stalled.send(msg[:3])
        # The other client is answered while the first is stalled (RawPg's 10 s timeout
        # is the deadline; a worker blocked on the stalled socket never answers). Three
        # rounds: by the second, Sluice has surely read the stalled bytes sent first.
        for i in range(3):
            rows, _ = other.query(f"SELECT {i}")
            assert rows == [[str(i)]]
        stalled.send(msg[3:])
        msgs = read_until(stalled, b"Z")
        assert [k for k, _ in msgs] == [b"T", b"D", b"C", b"Z"], msgs
        assert msgs[1][1].endswith(b"stalled")
    finally:
        stalled.abort()
        other.abort()
    assert s.alive()


# ---------------------------------------------------------------------------------------
# 7. PostgreSQL restart under pgbench (last: it restarts the session's PostgreSQL)


def console_state(s) -> str:
    """SHOW POOLS / CLIENTS / SERVERS from the admin console, for failure messages."""
    out = []
    for what in ("POOLS", "CLIENTS", "SERVERS"):
        try:
            r = s.psql(f"SHOW {what}", user="admin", db="sluice", timeout=10)
            out.append(f"SHOW {what}:\n{r.stdout}{r.stderr}")
        except Exception as e:  # noqa: BLE001 - diagnostics only
            out.append(f"SHOW {what}: {e!r}")
    return "\n".join(out)


PGBENCH_WAIT = 60  # T=8 plus server_login_retry=1; well under query_wait_timeout (120)


@pytest.mark.timeout(150)
def test_postgres_restart_under_pgbench(pgbench_db, make_sluice):
    """pgbench -c 50 -T 8 through a pool of 5; PostgreSQL restarts (fast) mid-run and is
    back within a fraction of a second. Every pgbench client either finishes or aborts
    on an error, so pgbench exits by itself; a client left waiting for an answer would
    keep it running. server_login_retry is 1 s so waiters may be served soon after the
    restart; query_wait_timeout keeps its default (120 s), longer than the wait here, so
    it cannot be what ends the run."""
    pg = pgbench_db
    s = make_sluice(pool_mode=TXN, default_pool_size=5, max_client_conn=100,
                    server_login_retry=1)
    log = s.dir / "pgbench.log"
    history = "SELECT count(*) FROM pgbench_history"
    n0 = int(pg.psql(history, db="app"))
    p = harness.spawn([str(harness.PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(s.port),
                       "-U", "app", "-c", "50", "-j", "2", "-T", "8", "-n", "app"],
                      log_path=log, env=harness.client_env(APP_PW))
    try:
        # Transactions flow through Sluice before the restart.
        assert wait_for(lambda: p.poll() is not None
                        or int(pg.psql(history, db="app")) >= n0 + 200, 30, 0.1), \
            "pgbench made no progress"
        assert p.poll() is None, f"pgbench ended before the restart:\n{harness.tail(log)}"
        pg.restart("fast")
        try:
            rc = p.wait(timeout=PGBENCH_WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pgbench still running {PGBENCH_WAIT} s after the restart (hang)\n"
                        f"{console_state(s)}\npgbench log:\n{harness.tail(log)}")
        # 0: every client finished its run; 2: clients aborted on the lost connections.
        # Never 1 (bad arguments / could not start) nor killed by a signal.
        assert rc in (0, 2), f"pgbench exit code {rc}:\n{harness.tail(log)}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert s.alive(), "sluice died during the restart"
    assert_serves_new_client(s, timeout=30)
    with connect(s) as c:  # and the pool is not left with dead servers
        for i in range(10):
            assert one(c, "SELECT %s::int", (i,)) == i


# ---------------------------------------------------------------------------------------
# COPY FROM STDIN of a large stream: forwarded as it comes, never buffered.

@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["session", TXN])
def test_large_copy_in_memory_bounded(make_sluice, mode):
    s = make_sluice(pool_mode=mode, default_pool_size=2)
    pid = s.proc.pid
    line = ("x" * 1023 + "\n").encode()
    chunk = line * 256  # 256 KiB
    total = 0
    with connect(s) as c:
        assert one(c, "SELECT 1") == 1
        base = peak = rss_kb(pid)
        with c.transaction():  # one transaction: the table lives on one server
            cur = c.cursor()
            cur.execute("CREATE TEMP TABLE copy_sink (v text) ON COMMIT DROP")
            with cur.copy("COPY copy_sink FROM STDIN") as cp:
                for i in range(1200):  # 300 MiB
                    cp.write(chunk)
                    total += len(chunk)
                    if i % 40 == 0:
                        peak = max(peak, rss_kb(pid))
            cur.execute("SELECT count(*) FROM copy_sink")
            assert cur.fetchone()[0] == total // len(line)
        peak = max(peak, rss_kb(pid))
    assert peak - base < 64 * 1024, f"RSS grew {peak - base} KiB while streaming {total >> 20} MiB"
    assert_serves_new_client(s)
