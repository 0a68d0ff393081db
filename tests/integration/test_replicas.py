"""Host selection across a real primary and a real streaming standby (issue 12).

Each test gets its own pair: a primary on 127.0.0.1 and a standby made from it by
pg_basebackup -R on 127.0.0.2, both on the same port, so one entry `host: [..., ...]`
names both. Whether a statement ran on the standby is read from pg_is_in_recovery()
through Sluice, never assumed.

  1. target_session_attrs: read-write entries land on the primary, read-only, standby and
     prefer-standby entries on the standby, whatever order the hosts are listed in;
     SHOW SERVERS says each server's role, SHOW DATABASES each host's.
  2. load_balance_hosts: round-robin spreads new server connections over the hosts,
     disable keeps them on the first.
  3. Failover: the primary is stopped, the standby promoted; pgbench -c 20 in transaction
     mode runs through it. Writes through the read-write entry succeed on the promoted
     server, clients between transactions carry on, and at most the transactions in
     flight (no more than pool_size) fail.
  4. A promoted standby: a standby entry's pooled servers on it are not handed out once
     one of them has shown the new role.
  5. The lag guard: a standby whose replay is paused falls behind the primary by more
     than max_replica_lag; the prefer-standby entry then reads from the primary while
     writes continue, and goes back to the standby once it has caught up.
"""
from __future__ import annotations

import re
import time
import urllib.request

import psycopg
import pytest

import harness
from harness import DEADLINE, wait_for
from conftest import APP_PW, DEFAULT_USERS

TXN = "transaction"


@pytest.fixture
def pair():
    """A primary with roles app/admin/stats, database app (pgbench tables), and its standby."""
    primary = harness.Postgres().start()
    standby = None
    try:
        for name, pw in DEFAULT_USERS.items():
            if name != "md5user":
                primary.create_role(name, pw)
        primary.create_database("app", owner="app")
        primary.pgbench_init("app", "app", scale=1)
        standby = harness.Standby(primary).start()
        assert standby.caught_up(), "the standby did not catch up with the primary"
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop("immediate")
        primary.stop("immediate")


def entry(primary, hosts, **kw):
    e = {"host": hosts, "port": primary.port, "dbname": "app"}
    e.update(kw)
    return e


def start_sluice(make_sluice, primary, databases, **general):
    # make_sluice's own "app" entry points at the session's PostgreSQL: replaced whole.
    cfg = {"databases": {"app": None}}
    s = make_sluice(config=cfg, start=False, **general)
    s.config["databases"] = databases
    s.write_config()
    s.start()
    return s


def connect(s, db="app", **kw) -> psycopg.Connection:
    return psycopg.connect(s.dsn("app", APP_PW, db), autocommit=True, **kw)


def in_recovery(s, db) -> bool:
    with connect(s, db) as c:
        return c.execute("SELECT pg_is_in_recovery()").fetchone()[0]


def console(s, sql):
    with psycopg.connect(s.dsn("admin", DEFAULT_USERS["admin"], "sluice"), autocommit=True,
                         prepare_threshold=None) as c:
        cur = c.execute(sql)
        if cur.description is None:  # a command (RECONNECT, ...): no rows
            return []
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


BOTH = ["127.0.0.2", "127.0.0.1"]  # the standby first: the order must not decide


@pytest.mark.timeout(180)
def test_target_session_attrs_choose_primary_or_standby(pair, make_sluice):
    primary, standby = pair
    metrics_port = harness.free_port()
    s = start_sluice(make_sluice, primary, {
        "app": entry(primary, BOTH, target_session_attrs="read-write"),
        "app_primary": entry(primary, BOTH, target_session_attrs="primary", dbname="app"),
        "app_ro": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="read-only"),
        "app_standby": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="standby"),
        "app_prefer": entry(primary, ["127.0.0.1", "127.0.0.2"],
                            target_session_attrs="prefer-standby"),
    }, server_login_retry=1, metrics_listen=f"127.0.0.1:{metrics_port}")
    for _ in range(3):  # new connections and reused ones alike
        assert in_recovery(s, "app") is False
        assert in_recovery(s, "app_primary") is False
        assert in_recovery(s, "app_ro") is True
        assert in_recovery(s, "app_standby") is True
        assert in_recovery(s, "app_prefer") is True
    # Writes through the read-write entry reach the primary and replicate.
    with connect(s, "app") as c:
        c.execute("CREATE TABLE IF NOT EXISTS marks (v text)")
        c.execute("INSERT INTO marks VALUES ('via sluice')")
    assert standby.caught_up()
    with connect(s, "app_ro") as c:
        assert c.execute("SELECT count(*) FROM marks").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("INSERT INTO marks VALUES ('refused by the standby')")

    servers = console(s, "SHOW SERVERS")
    roles = {(r["database"], r["addr"], r["role"]) for r in servers}
    assert ("app", "127.0.0.1", "primary") in roles, servers
    assert ("app_ro", "127.0.0.2", "standby") in roles, servers
    assert not any(r["database"] == "app" and r["role"] != "primary" for r in servers), servers
    dbs = {r["name"]: r for r in console(s, "SHOW DATABASES")}
    assert dbs["app"]["target_session_attrs"] == "read-write"
    assert dbs["app_prefer"]["target_session_attrs"] == "prefer-standby"
    assert "127.0.0.1=primary" in dbs["app"]["host_roles"]
    assert "127.0.0.2=standby" in dbs["app_ro"]["host_roles"]
    # /metrics: each pool's servers by host and role.
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) \
        .read().decode()
    assert re.search(r'sluice_server_connections_by_host\{database="app",user="app",'
                     r'host="127\.0\.0\.1",role="primary"\} [1-9]', text), text[-2000:]
    assert re.search(r'sluice_server_connections_by_host\{database="app_ro",user="app",'
                     r'host="127\.0\.0\.2",role="standby"\} [1-9]', text), text[-2000:]
    assert 'database="app",user="app",host="127.0.0.2"' not in text
    assert s.alive()


@pytest.mark.timeout(180)
def test_standby_only_entry_waits_and_times_out_without_a_standby(pair, make_sluice):
    """No host fits: the client waits (the hosts are tried again every server_login_retry)
    and gets query_wait_timeout's error, not a connection to the wrong server."""
    primary, standby = pair
    standby.stop("fast")
    s = start_sluice(make_sluice, primary, {
        "app_standby": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="standby"),
    }, server_login_retry=1, query_wait_timeout=3)
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as ei:
        in_recovery(s, "app_standby")
    waited = time.monotonic() - t0
    # It waited (the retries stop once the next would come after query_wait_timeout, so
    # up to server_login_retry early), and says why no host would do.
    assert waited >= 1.5, (waited, ei.value)
    assert "target_session_attrs is standby" in str(ei.value), ei.value
    assert not any(r["database"] == "app_standby" for r in console(s, "SHOW SERVERS"))
    # The standby comes back: the same entry works, on it.
    standby.start()
    assert wait_for(lambda: _try(lambda: in_recovery(s, "app_standby")), DEADLINE, 0.2) is True


def _try(f):
    try:
        return f()
    except psycopg.Error:
        return None


@pytest.mark.timeout(180)
def test_promoted_standby_leaves_a_standby_entry(pair, make_sluice):
    """PostgreSQL tells an idle session nothing when its server is promoted. The first
    server of the entry to run a query after the promotion shows the new role (its
    ParameterStatus) and is closed; the entry's other pooled servers on that host are then
    not handed out either. So at most one transaction runs on the promoted server, and the
    entry then has no host that fits (it waits and times out)."""
    primary, standby = pair
    s = start_sluice(make_sluice, primary, {
        "app_standby": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="standby"),
    }, pool_mode=TXN, server_login_retry=1, query_wait_timeout=2)
    # Three pooled servers on the standby: three transactions open at once.
    conns = [connect(s, "app_standby") for _ in range(3)]
    try:
        for c in conns:
            c.execute("BEGIN")
            assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        for c in conns:
            c.execute("COMMIT")
    finally:
        for c in conns:
            c.close()
    assert len([r for r in console(s, "SHOW SERVERS") if r["state"] == "idle"]) == 3
    standby.promote()
    answers = []
    for _ in range(6):
        try:
            answers.append(in_recovery(s, "app_standby"))
        except psycopg.OperationalError as e:
            answers.append(str(e))
    assert answers.count(False) <= 1, answers  # at most one transaction on the promoted server
    assert True not in answers, answers
    assert all("query_wait_timeout" in a or "target_session_attrs" in a
               for a in answers if isinstance(a, str)), answers
    assert not [r for r in console(s, "SHOW SERVERS") if r["database"] == "app_standby"]
    assert s.alive()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("balance", ["round-robin", "disable"])
def test_load_balance_hosts(pair, make_sluice, balance):
    primary, _standby = pair
    s = start_sluice(make_sluice, primary, {
        "app": entry(primary, ["127.0.0.1", "127.0.0.2"], load_balance_hosts=balance),
    }, default_pool_size=6)
    conns = [connect(s) for _ in range(6)]  # session mode: six server connections
    try:
        where = [c.execute("SELECT pg_is_in_recovery()").fetchone()[0] for c in conns]
    finally:
        for c in conns:
            c.close()
    addrs = [r["addr"] for r in console(s, "SHOW SERVERS") if r["database"] == "app"]
    if balance == "round-robin":
        assert sorted(where) == [False] * 3 + [True] * 3, where
        assert sorted(addrs) == ["127.0.0.1"] * 3 + ["127.0.0.2"] * 3, addrs
    else:
        assert where == [False] * 6, where
        assert addrs == ["127.0.0.1"] * 6, addrs
    assert {r["name"]: r for r in console(s, "SHOW DATABASES")}["app"]["load_balance_hosts"] \
        == balance


POOL = 5


@pytest.mark.timeout(300)
def test_failover_under_pgbench(pair, make_sluice):
    primary, standby = pair
    s = start_sluice(make_sluice, primary, {
        "app": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="read-write"),
        "app_ro": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="prefer-standby"),
    }, pool_mode=TXN, default_pool_size=POOL, max_client_conn=100, server_login_retry=1,
        query_wait_timeout=60)
    log = s.dir / "pgbench-failover.log"
    p = harness.spawn([str(harness.PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(s.port),
                       "-U", "app", "-c", "20", "-j", "2", "-T", "25", "-n", "-P", "1", "app"],
                      log_path=log, env=harness.client_env(APP_PW))
    history = "SELECT count(*) FROM pgbench_history"
    try:
        n0 = int(primary.psql(history, db="app"))
        assert wait_for(lambda: p.poll() is not None
                        or int(primary.psql(history, db="app")) >= n0 + 300, 60, 0.1), \
            f"pgbench made no progress:\n{harness.tail(log)}"
        assert p.poll() is None, f"pgbench ended early:\n{harness.tail(log)}"
        # The primary goes away at once (as in a crash), the standby is promoted.
        primary.stop("immediate")
        promoted_at = time.monotonic()
        standby.promote()
        # Writes through the read-write entry work again, on the promoted server.
        def write_ok():
            try:
                with connect(s, "app") as c:
                    c.execute("CREATE TABLE IF NOT EXISTS after_failover (v int)")
                    c.execute("INSERT INTO after_failover VALUES (1)")
                    return c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            except psycopg.Error:
                return False
        assert wait_for(write_ok, 30, 0.1), "no write succeeded after the promotion"
        write_delay = time.monotonic() - promoted_at
        n1 = int(standby.psql(history, db="app"))
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    out = log.read_text(errors="replace")
    assert rc in (0, 2), f"pgbench exit code {rc}:\n{out[-3000:]}"
    aborted = len(re.findall(r"client \d+ aborted", out))
    # In transaction mode at most POOL clients hold a server, so at most POOL transactions
    # were in flight when the primary went away: the other clients must carry on.
    assert aborted <= POOL, f"{aborted} clients aborted (pool of {POOL}):\n{out[-3000:]}"
    # And they did: transactions committed on the promoted server after the failover.
    n2 = int(standby.psql(history, db="app"))
    assert n2 > n1, (f"no transaction after the failover ({n1} -> {n2}):\n{out[-3000:]}\n"
                     f"standby log:\n{harness.tail(standby.log, 30)}\n"
                     f"sluice log:\n{s.log_tail(60)}")
    assert standby.psql("SELECT count(*) FROM after_failover", db="app") != "0"
    print(f"failover: first write {write_delay:.2f} s after the promotion; "
          f"{aborted} of 20 clients aborted; {n2 - n1} transactions after it")
    servers = console(s, "SHOW SERVERS")
    assert servers and all(r["addr"] == "127.0.0.2" for r in servers), servers
    assert all(r["role"] == "primary" for r in servers if r["database"] == "app"), servers
    assert s.alive()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("balance", ["disable", "round-robin"])
def test_lag_guard_skips_a_paused_standby(pair, make_sluice, balance):
    primary, standby = pair
    s = start_sluice(make_sluice, primary, {
        "app": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="read-write"),
        # The primary listed first: with disable, only the ranking brings the standby back.
        "app_ro": entry(primary, ["127.0.0.1", "127.0.0.2"], target_session_attrs="prefer-standby",
                        max_replica_lag=1, load_balance_hosts=balance),
    }, pool_mode=TXN, server_login_retry=1, server_check_delay=0)
    assert in_recovery(s, "app_ro") is True
    standby.psql("SELECT pg_wal_replay_pause()")
    n = 0

    def reads_moved():
        nonlocal n
        n += 1
        with connect(s, "app") as c:  # writes carry on through the read-write entry
            c.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                      "VALUES (1, 1, %s, 0, now())", (n,))
        return in_recovery(s, "app_ro") is False

    assert wait_for(reads_moved, 60, 0.2), "reads stayed on the lagging standby"
    dbs = {r["name"]: r for r in console(s, "SHOW DATABASES")}
    assert "127.0.0.2=standby (lagging)" in dbs["app_ro"]["host_roles"], dbs["app_ro"]
    assert in_recovery(s, "app") is False
    # Replay resumes: once it has caught up, new server connections go to the standby.
    standby.psql("SELECT pg_wal_replay_resume()")
    assert standby.caught_up()

    def back_on_standby():
        console(s, "RECONNECT app_ro")  # the pool's primary connection is closed when idle
        return in_recovery(s, "app_ro") is True

    assert wait_for(back_on_standby, 60, 0.5), "reads did not return to the standby"
    assert s.alive()
