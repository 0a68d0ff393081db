"""Pools are freed when nobody uses them: a database reached through the "*" entry after
autodb_idle_timeout, any other after pool_idle_timeout (PgBouncer's settings), so that
clients naming many databases cannot grow Sluice's memory for ever."""
from __future__ import annotations

import time

import psycopg

from harness import DEADLINE, wait_for

from conftest import ADMIN_PW


def pool_dbs(s) -> set:
    out = s.psql("SHOW POOLS", user="admin", password=ADMIN_PW, db="sluice")
    assert out.returncode == 0, out.stderr
    return {line.split("|")[0] for line in out.stdout.splitlines() if line}


def test_auto_database_pool_freed_after_autodb_idle_timeout(make_sluice, pg):
    s = make_sluice(pool_mode="transaction", autodb_idle_timeout=1, server_idle_timeout=1,
                    config={"databases": {"*": {"host": "127.0.0.1", "port": pg.port}}})
    with psycopg.connect(s.dsn(db="postgres")) as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == "postgres"
    assert "postgres" in pool_dbs(s)
    assert wait_for(lambda: "postgres" not in pool_dbs(s)), pool_dbs(s)
    assert "cleaning up idle pool: db=postgres" in s.log_text()
    assert "registered new auto-database: db=postgres" in s.log_text()
    # A new client gets a new pool, and the explicit entry was never touched.
    with psycopg.connect(s.dsn(db="postgres")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with psycopg.connect(s.dsn()) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_pool_with_a_client_is_never_freed(make_sluice):
    s = make_sluice(pool_mode="transaction", pool_idle_timeout=1, server_idle_timeout=1)
    with psycopg.connect(s.dsn(), autocommit=True) as c:
        c.execute("SELECT 1")
        # Its server goes after server_idle_timeout; the pool stays while the client does.
        assert wait_for(lambda: "closing idle server" in s.log_text() or
                        s.psql("SHOW SERVERS", user="admin", password=ADMIN_PW,
                               db="sluice").stdout.strip() == "", timeout=20)
        time.sleep(2.5)  # longer than pool_idle_timeout: it must not matter
        assert "app" in pool_dbs(s)
        assert c.execute("SELECT 2").fetchone()[0] == 2
    assert wait_for(lambda: "app" not in pool_dbs(s)), pool_dbs(s)
