"""Raw-protocol relay exchanges: exact reply sequences for what drivers send, around the
16 KiB buffer block (a Parse/Bind held whole that grew the buffer used to lose bytes)."""
import socket
import time

import psycopg
import pytest

from conftest import ADMIN_PW, APP_PW
from harness import RawPg, SYNC, m_bind, m_execute, m_parse, message, parse_data_row, wait_for


@pytest.mark.parametrize("n", [16000, 17000, 40000])
@pytest.mark.parametrize("named", ["s1", ""])
@pytest.mark.parametrize("split", [False, True])
def test_parse_bind_around_the_buffer_block(make_sluice, n, named, split):
    s = make_sluice(pool_mode="transaction")
    r = RawPg("127.0.0.1", s.port, timeout=30)
    try:
        r.login("app", APP_PW, "app")
        data = (m_parse(named, "SELECT length($1::text)") + m_bind("", named, (b"x" * n,))
                + m_execute() + SYNC)
        if split:
            r.send(data[:100])
            time.sleep(0.05)  # (only so that Sluice reads the batch in two pieces)
            r.send(data[100:])
        else:
            r.send(data)
        msgs = []
        while not msgs or msgs[-1][0] != b"Z":
            m = r.read_msg()
            assert m is not None, msgs
            msgs.append(m)
        assert [k for k, _ in msgs] == [b"1", b"2", b"D", b"C", b"Z"], msgs
        assert parse_data_row(msgs[2][1]) == [str(n)]
    finally:
        r.terminate()


def _waiting_clients(s) -> int:
    with psycopg.connect(s.dsn("admin", ADMIN_PW, "sluice"), autocommit=True,
                         prepare_threshold=None) as c:
        cur = c.execute("SHOW POOLS")
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return next((r["cl_waiting"] for r in rows if r["database"] == "app"), 0)


def _read_results(r: RawPg, count: int):
    """Rows of `count` simple-query results, in order (each up to its ReadyForQuery)."""
    results, rows = [], []
    while len(results) < count:
        m = r.read_msg()
        assert m is not None, f"closed after {results}"
        kind, body = m
        assert kind != b"E", body
        if kind == b"D":
            rows.append(parse_data_row(body))
        elif kind == b"Z":
            results.append(rows)
            rows = []
    return results


def _park_behind_a_held_server(s):
    """A client (the holder) keeps the pool's only server in a transaction; a second one
    sends SELECT 1, which waits in the pool's queue. While it waits Sluice reads nothing
    from that client, so what it sends next stays in the socket until SELECT 1 has a
    server: then, relayed and back to waiting for the client, Sluice finds those bytes
    with the recv that precedes its idle wait, not through a wake-up."""
    holder = RawPg("127.0.0.1", s.port, timeout=30)
    holder.login("app", APP_PW, "app")
    rows, err = holder.query("BEGIN; SELECT 0")
    assert err is None and holder.txn_status == "T"
    waiter = RawPg("127.0.0.1", s.port, timeout=30)
    # As libpq does: without it, what the waiter sends next would sit in its own socket
    # (Nagle) until Sluice's delayed ACK of SELECT 1, not in Sluice's.
    waiter.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    waiter.login("app", APP_PW, "app")
    waiter.send(message(b"Q", b"SELECT 1\0"))
    assert wait_for(lambda: _waiting_clients(s) == 1)
    return holder, waiter


# 2: a request that fits the recv before the idle wait (512 bytes); 3000: one that does
# not, whose rest is read in the same handler.
@pytest.mark.parametrize("size", [2, 3000])
def test_request_sent_while_the_previous_one_waits_for_a_server(make_sluice, size):
    s = make_sluice(pool_mode="transaction", default_pool_size=1)
    holder, waiter = _park_behind_a_held_server(s)
    try:
        text = "y" * size
        waiter.send(message(b"Q", f"SELECT '{text}'".encode() + b"\0"))
        rows, err = holder.query("COMMIT")
        assert err is None and holder.txn_status == "I"
        assert _read_results(waiter, 2) == [[["1"]], [[text]]]
        assert waiter.query("SELECT 3") == ([["3"]], None)  # and it goes on as usual
    finally:
        waiter.terminate()
        holder.terminate()


# terminate: an X, then the FIN; eof: the FIN alone; request-eof: SELECT 2 with the FIN
# behind it, which the recv that takes SELECT 2 leaves unread (a short read proves
# nothing): the recv before the next idle wait must find it.
@pytest.mark.parametrize("ending", ["terminate", "eof", "request-eof"])
def test_client_that_leaves_while_its_request_waits_for_a_server(make_sluice, ending):
    s = make_sluice(pool_mode="transaction", default_pool_size=1)
    holder, waiter = _park_behind_a_held_server(s)
    try:
        if ending == "terminate":
            waiter.send(message(b"X"))
        elif ending == "request-eof":
            waiter.send(message(b"Q", b"SELECT 2\0"))
        waiter.sock.shutdown(socket.SHUT_WR)
        rows, err = holder.query("COMMIT")
        assert err is None
        # The session ends at the X or the EOF, though no wake-up tells Sluice of them
        # (read_until_close raises if Sluice neither closes nor answers in time). What had
        # gone to the server answers first, or the server is closed with it.
        kinds = [k for k, _ in waiter.read_until_close(timeout=30)]
        replies = [b"T", b"D", b"C", b"Z"] * (2 if ending == "request-eof" else 1)
        assert kinds == replies[:len(kinds)], kinds
    finally:
        waiter.close()
        holder.terminate()
    # The pool's only slot is free again (its server back, or closed): a new client runs.
    c = RawPg("127.0.0.1", s.port, timeout=30)
    try:
        c.login("app", APP_PW, "app")
        assert c.query("SELECT 4") == ([["4"]], None)
    finally:
        c.terminate()
