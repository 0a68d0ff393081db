"""Issue 12: the rate limiter's Redis behind Sentinel (rate_limits.redis_sentinels).

A real redis-server master, a real replica (--replicaof) and three real redis-sentinel
processes, all on loopback ports in the session's temp dir, with short Sentinel timeouts
(down-after-milliseconds 1000, failover-timeout 2000) so that a failover takes seconds.
Two Sluice instances find the master through the sentinels and share one budget; after a
failover (the master SIGKILLed, or SENTINEL FAILOVER) they share one budget again on the
new master.

Rates are judged as in test_ratelimit.py: against what a token bucket admits for the
requests really sent, never against counts that only a fast machine reaches. Every wait
is for a condition with a deadline.
"""
from __future__ import annotations

import re
import socketserver
import subprocess
import threading
import time
import urllib.request
from typing import Dict, List, Optional

import pytest

import harness
from harness import DEADLINE, Redis, Sentinel, wait_for
from test_ratelimit import Tally, drive, rate_problem, tenant

MASTER = "mymaster"
RATE, BURST = 100, 5
LEASE = 5  # lease_size at 100/s: the Redis backend may over-admit one lease per instance
# The shared budget must be back within this long after the sentinels promoted the replica.
BACK_WITHIN_S = 10.0
# No client request may take this long, whatever Redis is doing (the gap policy answers at
# once; a request that waited on the dead master would take far longer, or forever).
ANSWER_BOUND_S = 5.0


class SentinelGroup:
    """A master, its replica and three sentinels (quorum 2), started and stopped together."""

    def __init__(self, base, password: Optional[str] = None,
                 master_password: Optional[str] = None):
        args = ["--requirepass", master_password, "--masterauth", master_password] \
            if master_password else []
        # A master with replicas waits on SIGTERM for them to catch up (Redis 7's
        # shutdown-timeout, 10 s): not at the end of a test.
        args += ["--shutdown-timeout", "0"]
        self.master = Redis(base=base, extra_args=args, password=master_password,
                            name=f"redis-master-{harness.free_port()}")
        self.replica = Redis(base=base, password=master_password,
                             name=f"redis-replica-{harness.free_port()}")
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port), *args]
        self.sentinels = [Sentinel(self.master.port, base=base, master_name=MASTER,
                                   password=password, master_password=master_password)
                          for _ in range(3)]
        self.password = password

    def start(self) -> "SentinelGroup":
        self.master.start()
        self.replica.start()
        for s in self.sentinels:
            s.start()
        # Ready when the replica is in sync and every sentinel knows the replica and the two
        # other sentinels (they find each other through the master's hello channel).
        def ready():
            try:
                info = self.replica.command("INFO", "replication")
                if "master_link_status:up" not in info:
                    return False
                return all(int(m["num-slaves"]) == 1 and int(m["num-other-sentinels"]) == 2
                           for m in (s.master_info() for s in self.sentinels))
            except (OSError, RuntimeError, KeyError):
                return False
        assert wait_for(ready, timeout=DEADLINE, interval=0.2), \
            "sentinels never saw the replica and each other:\n" + harness.tail(
                self.sentinels[0].log, 30)
        return self

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        self.replica.stop()
        self.master.stop()

    def addresses(self) -> List[str]:
        return [s.address for s in self.sentinels]

    def promoted(self, port: int) -> bool:
        """Some sentinel names 127.0.0.1:port as the master."""
        return any(s.master_addr() == ("127.0.0.1", port) for s in self.sentinels)


@pytest.fixture
def group(workdir, request):
    g = SentinelGroup(workdir, **getattr(request, "param", {}))
    try:
        yield g.start()
    finally:
        g.stop()
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            for s in g.sentinels:
                print(f"\n----- sentinel {s.address} log (tail) -----\n{harness.tail(s.log, 25)}")


def sentinel_limits(g: SentinelGroup, acme: str, **extra) -> dict:
    rl = {"backend": "redis", "tenant_key": "application_name",
          "redis_sentinels": g.addresses(), "redis_sentinel_master": MASTER,
          # One instance's own share while there is no master is the whole limit: two
          # instances then admit twice the budget, which is what tells the gap (the policy)
          # from one shared budget.
          "on_redis_failure": "local", "expected_instances": 1,
          "default": {"queries_per_second": 0},
          "tenants": {acme: {"queries_per_second": RATE, "query_burst": BURST}}}
    rl.update(extra)
    return {"rate_limits": rl}


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def connected_to(metrics_port: int, redis_port: int) -> bool:
    """/metrics says every worker is up on 127.0.0.1:redis_port."""
    try:
        text = metrics(metrics_port)
    except OSError:
        return False
    return (re.search(r'^sluice_ratelimit_redis_up 1$', text, re.M) is not None and
            re.search(rf'^sluice_ratelimit_redis_master\{{address="127\.0\.0\.1:{redis_port}"\}} ',
                      text, re.M) is not None)


def two_instances(make_sluice, g: SentinelGroup, acme: str, **extra):
    ports = [harness.free_port(), harness.free_port()]
    cfg = sentinel_limits(g, acme, **extra)
    a = make_sluice(default_pool_size=20, metrics_listen=f"127.0.0.1:{ports[0]}", config=cfg)
    b = make_sluice(default_pool_size=20, metrics_listen=f"127.0.0.1:{ports[1]}", config=cfg)
    return (a, ports[0]), (b, ports[1])


def drive_both(a, b, app: str, seconds: float, stop: Optional[threading.Event] = None):
    """Offers 200/s to each instance at once (twice the budget each); returns both tallies."""
    res: Dict[str, Tally] = {}
    th = threading.Thread(target=lambda: res.__setitem__("b", drive(b, app, 200, seconds, 2,
                                                                    stop=stop)), daemon=True)
    th.start()
    ta = drive(a, app, 200, seconds, 2, stop=stop)
    th.join(seconds + 2 * DEADLINE)
    assert not th.is_alive(), "instance b's clients hung"
    return ta, res["b"]


def merged(*tallies: Tally) -> Tally:
    both = Tally()
    for t in tallies:
        both.add(t)
    return both


def shared_budget_problem(ta: Tally, tb: Tally) -> Optional[str]:
    """None when the two together admitted one budget (not one each) and both served."""
    if ta.other or tb.other:
        return f"errors: {ta.other[:3]} {tb.other[:3]}"
    problem = rate_problem(merged(ta, tb), RATE, burst=BURST, slack=0.2, extra=2 * LEASE)
    if problem:
        return problem
    if ta.ok == 0 or tb.ok == 0:
        return f"one instance admitted nothing: {ta} {tb}"
    return None


def window(t: Tally, t0: float, t1: float) -> Tally:
    """The requests of `t` sent in [t0, t1)."""
    w = Tally()
    w.attempts = [a for a in t.attempts if t0 <= a[0] < t1]
    w.ok = sum(1 for a in w.attempts if a[2] == "ok")
    w.limited = sum(1 for a in w.attempts if a[2] == "limited")
    w.max_latency = max((b - a for a, b, _ in w.attempts), default=0.0)
    return w


def wait_shared_budget_back(a, b, app: str, since: float) -> float:
    """Drives both instances in one-second rounds until together they admit one budget;
    returns how long after `since` the first such round started (each failed round's
    problem goes in the failure message). Fails after DEADLINE."""
    problems: List[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        started = time.monotonic()
        ta, tb = drive_both(a, b, app, 1.0)
        problem = shared_budget_problem(ta, tb)
        if problem is None:
            assert started - since <= BACK_WITHIN_S, \
                f"one budget back only {started - since:.1f} s after the promotion: {problems}"
            return started - since
        problems.append(f"{started - since:.1f}s: {problem}")
    pytest.fail(f"one shared budget not back within {DEADLINE} s: {problems}")


def failover_under_load(g: SentinelGroup, a, ma: int, b, mb: int, app: str, trigger):
    """Both instances under load while `trigger()` starts a failover; returns when the
    sentinels name the replica and both instances are up on it, with the load's tallies,
    when the trigger ran and when the promotion was seen."""
    stop = threading.Event()
    load: Dict[str, Tally] = {}
    bg = threading.Thread(target=lambda: load.update(zip("ab", drive_both(a, b, app, 120, stop))),
                          daemon=True)
    bg.start()
    try:
        time.sleep(0.5)  # load running before the failover starts (not a verdict)
        triggered_at = time.monotonic()
        trigger()
        assert wait_for(lambda: g.promoted(g.replica.port), timeout=DEADLINE, interval=0.05), \
            "the sentinels never promoted the replica"
        promoted_at = time.monotonic()
        # Both instances on the new master, from the sentinels.
        assert wait_for(lambda: connected_to(ma, g.replica.port) and
                        connected_to(mb, g.replica.port)), (a.log_tail(), b.log_tail())
    finally:
        stop.set()
        bg.join(2 * DEADLINE)
    assert not bg.is_alive(), "clients hung across the failover"
    la, lb = load["a"], load["b"]
    # No client hung and none got anything but an answer or a 53400.
    assert not la.other and not lb.other, (la, lb)
    assert la.max_latency < ANSWER_BOUND_S and lb.max_latency < ANSWER_BOUND_S, (la, lb)
    return la, lb, triggered_at, promoted_at


@pytest.mark.timeout(180)
def test_two_instances_share_one_budget_through_a_master_kill(group, make_sluice):
    g = group
    acme = tenant("sentinel")
    (a, ma), (b, mb) = two_instances(make_sluice, g, acme)
    # Found through the sentinels, and logged so.
    for s in (a, b):
        assert wait_for(lambda: f"redis: master {MASTER} is at 127.0.0.1:{g.master.port} "
                                f"(from sentinel 127.0.0.1:" in s.log_text()), s.log_tail()
    assert wait_for(lambda: connected_to(ma, g.master.port) and connected_to(mb, g.master.port))

    # One budget for the two, through the master.
    ta, tb = drive_both(a, b, acme, 3.0)
    assert shared_budget_problem(ta, tb) is None, shared_budget_problem(ta, tb)

    # Under load on both: SIGKILL the master, wait for the sentinels to promote the replica.
    la, lb, killed_at, promoted_at = failover_under_load(g, a, ma, b, mb, acme, g.master.kill)

    # The gap (master dead, replica not yet promoted; margins for the moments either side
    # that belong to neither): the configured policy, local with expected_instances 1,
    # so each instance admits its own full budget -- twice the budget in all.
    gap0, gap1 = killed_at + 0.3, promoted_at - 0.3
    assert gap1 - gap0 >= 0.3, (killed_at, promoted_at)  # down-after alone is 1 s
    for t in (window(la, gap0, gap1), window(lb, gap0, gap1)):
        problem = rate_problem(t, RATE, burst=BURST, slack=0.2, extra=LEASE)
        assert problem is None, f"gap: not the local policy's own budget: {problem}"

    # Within BACK_WITHIN_S of the promotion, one budget for the two again.
    wait_shared_budget_back(a, b, acme, promoted_at)
    for s in (a, b):
        assert f"redis: master {MASTER} is at 127.0.0.1:{g.replica.port}" in s.log_text()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("group", [{"password": "sentinel-pw", "master_password": "master-pw"}],
                         indirect=True, ids=["passwords"])
def test_sentinel_failover_switches_master_without_losing_the_connection(group, make_sluice):
    """SENTINEL FAILOVER demotes a master that stays up, so nothing breaks the Sluice side's
    connection: the +switch-master message is what moves it to the new master. With
    passwords on the sentinels (redis_sentinel_password) and on Redis (redis_url)."""
    g = group
    acme = tenant("switch")
    (a, ma), (b, mb) = two_instances(
        make_sluice, g, acme, redis_sentinel_password="sentinel-pw",
        redis_url=f"redis://:master-pw@{MASTER}/0")
    assert wait_for(lambda: connected_to(ma, g.master.port) and connected_to(mb, g.master.port)), \
        (a.log_tail(), b.log_tail())
    ta, tb = drive_both(a, b, acme, 2.0)
    assert shared_budget_problem(ta, tb) is None, shared_budget_problem(ta, tb)

    def failover():
        assert g.sentinels[0].command("SENTINEL", "FAILOVER", MASTER) == "OK"

    _, _, _, promoted_at = failover_under_load(g, a, ma, b, mb, acme, failover)
    # The switch came from the subscription (the old master is still up, now a replica).
    for s in (a, b):
        assert re.search(rf"reports \+switch-master: master {MASTER} moved from "
                         rf"127\.0\.0\.1:{g.master.port} to 127\.0\.0\.1:{g.replica.port}",
                         s.log_text()), s.log_tail()
    wait_shared_budget_back(a, b, acme, promoted_at)
    # (The sentinels turn the old master into a replica of the new one once they see it.)
    assert wait_for(lambda: "role:slave" in g.master.command("INFO", "replication")), \
        "the old master was never demoted"


SENTINEL_CHECK_CONFIG = """\
sluice:
  listen_port: 6432
  auth_type: trust
databases:
  app: {host: 127.0.0.1, port: 5432}
rate_limits:
  backend: redis
  redis_sentinels: 127.0.0.1:26379, 127.0.0.1:26380, 127.0.0.1:26381
  redis_sentinel_master: mymaster
  redis_sentinel_password: sentinel-pw
  redis_url: redis://:master-pw@mymaster/0
  default: {queries_per_second: 100}
"""


def test_check_accepts_sentinels_and_refuses_contradictions(tmp_path):
    """`sluice --check`: a valid Sentinel configuration passes; a redis_url with an address
    of its own, or sentinels without the master's name, are errors at their position."""
    def check(text: str) -> subprocess.CompletedProcess:
        path = tmp_path / "sluice.yaml"
        path.write_text(text)
        return subprocess.run([str(harness.sluice_bin()), "--check", str(path)],
                              capture_output=True, text=True, timeout=20)

    r = check(SENTINEL_CHECK_CONFIG)
    assert r.returncode == 0, r.stdout + r.stderr

    r = check(SENTINEL_CHECK_CONFIG.replace("@mymaster/0", "@10.0.0.5:6379/0"))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert re.search(r"sluice\.yaml:11:14: rate_limits\.redis_url: with redis_sentinels", out), out
    assert "master-pw" not in out  # the URL's password is never echoed

    r = check(SENTINEL_CHECK_CONFIG.replace("  redis_sentinel_master: mymaster\n", "")
              .replace("@mymaster/0", "@h/0"))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert re.search(r"sluice\.yaml:8:20: rate_limits\.redis_sentinels is set but "
                     r"redis_sentinel_master is not", out), out


class StaleSentinel:
    """A stand-in for a sentinel whose first answers are stale: it names `first` (a replica)
    for the first `stale` queries, then `then`. It is the one way to make a sentinel
    answer a replica on purpose; real sentinels do so only for a moment after a failover.
    SUBSCRIBE is confirmed and then stays silent."""

    def __init__(self, first: int, then: int, stale: int = 2):
        self.answers = [first] * stale
        self.then = then
        self.queries = 0
        self.lock = threading.Lock()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.request.settimeout(DEADLINE)
                try:
                    while True:
                        cmd = harness._resp_read(self.rfile)
                        if cmd[0].upper() == "SUBSCRIBE":
                            self.wfile.write(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master"
                                             b"\r\n:1\r\n")
                        elif cmd[0].upper() == "SENTINEL":
                            with outer.lock:
                                outer.queries += 1
                                port = outer.answers.pop(0) if outer.answers else outer.then
                            p = str(port).encode()
                            self.wfile.write(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(p), p))
                        else:
                            self.wfile.write(b"-ERR unknown command\r\n")
                except (OSError, TypeError, IndexError):
                    return
        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_replica_named_by_a_stale_sentinel_is_dropped_by_role(workdir, make_sluice):
    """The sentinel's first answers name a replica: ROLE says slave, the connection is
    dropped and the sentinel asked again, until the master it names is used."""
    master = Redis(base=workdir, name=f"redis-role-master-{harness.free_port()}").start()
    replica = Redis(base=workdir, name=f"redis-role-replica-{harness.free_port()}",
                    extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    fake = StaleSentinel(first=replica.port, then=master.port, stale=2)
    try:
        acme = tenant("role")
        port = harness.free_port()
        s = make_sluice(metrics_listen=f"127.0.0.1:{port}", workers=1, config={"rate_limits": {
            "backend": "redis", "redis_sentinels": [f"127.0.0.1:{fake.port}"],
            "redis_sentinel_master": MASTER, "tenant_key": "application_name",
            "tenants": {acme: {"queries_per_second": RATE}}}})
        assert wait_for(lambda: connected_to(port, master.port)), s.log_tail()
        log = s.log_text()
        assert re.search(rf"127\.0\.0\.1:{replica.port}: is not the master \(ROLE: slave\)",
                         log), s.log_tail()
        # Asked again after each of the two stale answers, and never up on the replica.
        assert fake.queries >= 3, fake.queries
        assert f"at 127.0.0.1:{replica.port}: connected" not in log
    finally:
        fake.close()
        replica.stop()
        master.stop()
