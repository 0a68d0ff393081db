"""Issue 5: per-tenant rate limiting (DESIGN.md 1.5) against real PostgreSQL, real Redis
and real clients.

Tenants here are chosen by application_name (tenant_key: application_name), so one
database user drives several tenants side by side. Every test uses its own tenant names
(the session's Redis keeps buckets between tests). Rates are measured over whole runs and
compared with the limit +-10% after taking out the configured burst; the Redis backend may
also over-admit up to one lease per instance (lease_size, 5 tokens at 100/s), which stays
well inside the margin.
"""
from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from typing import Dict, List, Optional

import psycopg
import psycopg.errors
import pytest

import harness
from harness import PgError, RawPg, message
from conftest import APP_PW

_ids = itertools.count()


def tenant(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_ids)}"


def limits(backend: str, redis=None, tenants: Optional[Dict[str, dict]] = None,
           **extra) -> dict:
    rl = {"backend": backend, "tenant_key": "application_name",
          "default": {"queries_per_second": 0}, "tenants": tenants or {}}
    if backend == "redis":
        rl["redis_url"] = redis.url
    rl.update(extra)
    return {"rate_limits": rl}


def connect(s, app: str, **kw) -> psycopg.Connection:
    return psycopg.connect(s.dsn("app", application_name=app), autocommit=True, **kw)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.limited = 0
        self.other: List[str] = []
        self.hints: List[str] = []
        self.max_latency = 0.0

    def add(self, other: "Tally") -> None:
        with self.lock:
            self.ok += other.ok
            self.limited += other.limited
            self.other += other.other
            self.hints += other.hints
            self.max_latency = max(self.max_latency, other.max_latency)

    def __repr__(self) -> str:
        return (f"Tally(ok={self.ok}, limited={self.limited}, other={self.other[:3]}, "
                f"max_latency={self.max_latency:.3f})")


def drive(s, app: str, qps: float, seconds: float, conns: int = 4,
          sql: str = "SELECT 1") -> Tally:
    """Runs `sql` at `qps` in total over `conns` connections for `seconds`, paced (a slow
    answer is not made up for by a burst). Counts answers, 53400 rejections (keeping
    their HINTs) and any other error."""
    total = Tally()
    start_at = time.monotonic() + 0.3  # all connections open before the clock starts

    def worker(i: int) -> None:
        t = Tally()
        try:
            with connect(s, app) as c:
                period = conns / qps
                nxt = start_at + i * period / conns
                end = start_at + seconds
                while True:
                    now = time.monotonic()
                    if nxt > now:
                        time.sleep(nxt - now)
                    if time.monotonic() >= end:
                        break
                    nxt = max(nxt + period, time.monotonic() - period)
                    q0 = time.monotonic()
                    try:
                        c.execute(sql)
                        t.ok += 1
                    except psycopg.errors.ConfigurationLimitExceeded as e:
                        t.limited += 1
                        if len(t.hints) < 5:
                            t.hints.append(e.diag.message_hint or "")
                    except psycopg.Error as e:
                        t.other.append(f"{e.sqlstate}: {e}")
                    t.max_latency = max(t.max_latency, time.monotonic() - q0)
        except Exception as e:  # noqa: BLE001
            t.other.append(f"connection: {e!r}")
        total.add(t)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 30)
    assert not any(th.is_alive() for th in threads), "a client hung"
    return total


def assert_rate(t: Tally, limit: float, seconds: float, burst: float, slack: float = 0.10,
                extra: float = 0) -> None:
    """ok - burst over the run is limit +- slack (extra = lease over-admission allowed)."""
    rate = (t.ok - burst) / seconds
    assert limit * (1 - slack) <= rate <= limit * (1 + slack) + extra / seconds, \
        f"allowed {rate:.1f}/s against a limit of {limit}/s: {t}"


def assert_hints(t: Tally) -> None:
    assert t.hints, t
    for h in t.hints:
        assert re.search(r"retry after \d+ ?ms", h), h


def login_error(s, app: str) -> Optional[PgError]:
    """Logs in with the raw client (libpq hides the SQLSTATE of login errors): None when
    the login succeeds (the connection is closed again), else the error."""
    c = RawPg("127.0.0.1", s.port)
    try:
        c.login("app", APP_PW, "app", {"application_name": app})
        return None
    except PgError as e:
        return e
    finally:
        c.close()


def admin(s, sql: str) -> str:
    r = s.psql(sql, user="admin", db="sluice")
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---------------------------------------------------------------------------------------
# The headline: 100/s tenant driven at 400/s, an unlimited tenant beside it


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_tenant_limited_to_100_qps_driven_at_400(make_sluice, redis, backend):
    acme, free = tenant("acme"), tenant("free")
    s = make_sluice(default_pool_size=20, config=limits(backend, redis, {
        acme: {"queries_per_second": 100, "query_burst": 5}}))
    res: Dict[str, Tally] = {}
    bg = threading.Thread(target=lambda: res.__setitem__("free", drive(s, free, 100, 3.0, 2)),
                          daemon=True)
    bg.start()
    t = drive(s, acme, 400, 3.0, conns=4)
    bg.join(40)
    assert not t.other, t
    assert_rate(t, 100, 3.0, burst=5, extra=5)
    assert t.limited >= 0.6 * 3.0 * 300, t  # the rest was rejected with 53400
    assert_hints(t)
    f = res["free"]
    assert not f.other and f.limited == 0, f
    assert f.ok >= 0.9 * 300, f  # unaffected: every one of its queries answered


def test_rejected_query_keeps_connection_and_transaction_state(make_sluice, redis):
    """A rejection inside a transaction answers 53400 and ReadyForQuery 'T': nothing
    reached PostgreSQL, so the transaction is not aborted and still commits."""
    acme = tenant("txn")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 2, "query_burst": 2}}))
    c = RawPg("127.0.0.1", s.port)
    try:
        c.login("app", APP_PW, "app", {"application_name": acme})
        rows, err = c.query("BEGIN")
        assert err is None and c.txn_status == "T"
        errors = []
        for _ in range(6):
            rows, err = c.query("SELECT 1")
            if err is not None:
                errors.append(err)
                assert err.get("C") == "53400", err
                assert re.search(r"retry after \d+ ?ms", err.get("H", "")), err
                assert c.txn_status == "T", "the client's true transaction state"
        assert errors, "the limit was never reached"
        time.sleep(1.1)
        rows, err = c.query("COMMIT")
        assert err is None, err
        assert c.txn_status == "I"
    finally:
        c.close()


def test_extended_protocol_batch_answered_up_to_sync(make_sluice, redis):
    acme = tenant("ext")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 1, "query_burst": 1}}))
    with connect(s, acme) as c:
        assert c.execute("SELECT %s::int", (1,)).fetchone()[0] == 1  # the burst
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT %s::int", (2,))
        # The connection is in sync and usable once the budget is back.
        time.sleep(1.1)
        assert c.execute("SELECT %s::int", (3,)).fetchone()[0] == 3
    # Raw: Parse/Bind/Execute/Sync rejected as one batch: one ErrorResponse, one 'Z'.
    c = RawPg("127.0.0.1", s.port)
    try:
        c.login("app", APP_PW, "app", {"application_name": acme})
        for _ in range(5):  # spend what is left of the budget
            if c.query("SELECT 1")[1] is not None:
                break
        c.send(message(b"P", b"\0SELECT 1\0\0\0") + message(b"B", b"\0\0\0\0\0\0\0\0")
               + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        kinds = []
        while True:
            kind, body = c.read_msg()
            kinds.append(kind)
            if kind == b"Z":
                break
        assert kinds == [b"E", b"Z"], kinds
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# Two instances, one budget


def test_two_instances_share_one_budget(make_sluice, redis):
    acme = tenant("shared")
    cfg = limits("redis", redis, {acme: {"queries_per_second": 100, "query_burst": 5}})
    a = make_sluice(config=cfg)
    b = make_sluice(config=cfg)
    res: Dict[str, Tally] = {}
    th = threading.Thread(target=lambda: res.__setitem__("b", drive(b, acme, 200, 3.0, 2)),
                          daemon=True)
    th.start()
    ta = drive(a, acme, 200, 3.0, 2)
    th.join(40)
    tb = res["b"]
    assert not ta.other and not tb.other, (ta, tb)
    both = Tally()
    both.add(ta)
    both.add(tb)
    assert_rate(both, 100, 3.0, burst=5, extra=2 * 5)
    assert ta.ok > 0 and tb.ok > 0, (ta, tb)  # both served (first come, first served)


# ---------------------------------------------------------------------------------------
# Redis failures


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["local", "open", "closed"])
def test_redis_stopped_mid_run_then_restarted(make_sluice, workdir, policy):
    r = harness.Redis(base=workdir).start()
    try:
        acme = tenant(f"down-{policy}")
        s = make_sluice(default_pool_size=20, config=limits("redis", r, {
            acme: {"queries_per_second": 100, "query_burst": 5}},
            on_redis_failure=policy, expected_instances=2))
        up = drive(s, acme, 200, 2.0, 2)
        assert not up.other, up
        assert_rate(up, 100, 2.0, burst=5, extra=5)

        r.stop()
        down = drive(s, acme, 200, 2.0, 2)
        assert not down.other, down
        assert down.max_latency < 1.0, f"a client waited on the dead Redis: {down}"
        if policy == "local":
            # The per-instance share: 100 / expected_instances, burst 5/2 -> 2.5.
            assert_rate(down, 50, 2.0, burst=3, slack=0.15)
        elif policy == "open":
            assert down.limited == 0 and down.ok >= 0.9 * 400, down
        else:
            # (at most one unspent lease, 5 tokens, is used up after Redis went away)
            assert down.ok <= 5 and down.limited >= 0.9 * 400 - 5, down
            assert_hints(down)

        r.start()  # same port
        deadline = time.monotonic() + 8
        back = None
        while time.monotonic() < deadline:
            back = drive(s, acme, 200, 1.0, 2)
            if 80 <= back.ok <= 125 and not back.other:
                break
        assert back is not None and 80 <= back.ok <= 125, \
            f"global limit not back within a few seconds: {back}"
    finally:
        r.stop()


def test_redis_never_started_policy_applies(make_sluice, workdir):
    """Sluice starts, and serves, with its Redis unreachable from the first moment."""
    acme = tenant("nored")
    port = harness.free_port()
    s = make_sluice(config={"rate_limits": {
        "backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0",
        "tenant_key": "application_name", "on_redis_failure": "closed",
        "tenants": {acme: {"queries_per_second": 100}}}})
    with connect(s, tenant("other")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1  # unlimited tenant unaffected
    t0 = time.monotonic()
    with connect(s, acme) as c:
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT 1")
    assert time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------------------------------
# action: delay


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_delay_absorbs_a_burst_within_max_delay(make_sluice, redis, backend):
    acme = tenant("delay")
    s = make_sluice(default_pool_size=20, config=limits(backend, redis, {
        acme: {"queries_per_second": 20, "query_burst": 1, "action": "delay",
               "max_delay": "2s"}}))
    n = 10
    conns = [connect(s, acme) for _ in range(n)]
    try:
        barrier = threading.Barrier(n)
        errors: List[str] = []
        done: List[float] = []

        def one(c):
            barrier.wait()
            t0 = time.monotonic()
            try:
                c.execute("SELECT 1")
                done.append(time.monotonic() - t0)
            except psycopg.Error as e:
                errors.append(f"{e.sqlstate}: {e}")

        ths = [threading.Thread(target=one, args=(c,), daemon=True) for c in conns]
        for th in ths:
            th.start()
        for th in ths:
            th.join(20)
        assert not errors, errors
        assert len(done) == n
        # 10 queries at 20/s with a burst of 1: the last one waited about 450 ms.
        assert max(done) >= 0.3, done
        assert max(done) < 2.0, done
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_delay_rejects_past_max_delay(make_sluice, redis, backend):
    acme = tenant("delay-max")
    s = make_sluice(default_pool_size=20, config=limits(backend, redis, {
        acme: {"queries_per_second": 10, "query_burst": 1, "action": "delay",
               "max_delay": "150ms"}}))
    n = 8
    conns = [connect(s, acme) for _ in range(n)]
    try:
        barrier = threading.Barrier(n)
        ok: List[float] = []
        limited: List[str] = []
        other: List[str] = []

        def one(c):
            barrier.wait()
            t0 = time.monotonic()
            try:
                c.execute("SELECT 1")
                ok.append(time.monotonic() - t0)
            except psycopg.errors.ConfigurationLimitExceeded as e:
                limited.append(e.diag.message_hint or "")
                ok_wait = time.monotonic() - t0
                assert ok_wait < 1.0
            except psycopg.Error as e:
                other.append(str(e))

        ths = [threading.Thread(target=one, args=(c,), daemon=True) for c in conns]
        for th in ths:
            th.start()
        for th in ths:
            th.join(20)
        assert not other, other
        # 1 at once + 1 within 100 ms (the next within 150 ms of delay), the rest rejected.
        assert 1 <= len(ok) <= 3, (ok, limited)
        assert len(limited) >= n - 3, (ok, limited)
        for h in limited:
            assert re.search(r"retry after \d+ ?ms", h), h
        for c in conns:  # every connection still usable
            time.sleep(0.11)
            c.execute("SELECT 1")
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------------------------
# Connections


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_max_connections_refuses_then_admits_again(make_sluice, redis, backend):
    acme = tenant("maxconn")
    s = make_sluice(default_pool_size=20, config=limits(backend, redis, {acme: {"max_connections": 2}}))
    a = connect(s, acme)
    b = connect(s, acme)
    try:
        err = login_error(s, acme)
        assert err is not None, "a third connection was admitted"
        assert err.sqlstate in ("53300", "53400"), err.fields
        # Another tenant is not affected.
        with connect(s, tenant("other")) as o:
            assert o.execute("SELECT 1").fetchone()[0] == 1
        a.close()
        deadline = time.monotonic() + 3
        while True:
            try:
                c = connect(s, acme)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert c.execute("SELECT 1").fetchone()[0] == 1
        c.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_connections_per_second(make_sluice, redis, backend):
    acme = tenant("cps")
    s = make_sluice(default_pool_size=20, config=limits(backend, redis, {
        acme: {"connections_per_second": 1, "connection_burst": 2}}))
    ok, refused = 0, []
    for _ in range(5):
        err = login_error(s, acme)
        if err is None:
            ok += 1
        else:
            refused.append(err.sqlstate)
    assert ok == 2, (ok, refused)
    assert refused == ["53400"] * 3, refused
    time.sleep(1.1)
    assert login_error(s, acme) is None  # the budget refills


def test_transactions_per_second(make_sluice, redis):
    acme = tenant("tps")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"transactions_per_second": 20, "transaction_burst": 2}}))
    ok = limited = 0
    with connect(s, acme) as c:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            # Plain BEGIN/COMMIT: psycopg's transaction() context cannot recover from an
            # error on BEGIN itself (PostgreSQL never fails a BEGIN; the limiter does).
            try:
                c.execute("BEGIN")
            except psycopg.errors.ConfigurationLimitExceeded:
                limited += 1
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                continue
            c.execute("SELECT 1")
            c.execute("COMMIT")
            ok += 1
            time.sleep(0.005)
    assert 2 + 20 * 2 * 0.8 <= ok <= 2 + 20 * 2 * 1.2 + 2, (ok, limited)
    assert limited > 0


# ---------------------------------------------------------------------------------------
# backend: local, shadow, reload, visibility


def test_backend_local_needs_no_redis(make_sluice):
    acme, free = tenant("local"), tenant("free")
    s = make_sluice(config={"rate_limits": {
        "backend": "local", "tenant_key": "application_name",
        "tenants": {acme: {"queries_per_second": 100, "query_burst": 5}}}})
    t = drive(s, acme, 400, 3.0, 4)
    assert not t.other, t
    assert_rate(t, 100, 3.0, burst=5)
    assert_hints(t)
    with connect(s, free) as c:
        for _ in range(300):
            c.execute("SELECT 1")


def test_shadow_counts_but_never_rejects(make_sluice, redis):
    acme = tenant("shadow")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 10, "query_burst": 1, "shadow": True}}))
    t = drive(s, acme, 100, 1.0, 1)
    assert t.limited == 0 and not t.other and t.ok >= 80, t
    out = admin(s, "SHOW TENANTS")
    row = next((line for line in out.splitlines() if acme in line), None)
    assert row is not None, out
    assert "shadow" in row, row


def test_reload_changes_limits_without_dropping_clients(make_sluice, redis):
    acme = tenant("reload")
    cfg = limits("redis", redis, {acme: {"queries_per_second": 5, "query_burst": 1}})
    s = make_sluice(config=cfg)
    with connect(s, acme) as c:
        c.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            for _ in range(5):
                c.execute("SELECT 1")
        cfg2 = harness.deep_merge(s.config, {"rate_limits": {"tenants": {
            acme: {"queries_per_second": 0}}}})
        s.write_config(cfg2)
        s.reload()
        deadline = time.monotonic() + 5
        while True:
            try:
                for _ in range(50):
                    c.execute("SELECT 1")
                break
            except psycopg.errors.ConfigurationLimitExceeded:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert c.execute("SELECT 1").fetchone()[0] == 1  # the same connection


def test_show_tenants(make_sluice, redis):
    acme = tenant("show")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 10, "query_burst": 1}}))
    drive(s, acme, 50, 1.0, 1)
    out = admin(s, "SHOW TENANTS")
    row = next((line for line in out.splitlines() if acme in line), None)
    assert row is not None, out
    assert "redis" in row, row
