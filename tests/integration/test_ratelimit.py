"""Issue 5: per-tenant rate limiting (DESIGN.md 1.5) against real PostgreSQL, real Redis
and real clients.

Tenants here are chosen by application_name (tenant_key: application_name), so one
database user drives several tenants side by side. Every test uses its own tenant names
(the session's Redis keeps buckets between tests).

Verdicts do not depend on how fast this machine can drive the load. Every request's send
and answer times are recorded, and the number admitted is compared +-10% (after taking out
the configured burst) with what a token bucket of the same rate and burst admits for
exactly those send times (`gcra_admitted`, the arithmetic Sluice runs), and it never exceeds
burst + limit x (the time Sluice had to decide in) +10%. On a fast machine that is the old
"limit +-10% over the run"; on a slow one that could not offer the load, the expectation
shrinks with the load instead of failing. The Redis backend may also over-admit up to one
lease per instance (lease_size, 5 tokens at 100/s), which is allowed for as `extra`.
"""
from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import psycopg
import psycopg.errors
import pytest

import harness
from harness import DEADLINE, wait_for
from harness import PgError, RawPg, message
from conftest import APP_PW

_ids = itertools.count()

# Deadline for anything a test waits on: generous, so that a slow or loaded machine
# (sanitizer builds, two shared cores) changes how long a test runs, never its verdict.

# Redis operation timeout in the tests that stop Redis: long, so that a client that
# waited on the dead Redis would wait this long, unmistakably; no answer may take it.
REDIS_TIMEOUT_S = 10


def gcra_admitted(times: Sequence[float], rate: float, burst: float) -> int:
    """How many requests arriving at `times` (seconds) a bucket of `burst` tokens refilled
    at `rate` per second admits, starting full: GCRA as Sluice computes it (a request
    conforms while max(TAT, now) + T <= now + burst*T; a rejected one takes no token)."""
    interval = 1.0 / rate
    tolerance = max(1.0, burst) * interval
    tat = float("-inf")
    n = 0
    for now in sorted(times):
        base = max(tat, now)
        if base + interval <= now + tolerance + 1e-9:
            tat = base + interval
            n += 1
    return n


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
        # (sent, answered, outcome) of every request: "ok", "limited" or "other".
        self.attempts: List[Tuple[float, float, str]] = []

    def add(self, other: "Tally") -> None:
        with self.lock:
            self.ok += other.ok
            self.limited += other.limited
            self.other += other.other
            self.hints += other.hints
            self.max_latency = max(self.max_latency, other.max_latency)
            self.attempts += other.attempts

    def sent_times(self) -> List[float]:
        return [a for a, _, _ in self.attempts]

    def window(self) -> float:
        """From the first request sent to the last answer: every decision fell in it."""
        if not self.attempts:
            return 0.0
        return max(b for _, b, _ in self.attempts) - min(a for a, _, _ in self.attempts)

    def __repr__(self) -> str:
        return (f"Tally(ok={self.ok}, limited={self.limited}, other={self.other[:3]}, "
                f"sent={len(self.attempts)}, window={self.window():.3f}s, "
                f"max_latency={self.max_latency:.3f})")


def drive(s, app: str, qps: float, seconds: float, conns: int = 4,
          sql: str = "SELECT 1", stop: Optional[threading.Event] = None) -> Tally:
    """Runs `sql` at `qps` in total over `conns` connections for `seconds` (or until
    `stop` is set), paced (a slow answer is not made up for by a burst). Counts answers,
    53400 rejections (keeping their HINTs) and any other error."""
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
                    if time.monotonic() >= end or (stop is not None and stop.is_set()):
                        break
                    nxt = max(nxt + period, time.monotonic() - period)
                    q0 = time.monotonic()
                    try:
                        c.execute(sql)
                        t.ok += 1
                        outcome = "ok"
                    except psycopg.errors.ConfigurationLimitExceeded as e:
                        t.limited += 1
                        outcome = "limited"
                        if len(t.hints) < 5:
                            t.hints.append(e.diag.message_hint or "")
                    except psycopg.Error as e:
                        t.other.append(f"{e.sqlstate}: {e}")
                        outcome = "other"
                    q1 = time.monotonic()
                    t.max_latency = max(t.max_latency, q1 - q0)
                    t.attempts.append((q0, q1, outcome))
        except Exception as e:  # noqa: BLE001
            t.other.append(f"connection: {e!r}")
        total.add(t)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + DEADLINE)
    assert not any(th.is_alive() for th in threads), "a client hung"
    return total


def bucket_bounds(t: Tally, limit: float, burst: float, slack: float = 0.10,
                  extra: float = 0) -> Tuple[int, float, float]:
    """(what a token bucket admits of t's requests, the lowest and the highest number
    admitted that agree with it): +-slack beyond the burst, give or take the tokens that
    refill while one request is in flight (it reaches Sluice somewhere within its round
    trip), plus `extra` above."""
    expected = gcra_admitted(t.sent_times(), limit, burst)
    beyond = max(0.0, expected - min(expected, burst))
    margin = 1 + limit * t.max_latency
    return expected, expected - beyond * slack - margin, expected + beyond * slack + margin + extra


def rate_problem(t: Tally, limit: float, burst: float, slack: float = 0.10,
                 extra: float = 0) -> Optional[str]:
    """None when the number admitted agrees with the limit, else what is wrong.

    - never more than burst + limit x window (+slack) + extra, the window being the time
      in which Sluice took its decisions (first request sent to last answer);
    - against the load really offered: within bucket_bounds of what a token bucket
      admits for the send times. So rejections are required where the bucket had no
      token, and only there."""
    if not t.attempts:
        return f"no request was sent: {t}"
    if len(t.attempts) != t.ok + t.limited + len(t.other):
        return f"requests lost count: {t}"
    ceiling = burst + limit * t.window() * (1 + slack) + extra
    if t.ok > ceiling:
        return f"admitted {t.ok} > {ceiling:.1f} ({limit}/s over {t.window():.2f}s): {t}"
    expected, low, high = bucket_bounds(t, limit, burst, slack, extra)
    if not low <= t.ok <= high:
        return (f"admitted {t.ok}, a {limit}/s bucket of {burst} admits {expected} of these "
                f"{len(t.attempts)} requests (allowed {low:.1f}..{high:.1f}): {t}")
    return None


def assert_rate(t: Tally, limit: float, burst: float, slack: float = 0.10,
                extra: float = 0) -> None:
    problem = rate_problem(t, limit, burst, slack, extra)
    assert problem is None, problem


def assert_hints(t: Tally) -> None:
    """Every rejection carries the retry hint (each client keeps its first five): some
    hint when anything was rejected, none otherwise."""
    assert bool(t.hints) == (t.limited > 0) and len(t.hints) <= t.limited, t
    for h in t.hints:
        assert re.search(r"retry after \d+ ?ms", h), h


def login_error(s, app: str) -> Optional[PgError]:
    """Logs in with the raw client (libpq hides the SQLSTATE of login errors): None when
    the login succeeds (the connection is closed again), else the error."""
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
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
    bg.join(3.0 + 2 * DEADLINE)
    assert not bg.is_alive(), "the unlimited tenant's clients hung"
    assert not t.other, t
    assert_rate(t, 100, burst=5, extra=5)
    # The rest was rejected with 53400: as many as the bucket had no token for (counted
    # against the requests really sent, where a fixed 540 assumed 400/s were reached).
    expected, _, high = bucket_bounds(t, 100, burst=5, extra=5)
    assert t.limited >= len(t.attempts) - high, (expected, t)
    assert_hints(t)
    f = res["free"]
    assert not f.other and f.limited == 0, f
    # Unaffected: every one of its queries answered (was: at least 270 of them, a count
    # only a fast enough machine reaches).
    assert f.attempts and f.ok == len(f.attempts), f


def test_rejected_query_keeps_connection_and_transaction_state(make_sluice, redis):
    """A rejection inside a transaction answers 53400 and ReadyForQuery 'T': nothing
    reached PostgreSQL, so the transaction is not aborted and still commits."""
    acme = tenant("txn")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 2, "query_burst": 2}}))
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        c.login("app", APP_PW, "app", {"application_name": acme})
        rows, err = c.query("BEGIN")
        assert err is None and c.txn_status == "T"
        errors = []
        deadline = time.monotonic() + DEADLINE
        # Queries back to back until the limit answers (a fixed six of them need not reach
        # it on a slow machine: 2/s refill between them).
        while len(errors) < 4 and time.monotonic() < deadline:
            rows, err = c.query("SELECT 1")
            if err is not None:
                errors.append(err)
                assert err.get("C") == "53400", err
                assert re.search(r"retry after \d+ ?ms", err.get("H", "")), err
                assert c.txn_status == "T", "the client's true transaction state"
            else:
                assert rows == [["1"]], rows
        assert errors, "the limit was never reached"
        # Once the budget is back (waited for, then polled: a COMMIT rejected in the
        # meantime leaves the transaction open, as every rejection here did).
        time.sleep(1.1)
        while True:
            rows, err = c.query("COMMIT")
            if err is None or err.get("C") != "53400" or time.monotonic() > deadline:
                break
            assert c.txn_status == "T", err
            time.sleep(0.1)
        assert err is None, err
        assert c.txn_status == "I"
    finally:
        c.close()


def test_extended_protocol_batch_answered_up_to_sync(make_sluice, redis):
    acme = tenant("ext")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 1, "query_burst": 1}}))
    deadline = time.monotonic() + DEADLINE
    with connect(s, acme) as c:
        assert c.execute("SELECT %s::int", (1,)).fetchone()[0] == 1  # the burst
        # Over the budget (back to back until rejected: on a slow machine the next
        # token may come before the second query does).
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            for i in itertools.count(2):
                assert c.execute("SELECT %s::int", (i,)).fetchone()[0] == i
                assert time.monotonic() < deadline, "never rejected"
        # The connection is in sync and usable once the budget is back (waited for,
        # then polled rather than tried once).
        time.sleep(1.1)
        while True:
            try:
                assert c.execute("SELECT %s::int", (3,)).fetchone()[0] == 3
                break
            except psycopg.errors.ConfigurationLimitExceeded:
                assert time.monotonic() < deadline, "the budget never came back"
                time.sleep(0.1)
    # Raw: Parse/Bind/Execute/Sync rejected as one batch: one ErrorResponse, one 'Z'.
    c = RawPg("127.0.0.1", s.port, timeout=DEADLINE)
    try:
        c.login("app", APP_PW, "app", {"application_name": acme})
        batch = (message(b"P", b"\0SELECT 1\0\0\0") + message(b"B", b"\0\0\0\0\0\0\0\0")
                 + message(b"E", b"\0\0\0\0\0") + message(b"S"))
        while True:
            # Spend what is left of the budget, then send the batch at once. A token that
            # came in between (a slow machine) lets the batch run: then it must run whole,
            # and the next try is made.
            while c.query("SELECT 1")[1] is None:
                assert time.monotonic() < deadline, "never rejected"
            c.send(batch)
            kinds = []
            while True:
                kind, body = c.read_msg()
                kinds.append(kind)
                if kind == b"E":
                    assert harness.parse_error_fields(body).get("C") == "53400", body
                if kind == b"Z":
                    break
            if kinds != [b"1", b"2", b"D", b"C", b"Z"] or time.monotonic() > deadline:
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
    th.join(3.0 + 2 * DEADLINE)
    assert not th.is_alive(), "instance b's clients hung"
    tb = res["b"]
    assert not ta.other and not tb.other, (ta, tb)
    both = Tally()
    both.add(ta)
    both.add(tb)
    assert_rate(both, 100, burst=5, extra=2 * 5)
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
            on_redis_failure=policy, expected_instances=2,
            redis_timeout=f"{REDIS_TIMEOUT_S}s"))
        up = drive(s, acme, 200, 2.0, 2)
        assert not up.other, up
        assert_rate(up, 100, burst=5, extra=5)

        r.stop()
        down = drive(s, acme, 200, 2.0, 2)
        assert not down.other, down
        # A client that waited on the dead Redis would wait for redis_timeout (10 s): no
        # answer may take that long (was: 1 s, a bound on this machine's speed).
        assert down.max_latency < REDIS_TIMEOUT_S, f"a client waited on the dead Redis: {down}"
        if policy == "local":
            # The per-instance share: 100 / expected_instances, burst 5/2 -> 2.5.
            assert_rate(down, 50, burst=3, slack=0.15)
        elif policy == "open":
            # Everything admitted (was: at least 360 of the 400 a fast machine sends).
            assert down.limited == 0 and down.ok == len(down.attempts) > 0, down
        else:
            # (at most one unspent lease, 5 tokens, is used up after Redis went away);
            # everything else rejected (was: at least 355 rejections, a count of speed).
            assert down.ok <= 5 and down.limited == len(down.attempts) - down.ok > 0, down
            assert_hints(down)

        r.start()  # same port
        deadline = time.monotonic() + DEADLINE
        back = None
        while time.monotonic() < deadline:
            back = drive(s, acme, 200, 1.0, 2)
            # The global limit again (+-20% over one second), whatever load the machine
            # managed to offer (was: 80..125 admitted, i.e. at least 80 sent).
            if not back.other and rate_problem(back, 100, burst=5, slack=0.2, extra=5) is None:
                break
        assert back is not None and not back.other, back
        problem = rate_problem(back, 100, burst=5, slack=0.2, extra=5)
        assert problem is None, f"global limit not back within {DEADLINE} s: {problem}"
    finally:
        r.stop()


def test_redis_never_started_policy_applies(make_sluice, workdir):
    """Sluice starts, and serves, with its Redis unreachable from the first moment."""
    acme = tenant("nored")
    port = harness.free_port()
    s = make_sluice(config={"rate_limits": {
        "backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0",
        "tenant_key": "application_name", "on_redis_failure": "closed",
        "redis_timeout": f"{REDIS_TIMEOUT_S}s",
        "tenants": {acme: {"queries_per_second": 100}}}})
    with connect(s, tenant("other")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1  # unlimited tenant unaffected
    t0 = time.monotonic()
    with connect(s, acme) as c:
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as ei:
            c.execute("SELECT 1")
        assert re.search(r"retry after \d+ ?ms", ei.value.diag.message_hint or ""), ei.value
    # Decided without waiting on Redis: a wait would last redis_timeout (10 s) at least
    # (was: under 2 s, a bound on this machine's speed).
    assert time.monotonic() - t0 < REDIS_TIMEOUT_S


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
        sent: List[float] = []
        done: List[float] = []

        def one(c):
            barrier.wait()
            t0 = time.monotonic()
            sent.append(t0)
            try:
                c.execute("SELECT 1")
                done.append(time.monotonic())
            except psycopg.Error as e:
                errors.append(f"{e.sqlstate}: {e}")

        ths = [threading.Thread(target=one, args=(c,), daemon=True) for c in conns]
        for th in ths:
            th.start()
        for th in ths:
            th.join(DEADLINE)
        assert not any(th.is_alive() for th in ths), "a delayed query never came back"
        # Absorbed within max_delay: not one rejected (that, not an elapsed-time bound,
        # is what 'within max_delay' means).
        assert not errors, errors
        assert len(done) == n
        # Delayed to the rate: the k-th answer cannot come before k tokens refilled since
        # the first query was sent (20/s, burst 1: 50 ms each), however the queries were
        # spread; all at once, the last one waited about 450 ms. (Was: one of them waited
        # >= 0.3 s, which needs the ten to arrive together.)
        first = min(sent)
        for k, d in enumerate(sorted(done)):
            assert d - first >= k * 0.05 * 0.9, (k, [round(x - first, 3) for x in sorted(done)])
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
        sent: List[float] = []
        ok: List[float] = []
        limited: List[Tuple[float, str]] = []  # (seconds until rejected, hint)
        other: List[str] = []

        def one(c):
            barrier.wait()
            t0 = time.monotonic()
            sent.append(t0)
            try:
                c.execute("SELECT 1")
                ok.append(time.monotonic())
            except psycopg.errors.ConfigurationLimitExceeded as e:
                limited.append((time.monotonic() - t0, e.diag.message_hint or ""))
            except psycopg.Error as e:
                other.append(str(e))

        ths = [threading.Thread(target=one, args=(c,), daemon=True) for c in conns]
        for th in ths:
            th.start()
        for th in ths:
            th.join(DEADLINE)
        # Every query answered (an assertion in these threads used to be lost).
        assert not any(th.is_alive() for th in ths), "a query never came back"
        assert not other, other
        assert len(ok) + len(limited) == n, (ok, limited)
        # 1 at once + 1 within 100 ms (the next within 150 ms of delay), the rest rejected.
        # Counted over the time Sluice had, not assuming the eight arrived together: no
        # more admitted than burst + 10/s over first send to last admission (which is at
        # most 1.5 tokens of delay when they do arrive together).
        assert len(ok) >= 1, (ok, limited)
        window = max(ok) - min(sent)
        assert len(ok) <= 1 + int(window * 10 + 0.05), (len(ok), window, limited)
        # Each rejection is past max_delay: the time it was held plus the wait it would
        # still have needed (the hint) is over 150 ms (was: 'at least 5 rejected', which
        # needs the eight to arrive together).
        for held, h in limited:
            m = re.search(r"retry after (\d+) ?ms", h)
            assert m, h
            assert held * 1000 + int(m.group(1)) > 150, (held, h)
        for c in conns:  # every connection still usable, once the budget allows it
            time.sleep(0.11)
            deadline = time.monotonic() + DEADLINE
            while True:
                try:
                    c.execute("SELECT 1")
                    break
                except psycopg.errors.ConfigurationLimitExceeded:
                    assert time.monotonic() < deadline, "the budget never came back"
                    time.sleep(0.1)
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
        deadline = time.monotonic() + DEADLINE
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
    t0 = time.monotonic()
    for _ in range(5):
        err = login_error(s, acme)
        if err is None:
            ok += 1
        else:
            refused.append(err.sqlstate)
    window = time.monotonic() - t0
    # The burst of 2 at once, then no more than the 1/s refill over the time the five
    # logins took (on a fast machine that is the old 'exactly 2 of 5'; a slow one that
    # took over a second gets its refilled token instead of a failure).
    assert ok >= 2, (ok, refused)
    assert ok <= 2 + int(window * 1 + 0.05), (ok, window, refused)
    assert refused == ["53400"] * (5 - ok), refused
    # The budget refills (waited for, then polled rather than tried once).
    time.sleep(1.1)
    assert wait_for(lambda: login_error(s, acme) is None, interval=0.2), \
        "the connection budget never refilled"


def test_transactions_per_second(make_sluice, redis):
    acme = tenant("tps")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"transactions_per_second": 20, "transaction_burst": 2}}))
    t = Tally()
    with connect(s, acme) as c:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            # Plain BEGIN/COMMIT: psycopg's transaction() context cannot recover from an
            # error on BEGIN itself (PostgreSQL never fails a BEGIN; the limiter does).
            q0 = time.monotonic()
            try:
                c.execute("BEGIN")
                outcome = "ok"
            except psycopg.errors.ConfigurationLimitExceeded as e:
                outcome = "limited"
                if len(t.hints) < 5:
                    t.hints.append(e.diag.message_hint or "")
            q1 = time.monotonic()
            t.attempts.append((q0, q1, outcome))
            t.max_latency = max(t.max_latency, q1 - q0)
            if outcome == "limited":
                t.limited += 1
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                continue
            c.execute("SELECT 1")
            c.execute("COMMIT")
            t.ok += 1
            time.sleep(0.005)
    # 20/s with a burst of 2 over the run, +-20% (+2 for the lease), counted against the
    # BEGINs really sent (was: 34..52 transactions, and 'some rejected', which need a
    # machine fast enough to offer more than 20/s).
    assert_rate(t, 20, burst=2, slack=0.2, extra=2)
    assert_hints(t)


# ---------------------------------------------------------------------------------------
# backend: local, shadow, reload, visibility


def test_backend_local_needs_no_redis(make_sluice):
    acme, free = tenant("local"), tenant("free")
    s = make_sluice(config={"rate_limits": {
        "backend": "local", "tenant_key": "application_name",
        "tenants": {acme: {"queries_per_second": 100, "query_burst": 5}}}})
    t = drive(s, acme, 400, 3.0, 4)
    assert not t.other, t
    assert_rate(t, 100, burst=5)
    assert_hints(t)
    with connect(s, free) as c:
        for _ in range(300):
            c.execute("SELECT 1")


def test_shadow_counts_but_never_rejects(make_sluice, redis):
    acme = tenant("shadow")
    s = make_sluice(default_pool_size=20, config=limits("redis", redis, {
        acme: {"queries_per_second": 10, "query_burst": 1, "shadow": True}}))
    t = drive(s, acme, 100, 1.0, 1)
    # Never rejects: every query answered (was: at least 80, a count of speed).
    assert t.limited == 0 and not t.other and t.ok == len(t.attempts) > 0, t
    out = admin(s, "SHOW TENANTS")
    row = next((line for line in out.splitlines() if acme in line), None)
    assert row is not None, out
    assert "shadow" in row, row
    # Counts: the queries over the limit (those a 10/s bucket of 1 had no token for, among
    # the ones really sent) show up as rejected. (Not looked at before.)
    fields = row.split("|")
    rejected = int(fields[8])
    would_reject = len(t.attempts) - gcra_admitted(t.sent_times(), 10, 1)
    assert rejected >= would_reject * 0.9 - 1 - 10 * t.max_latency - 1, (would_reject, row, t)


def test_reload_changes_limits_without_dropping_clients(make_sluice, redis):
    acme = tenant("reload")
    cfg = limits("redis", redis, {acme: {"queries_per_second": 5, "query_burst": 1}})
    s = make_sluice(config=cfg)
    with connect(s, acme) as c:
        c.execute("SELECT 1")
        # Over the limit (back to back until rejected, where five queries in a row
        # need not reach it on a slow machine).
        deadline = time.monotonic() + DEADLINE
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            while time.monotonic() < deadline:
                c.execute("SELECT 1")
        cfg2 = harness.deep_merge(s.config, {"rate_limits": {"tenants": {
            acme: {"queries_per_second": 0}}}})
        s.write_config(cfg2)
        s.reload()
        deadline = time.monotonic() + DEADLINE
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
