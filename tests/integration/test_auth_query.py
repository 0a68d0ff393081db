"""auth_user + auth_query: users that exist only in PostgreSQL.

The roles made here have SCRAM (or md5) passwords in PostgreSQL and no entry in Sluice's
auth_file. PostgreSQL's pg_hba for 127.0.0.1 is scram-sha-256, so a SCRAM role that logs
in through Sluice proves SCRAM pass-through: Sluice never had its password.

Auth queries are counted in PostgreSQL's own log: the lookup role has
log_statement = 'all', so each query it runs is one log line naming pg_authid.
"""
from __future__ import annotations

import threading

import psycopg
import pytest

import harness
from conftest import APP_PW

AUTH_PW = "auth_pw"
PGONLY_PW = "pgonly_pw"


@pytest.fixture(scope="module")
def roles(pg):
    # The lookup role reads pg_authid: a superuser here (PgBouncer's docs suggest a
    # SECURITY DEFINER function in production; auth_query may name one).
    pg.create_role("authuser", AUTH_PW, superuser=True)
    pg.psql("ALTER ROLE authuser SET log_statement = 'all'")
    for name in ("pgonly", "burst", "burst2", "olduser"):
        pg.create_role(name, PGONLY_PW)
        pg.psql(f"GRANT CONNECT ON DATABASE app TO {name}")
    pg.psql("ALTER ROLE olduser VALID UNTIL '2000-01-01'")
    pg.create_role("pgmd5", PGONLY_PW, md5=True)
    return pg


def auth_sluice(make_sluice, **general):
    settings = dict(auth_type="scram-sha-256", auth_user="authuser", pool_mode="transaction",
                    max_client_conn=1000, auth_cache_ttl=60)
    settings.update(general)
    return make_sluice(users={"app": APP_PW, "authuser": AUTH_PW}, **settings)


def connect(s, user, password, db="app"):
    return psycopg.connect(s.dsn(user, password, db), autocommit=True)


def auth_queries_logged(pg, user: str) -> int:
    """Auth queries authuser ran for `user`: with log_statement = 'all', PostgreSQL logs each
    extended-protocol execution with a DETAIL line of its parameters."""
    text = pg.log.read_text(errors="replace")
    return sum(1 for line in text.splitlines()
               if "authuser@" in line and f"$1 = '{user}'" in line)


def test_role_only_in_postgres_logs_in_on_first_connection(roles, make_sluice):
    assert roles.role_secret("pgonly").startswith("SCRAM-SHA-256$")
    s = auth_sluice(make_sluice)
    with connect(s, "pgonly", PGONLY_PW) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "pgonly"
    assert "auth_query failed" not in s.log_text()


def test_wrong_password_is_28P01(roles, make_sluice):
    s = auth_sluice(make_sluice)
    with pytest.raises(psycopg.OperationalError) as e:
        connect(s, "pgonly", "not-the-password")
    assert 'password authentication failed for user "pgonly"' in str(e.value)
    # And the right one still works: the failure did not poison the cache.
    with connect(s, "pgonly", PGONLY_PW) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_unknown_and_expired_roles_fail_like_a_wrong_password(roles, make_sluice):
    s = auth_sluice(make_sluice)
    for user in ("nosuchrole", "olduser"):
        with pytest.raises(psycopg.OperationalError) as e:
            connect(s, user, PGONLY_PW)
        assert f'password authentication failed for user "{user}"' in str(e.value)


def test_md5_role_with_auth_type_md5(roles, make_sluice):
    assert roles.role_secret("pgmd5").startswith("md5")
    s = auth_sluice(make_sluice, auth_type="md5")
    with connect(s, "pgmd5", PGONLY_PW) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "pgmd5"


def test_md5_role_under_scram_is_refused(roles, make_sluice):
    s = auth_sluice(make_sluice)
    with pytest.raises(psycopg.OperationalError) as e:
        connect(s, "pgmd5", PGONLY_PW)
    assert 'password authentication failed for user "pgmd5"' in str(e.value)
    assert harness.wait_for(lambda: "has an md5 secret" in s.log_text())


def test_old_pg_shadow_query_and_auth_dbname(roles, make_sluice):
    s = auth_sluice(make_sluice, auth_query="SELECT usename, passwd FROM pg_shadow WHERE usename=$1",
                    auth_dbname="postgres")
    with connect(s, "pgonly", PGONLY_PW) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "pgonly"
    # The lookup ran in database postgres (log_line_prefix is '%m [%p] %u@%d ').
    assert harness.wait_for(lambda: any("authuser@postgres" in l and "pg_shadow" in l
                                        for l in roles.log.read_text(errors="replace").splitlines()))


def test_failing_auth_query_is_28000_and_logged(roles, make_sluice):
    s = auth_sluice(make_sluice, auth_query="SELECT no_such_column FROM pg_authid WHERE rolname=$1")
    with pytest.raises(psycopg.OperationalError) as e:
        connect(s, "pgonly", PGONLY_PW)
    assert "auth_query" in str(e.value)
    assert harness.wait_for(lambda: "auth_query failed for user pgonly" in s.log_text())


def test_burst_of_logins_runs_a_handful_of_queries(roles, make_sluice):
    s = auth_sluice(make_sluice, default_pool_size=5)
    before = auth_queries_logged(roles, "burst")
    n = 200
    barrier = threading.Barrier(n)
    errors, done = [], []

    def login(i):
        try:
            barrier.wait(timeout=harness.DEADLINE)
            with connect(s, "burst", PGONLY_PW) as c:
                c.execute("SELECT 1")
            done.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=login, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=harness.DEADLINE)
    assert not errors, errors[:3]
    assert len(done) == n
    # Concurrent logins of one user share one lookup; later ones hit the cache. The PG log
    # is written asynchronously: wait until the count is stable and at least one.
    assert harness.wait_for(lambda: auth_queries_logged(roles, "burst") > before)
    ran = auth_queries_logged(roles, "burst") - before
    assert 1 <= ran <= 5, f"{ran} auth queries for {n} logins"


def test_cache_expires_and_looks_up_again(roles, make_sluice):
    s = auth_sluice(make_sluice, auth_cache_ttl=0)
    before = auth_queries_logged(roles, "burst2")
    for _ in range(3):
        with connect(s, "burst2", PGONLY_PW) as c:
            c.execute("SELECT 1")
    assert harness.wait_for(lambda: auth_queries_logged(roles, "burst2") - before >= 3)


def test_per_database_auth_user_query_and_dbname(roles, make_sluice, pg):
    # Only the [databases] entry names the lookup: the general section has no auth_user.
    def shadow_lookups():
        return sum(1 for l in roles.log.read_text(errors="replace").splitlines()
                   if "authuser@postgres" in l and "pg_shadow" in l)
    before = shadow_lookups()
    s = make_sluice(users={"app": APP_PW, "authuser": AUTH_PW}, auth_type="scram-sha-256",
                    config={"databases": {"app": {
                        "auth_user": "authuser", "auth_dbname": "postgres",
                        "auth_query": "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"}}})
    with connect(s, "pgonly", PGONLY_PW) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "pgonly"
    assert harness.wait_for(lambda: shadow_lookups() > before)
    # Without an auth_user anywhere, a user missing from auth_file is simply unknown.
    s2 = make_sluice(users={"app": APP_PW}, auth_type="scram-sha-256")
    with pytest.raises(psycopg.OperationalError) as e:
        connect(s2, "pgonly", PGONLY_PW)
    assert 'password authentication failed for user "pgonly"' in str(e.value)
