"""Socket options and internal-query timeouts: tcp_keepalive/tcp_keepidle/tcp_keepintvl on
client and server sockets, server_connect_timeout bounding reset/check queries, and the
FATAL a client gets when client_login_timeout expires."""
from __future__ import annotations

import re
import socket
import subprocess
import time

import psycopg
import pytest

from harness import DEADLINE, wait_for
from harness import RawPg, startup_packet
from conftest import APP_PW


def keepalive_timers(port: int, direction: str) -> list:
    """ss's keepalive timers (seconds left) of established TCP sockets with that port."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( {direction} = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    return [float(m) for m in re.findall(r"timer:\(keepalive,([0-9.]+)(?:ms|sec|min)?", out)], out


def test_tcp_keepalive_on_client_and_server_sockets(make_sluice, pg):
    s = make_sluice(pool_mode="session", tcp_keepalive=True, tcp_keepidle=7, tcp_keepintvl=3,
                    tcp_keepcnt=2, tcp_user_timeout=5000)
    with psycopg.connect(s.dsn()) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
        # Sluice's side of the client connection (source port = Sluice's port) and of the
        # server connection (destination port = PostgreSQL's).
        # (ss shows one timer per socket: right after traffic it may show a retransmit
        # or delayed-ack timer first, so look until the keepalive one shows.)
        for port, direction in ((s.port, "sport"), (pg.port, "dport")):
            wait_for(lambda: keepalive_timers(port, direction)[0])
            timers, out = keepalive_timers(port, direction)
            assert timers, out
            assert all(t <= 7.0 for t in timers), out  # tcp_keepidle, not the kernel's 7200 s


def test_tcp_keepalive_off(make_sluice):
    s = make_sluice(pool_mode="session", tcp_keepalive=False)
    with psycopg.connect(s.dsn()) as c:
        c.execute("SELECT 1")
        timers, out = keepalive_timers(s.port, "sport")
        assert timers == [], out


def test_check_query_that_never_answers_is_timed_out(make_sluice, pg):
    # server_check_query runs before an idle server is handed out (server_check_delay 0);
    # one that hangs is abandoned after server_connect_timeout and the server closed, and
    # the client gets a fresh server instead of waiting for ever.
    s = make_sluice(pool_mode="transaction", default_pool_size=2, server_check_delay=0,
                    server_check_query="SELECT pg_sleep(600)", server_connect_timeout=1)
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'"
    try:
        with psycopg.connect(s.dsn(), autocommit=True) as c:
            first = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # fresh: no check
            time.sleep(0.05)  # (server_check_delay 0: any idle time triggers the check)
            second = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert second != first
        assert wait_for(lambda: "internal query timed out" in s.log_text()), s.log_tail(20)
    finally:
        # The abandoned backends sleep on in PostgreSQL (closing the socket does not
        # interrupt pg_sleep): end them, so later tests start with no server left over.
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query = 'SELECT pg_sleep(600)'")
        assert wait_for(lambda: pg.psql(sleeping) == "0"), "sleeping backends left"


def test_login_timeout_sends_fatal_before_closing(make_sluice):
    s = make_sluice(client_login_timeout=1)
    r = RawPg("127.0.0.1", s.port, timeout=15)
    try:
        pkt = startup_packet("app", "app")
        r.send(pkt[:6])  # half a startup packet, then nothing
        msgs = r.read_until_close(timeout=15)
    finally:
        r.close()
    assert msgs, "the connection was closed without an ErrorResponse"
    kind, body = msgs[-1]
    assert kind == b"E"
    assert b"08P01" in body and b"FATAL" in body
