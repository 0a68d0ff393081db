#!/usr/bin/python3
"""Macro benchmark: pgbench against PostgreSQL directly, through Sluice and through
PgBouncer, in one run, interleaved rounds, medians (DESIGN.md section 5, issues 3 and 5).

    /usr/bin/python3 bench/pgbench_compare.py --rounds 5 --seconds 10 --json out.json
    /usr/bin/python3 bench/pgbench_compare.py --limiter --rounds 5 --seconds 10
    /usr/bin/python3 bench/pgbench_compare.py --tls --mode simple --rounds 5   # sslmode=require
    /usr/bin/python3 bench/pgbench_compare.py --matrix --json m.json --png m.png  # modes x clients
    /usr/bin/python3 bench/pgbench_compare.py --quick --png /tmp/quick.png       # ~4 min matrix
    /usr/bin/python3 bench/pgbench_compare.py --pin-pooler 1 --mode simple      # pooler on core 1

Everything listens on 127.0.0.1 only; every process started here is stopped at exit
(try/finally, atexit, SIGTERM/SIGINT handlers, PR_SET_PDEATHSIG) and the whole run has a
time limit (--max-minutes). See bench/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import harness  # noqa: E402
from harness import Postgres, Redis, Sluice, default_config  # noqa: E402

PGBOUNCER = os.environ.get("PGBOUNCER_BIN", "/usr/sbin/pgbouncer")
USER, PASSWORD, DB = "app", "app_pw", "app"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# /proc readings (the pooler and any descendants it may have)

def _tree(pid: int) -> List[int]:
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process (all its threads) and its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def pg_cpu_seconds(postmaster: int) -> float:
    """CPU of a PostgreSQL instance: utime+stime of the postmaster and every live child,
    plus the postmaster's cutime+cstime (the backends that have exited and been reaped,
    e.g. those of a direct pgbench run)."""
    total = cpu_seconds(postmaster) * CLK_TCK
    try:
        with open(f"/proc/{postmaster}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[13]) + int(fields[14])  # cutime, cstime (fields 16, 17)
    except (OSError, IndexError, ValueError):
        pass
    return total / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of our reaped children (subprocess.run: pgbench)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def set_affinity_tree(pid: int, cpus: Set[int]) -> Tuple[int, int]:
    """sched_setaffinity on every thread of pid and of its descendants (the call applies
    to one thread only; threads and processes created later inherit it).
    Returns (threads set, failures)."""
    ok = bad = 0
    for p in _tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
                ok += 1
            except (OSError, ValueError):
                bad += 1
    return ok, bad


def affinity_of_tree(pid: int) -> List[int]:
    """Union of the CPU sets of every thread of pid and its descendants (a check)."""
    cpus: Set[int] = set()
    for p in _tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                cpus |= os.sched_getaffinity(int(tid))
        except OSError:
            pass
    return sorted(cpus)


@contextlib.contextmanager
def spawn_affinity(cpus: Optional[Set[int]]):
    """Processes spawned inside inherit `cpus` from birth (Sluice then computes its
    default worker count from that mask)."""
    if not cpus:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


# ----------------------------------------------------------------------------------------
# PgBouncer

class PgBouncer:
    def __init__(self, base: Path, pg: Postgres, pool_size: int, max_client_conn: int,
                 tls: Optional[Dict[str, str]] = None, server_tls_sslmode: str = "prefer",
                 secret: Optional[str] = None):
        """secret: what the auth_file holds for USER (default the plaintext password)."""
        self.dir = base / "pgbouncer"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = harness.free_port()
        self.ini = self.dir / "pgbouncer.ini"
        self.log = self.dir / "pgbouncer.log"
        self.proc: Optional[subprocess.Popen] = None
        (self.dir / "userlist.txt").write_text(harness.userlist_text({USER: secret or PASSWORD}))
        self.ini.write_text(f"""[databases]
{DB} = host=127.0.0.1 port={pg.port} dbname={DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.dir / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {max_client_conn}
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = {self.log}
pidfile = {self.dir / 'pgbouncer.pid'}
log_connections = 0
log_disconnections = 0
stats_period = 600
server_tls_sslmode = {server_tls_sslmode}
""" + (f"""client_tls_sslmode = require
client_tls_cert_file = {tls['cert']}
client_tls_key_file = {tls['key']}
""" if tls else ""))
        if harness.is_root():  # pgbouncer refuses to run as root
            harness.ensure_pg_os_user()
            for p in [self.dir, *self.dir.iterdir()]:
                shutil.chown(p, harness.PG_OS_USER, harness.PG_OS_USER)

    def start(self) -> "PgBouncer":
        self.proc = harness.spawn(harness.as_pg_user([PGBOUNCER, str(self.ini)]),
                                  log_path=self.dir / "stdout.log")
        if not harness.wait_port(self.port, timeout=10, proc=self.proc):
            raise RuntimeError(f"pgbouncer did not start:\n{harness.tail(self.log)}\n"
                               f"{harness.tail(self.dir / 'stdout.log')}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            harness._kill(self.proc, signal.SIGINT, grace=5)


# ----------------------------------------------------------------------------------------
# TLS: one self-made CA and a certificate for 127.0.0.1/localhost, shared by every target

def make_certs(d: Path) -> Dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=d)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
         "-keyout", "ca.key", "-out", "ca.crt")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")
    os.chmod(d / "server.key", 0o600)
    if harness.is_root():  # PostgreSQL and PgBouncer run as the unprivileged user
        harness.ensure_pg_os_user()
        for p in [d, *d.iterdir()]:
            shutil.chown(p, harness.PG_OS_USER, harness.PG_OS_USER)
    return {"cert": str(d / "server.crt"), "key": str(d / "server.key"), "ca": str(d / "ca.crt")}


# ----------------------------------------------------------------------------------------
# pgbench

class Target:
    def __init__(self, name: str, port: int, pid: Optional[int]):
        self.name, self.port, self.pid = name, port, pid
        self.runs: List[Dict[str, Any]] = []


def pgbench_args(a) -> List[str]:
    args = ["-c", str(a.clients), "-j", str(a.threads), "-T", str(a.seconds), "-M", a.mode,
            "--no-vacuum"]
    if a.script_file:
        args += ["-f", a.script_file]
    else:
        args += ["-b", a.builtin]
    return args + list(a.pgbench_extra or [])


LATENCY_METHOD = (
    "pgbench --log --log-prefix (per-transaction log, one file per pgbench thread; field 3 "
    "= the transaction's elapsed time in microseconds); p50/p99 by nearest rank over every "
    "logged transaction of a run (failed/skipped lines are counted, not timed); the log "
    "files are deleted right after parsing; summaries give the median over rounds of the "
    "per-round percentiles")


def latency_from_logs(prefix: Path) -> Dict[str, Any]:
    """p50/p99/max from pgbench's per-transaction logs prefix.PID[.N]; deletes them."""
    files = sorted(prefix.parent.glob(prefix.name + ".*"))
    lat: List[int] = []
    untimed = 0
    try:
        for f in files:
            with open(f, "rb") as fh:
                for line in fh:
                    parts = line.split(None, 3)
                    if len(parts) >= 3 and parts[2].isdigit():
                        lat.append(int(parts[2]))
                    else:
                        untimed += 1
    finally:
        for f in files:
            try:
                f.unlink()
            except OSError:
                pass
    res: Dict[str, Any] = {"lat_log_files": len(files), "lat_samples": len(lat)}
    if untimed:
        res["lat_untimed"] = untimed
    if lat:
        lat.sort()
        n = len(lat)

        def pct(p: float) -> float:
            return lat[min(n - 1, max(0, math.ceil(p * n / 100) - 1))] / 1000.0
        res.update(lat_p50_ms=round(pct(50), 3), lat_p99_ms=round(pct(99), 3),
                   lat_max_ms=round(lat[-1] / 1000.0, 3))
    return res


def run_pgbench(t: Target, a, log_prefix: Optional[Path] = None,
                pg_pid: Optional[int] = None) -> Dict[str, Any]:
    """One pgbench run against t. log_prefix: per-transaction latency log (p50/p99);
    pg_pid: the postmaster, for PostgreSQL's CPU during the run."""
    log_args: List[str] = []
    if log_prefix is not None:
        log_args = ["--log", f"--log-prefix={log_prefix}"]
        if getattr(a, "log_sampling_rate", 1.0) < 1.0:
            log_args.append(f"--sampling-rate={a.log_sampling_rate}")
    cmd = [str(harness.PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(t.port), "-U", USER,
           *log_args, *pgbench_args(a), DB]
    cpu0 = cpu_seconds(t.pid) if t.pid else None
    pg0 = pg_cpu_seconds(pg_pid) if pg_pid else None
    pg_procs0 = len(_tree(pg_pid)) if pg_pid else 0
    ch0 = children_cpu_seconds()
    t0 = time.monotonic()
    try:
        extra = {"PGSSLMODE": "require"} if a.tls else {"PGSSLMODE": "disable"}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 90,
                           env=harness.client_env(PASSWORD, **extra))
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = str(e.stdout or "") + str(e.stderr or ""), -1
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(t.pid) if t.pid else None
    ch1 = children_cpu_seconds()
    if pg_pid and not t.pid:
        # direct: let the backends of this run exit and be reaped (their CPU then moves to
        # the postmaster's cutime/cstime) before reading
        harness.wait_for(lambda: len(_tree(pg_pid)) <= pg_procs0, timeout=3, interval=0.05)
    pg1 = pg_cpu_seconds(pg_pid) if pg_pid else None
    res: Dict[str, Any] = {"rc": rc, "wall_s": round(wall, 2), "T_s": a.seconds}
    res.update(harness.parse_pgbench(out))
    mc = re.search(r"initial connection time = ([0-9.]+) ms", out)
    if mc:
        res["conn_ms"] = float(mc.group(1))
    n = res.get("processed")
    if cpu0 is not None:
        res["pooler_cpu_s"] = round(cpu1 - cpu0, 3)
        if n:
            res["cpu_us_per_xact"] = round((cpu1 - cpu0) * 1e6 / n, 2)
        if n and cpu1 - cpu0 > 0:
            res["xact_per_pooler_cpu_s"] = round(n / (cpu1 - cpu0), 1)
    res["pgbench_cpu_s"] = round(ch1 - ch0, 3)
    if pg0 is not None:
        res["pg_cpu_s"] = round(pg1 - pg0, 3)
        if n:
            res["pg_cpu_us_per_xact"] = round((pg1 - pg0) * 1e6 / n, 2)
            res["total_cpu_us_per_xact"] = round(
                ((cpu1 - cpu0 if cpu0 is not None else 0) + (pg1 - pg0) + (ch1 - ch0))
                * 1e6 / n, 2)
    if log_prefix is not None:
        res.update(latency_from_logs(log_prefix))
    if rc != 0 or "tps" not in res or res.get("failed"):
        res["error"] = "\n".join(out.strip().splitlines()[-6:])
    return res


# ----------------------------------------------------------------------------------------
# memory per idle client

def idle_memory(t: Target, k: int, budget_s: float, sslmode: str = "disable") -> Dict[str, Any]:
    import psycopg
    import psycopg.waiting
    # psycopg waits with select() by default, which fails on descriptors above 1023: with
    # more than about 1000 idle clients every later query would fail. epoll has no limit.
    if hasattr(psycopg.waiting, "wait_epoll"):
        psycopg.waiting.wait = psycopg.waiting.wait_epoll
    dsn = (f"host=127.0.0.1 port={t.port} user={USER} password={PASSWORD} dbname={DB} "
           f"connect_timeout=10 sslmode={sslmode}")
    time.sleep(0.5)
    before = rss_kib(t.pid)
    conns = []
    err = None
    deadline = time.monotonic() + budget_s
    t0 = time.monotonic()
    try:
        for _ in range(k):
            if time.monotonic() > deadline:
                err = f"time budget {budget_s}s exhausted"
                break
            conns.append(psycopg.connect(dsn, autocommit=True))
        # every client has done a round trip, then sits idle
        for c in conns[:: max(1, len(conns) // 20)]:
            c.execute("SELECT 1")
    except Exception as e:  # report what we got
        err = f"{type(e).__name__}: {e}".strip()
    connect_s = time.monotonic() - t0
    time.sleep(1.0)
    after = rss_kib(t.pid)
    n = len(conns)
    for c in conns:
        try:
            c.close()
        except Exception:
            pass
    res = {"clients": n, "rss_before_kib": before, "rss_after_kib": after,
           "kib_per_client": round((after - before) / n, 2) if n else None,
           "connect_s": round(connect_s, 1)}
    if err:
        res["error"] = err[:300]
    return res


# ----------------------------------------------------------------------------------------

def med(xs: List[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def summarize(t: Target) -> Dict[str, Any]:
    tps = [r["tps"] for r in t.runs if "tps" in r and not r.get("failed")]
    cpu = [r["cpu_us_per_xact"] for r in t.runs if "cpu_us_per_xact" in r]

    def m(key: str) -> Optional[float]:
        v = med([r[key] for r in t.runs if key in r])
        return round(v, 3) if v is not None else None
    return {"tps_median": med(tps), "tps_min": min(tps) if tps else None,
            "tps_max": max(tps) if tps else None, "ok_rounds": len(tps),
            "rounds": len(t.runs), "cpu_us_per_xact_median": med(cpu),
            "failed_xacts": sum(int(r.get("failed", 0)) for r in t.runs),
            "xact_per_pooler_cpu_s_median": m("xact_per_pooler_cpu_s"),
            "pg_cpu_us_per_xact_median": m("pg_cpu_us_per_xact"),
            "total_cpu_us_per_xact_median": m("total_cpu_us_per_xact"),
            "lat_p50_ms_median": m("lat_p50_ms"), "lat_p99_ms_median": m("lat_p99_ms")}


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a and b else None


def cell_ratios(summary: Dict[str, Dict[str, Any]], limiter: bool) -> Dict[str, Any]:
    """Ratios of medians for one cell (the pre-matrix keys first, in their old order)."""
    def g(n: str, k: str) -> Optional[float]:
        return summary.get(n, {}).get(k)
    tps, cpu, tot, p99 = ("tps_median", "cpu_us_per_xact_median",
                          "total_cpu_us_per_xact_median", "lat_p99_ms_median")
    r: Dict[str, Any] = {}
    if limiter:
        r["limiter_on/off"] = ratio(g("sluice+limiter", tps), g("sluice", tps))
        r["p99_limiter_on/off"] = ratio(g("sluice+limiter", p99), g("sluice", p99))
        return r
    r["sluice/pgbouncer"] = ratio(g("sluice", tps), g("pgbouncer", tps))
    r["sluice/direct"] = ratio(g("sluice", tps), g("direct", tps))
    if "baseline" in summary:
        r["sluice/baseline"] = ratio(g("sluice", tps), g("baseline", tps))
    r["pgbouncer/direct"] = ratio(g("pgbouncer", tps), g("direct", tps))
    r["cpu_sluice/pgbouncer"] = ratio(g("sluice", cpu), g("pgbouncer", cpu))
    if "baseline" in summary:
        r["cpu_sluice/baseline"] = ratio(g("sluice", cpu), g("baseline", cpu))
    # pooler CPU per transaction has no direct counterpart; the whole run's CPU does
    r["total_cpu_sluice/direct"] = ratio(g("sluice", tot), g("direct", tot))
    r["total_cpu_sluice/pgbouncer"] = ratio(g("sluice", tot), g("pgbouncer", tot))
    r["p99_sluice/pgbouncer"] = ratio(g("sluice", p99), g("pgbouncer", p99))
    r["p99_sluice/direct"] = ratio(g("sluice", p99), g("direct", p99))
    return r


ROW_HEAD = (f"{'median tps':>11s} {'min':>10s} {'max':>10s} {'ok/rounds':>9s} {'failed':>6s} "
            f"{'cpu us/xact':>11s} {'xact/cpu-s':>10s} {'all us/xact':>11s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s}")


def row(s: Dict[str, Any]) -> str:
    return (f"{fmt(s['tps_median']):>11s} {fmt(s['tps_min']):>10s} {fmt(s['tps_max']):>10s} "
            f"{s['ok_rounds']:>4d}/{s['rounds']:<4d} {s['failed_xacts']:>6d} "
            f"{fmt(s['cpu_us_per_xact_median'], 2):>11s} "
            f"{fmt(s['xact_per_pooler_cpu_s_median'], 0):>10s} "
            f"{fmt(s['total_cpu_us_per_xact_median'], 1):>11s} "
            f"{fmt(s['lat_p50_ms_median'], 2):>7s} {fmt(s['lat_p99_ms_median'], 2):>7s}")


def main() -> int:
    t_begin = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 2)")
    ap.add_argument("--seconds", type=int, default=None,
                    help="pgbench -T per run, default 10 (--quick: 3)")
    ap.add_argument("--clients", type=int, default=50, help="pgbench -c")
    ap.add_argument("--threads", type=int, default=2, help="pgbench -j")
    ap.add_argument("--mode", default="extended", choices=["simple", "extended", "prepared"],
                    help="pgbench -M (prepared skips PgBouncer 1.18)")
    ap.add_argument("--builtin", default="select-only",
                    help="pgbench -b script: select-only (default), tpcb-like, simple-update")
    ap.add_argument("--script-file", help="pgbench -f FILE instead of a builtin script")
    ap.add_argument("--pgbench-extra", nargs=argparse.REMAINDER,
                    help="extra pgbench arguments (must come last)")
    ap.add_argument("--scale", type=int, default=None,
                    help="pgbench -i -s, default 10 (--quick: 1)")
    ap.add_argument("--pool-size", type=int, default=20,
                    help="default_pool_size, same for Sluice and PgBouncer")
    ap.add_argument("--workers", type=int, default=0, help="Sluice workers (0 = Sluice's default: half the usable cores)")
    ap.add_argument("--idle-clients", type=int, default=None,
                    help="idle clients for the memory figure (0 = skip), default 1000 "
                         "(--quick: 200)")
    ap.add_argument("--targets", default="direct,sluice,pgbouncer",
                    help="comma list among direct,sluice,pgbouncer")
    ap.add_argument("--limiter", action="store_true",
                    help="issue 5: Sluice with a Redis rate limiter (limits far above the "
                         "load) vs Sluice without, instead of the pooler comparison")
    ap.add_argument("--limiter-rate", type=float, default=1e9,
                    help="queries_per_second and transactions_per_second in --limiter mode")
    ap.add_argument("--limiter-failure", default="closed", choices=["closed", "open", "local"],
                    help="on_redis_failure in --limiter mode (closed: a limiter that cannot "
                         "reach Redis fails the run instead of passing silently)")
    ap.add_argument("--baseline-bin",
                    help="also run this Sluice binary (e.g. a build of an earlier commit) as "
                         "the target 'baseline', interleaved with the others")
    ap.add_argument("--tls", action="store_true",
                    help="clients use sslmode=require (PostgreSQL ssl=on, Sluice and PgBouncer "
                         "client_tls_sslmode=require with the same certificate)")
    ap.add_argument("--server-tls-sslmode", default="prefer",
                    choices=["disable", "allow", "prefer", "require"],
                    help="server_tls_sslmode of both poolers, set explicitly: the default, "
                         "prefer, is Sluice's and PgBouncer's since 1.21, but PgBouncer 1.18's "
                         "default is disable; with --tls (PostgreSQL ssl=on) prefer makes both "
                         "poolers talk TLS to PostgreSQL too, disable only to their clients")
    ap.add_argument("--matrix", action="store_true",
                    help="one run over every (mode, clients) cell of --matrix-modes x "
                         "--matrix-clients instead of the single --mode/--clients cell")
    ap.add_argument("--matrix-modes", default="simple,extended,prepared",
                    help="pgbench -M values of the matrix")
    ap.add_argument("--matrix-clients", default="10,50,200",
                    help="pgbench -c values of the matrix")
    ap.add_argument("--quick", action="store_true",
                    help="the matrix in about 4 minutes on 2 cores: scale 1, 2 rounds x 3 s, "
                         "200 idle clients (explicit --rounds/--seconds/--scale/"
                         "--idle-clients win)")
    ap.add_argument("--max-connections", type=int, default=0,
                    help="PostgreSQL max_connections (0 = the harness' 200, raised "
                         "automatically when the direct clients would not fit)")
    ap.add_argument("--pin-pooler", type=int, metavar="CORE",
                    help="pin the poolers (every thread) to CPU CORE and pgbench, PostgreSQL "
                         "and this script to the other usable CPUs")
    ap.add_argument("--no-latency-log", action="store_true",
                    help="do not run pgbench with --log (no p50/p99)")
    ap.add_argument("--log-sampling-rate", type=float, default=1.0,
                    help="pgbench --sampling-rate for the latency log (default 1: every "
                         "transaction)")
    ap.add_argument("--connect-allowance", action=argparse.BooleanOptionalAction,
                    default=None,
                    help="lengthen each run's -T by its expected connection time (default: "
                         "on with --matrix, off otherwise)")
    ap.add_argument("--auth-secret", default="plaintext", choices=["plaintext", "verifier"],
                    help="what both poolers' auth_file holds: the plaintext password (PgBouncer "
                         "then derives a SCRAM verifier, 4096 PBKDF2 iterations, on every login, "
                         "inside each run's CPU window; Sluice once per password), or "
                         "PostgreSQL's own SCRAM verifier (as pg_shadow or auth_query give it)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--png", help="draw the chart here (matplotlib, bench/plot_bench.py)")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="hard time limit for the whole run (default: computed)")
    a = ap.parse_args()
    if a.quick:
        a.matrix = True
    if a.connect_allowance is None:
        a.connect_allowance = a.matrix
    defaults = (dict(rounds=2, seconds=3, scale=1, idle_clients=200) if a.quick
                else dict(rounds=5, seconds=10, scale=10, idle_clients=1000))
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)

    allowed = sorted(os.sched_getaffinity(0))
    pool_cpus: Optional[Set[int]] = None
    other_cpus: Optional[Set[int]] = None
    if a.pin_pooler is not None:
        if a.pin_pooler not in allowed or len(allowed) < 2:
            ap.error(f"--pin-pooler {a.pin_pooler}: usable CPUs are {allowed}; the core must "
                     f"be one of them and at least one other must remain")
        pool_cpus = {a.pin_pooler}
        other_cpus = set(allowed) - pool_cpus

    targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    if a.limiter:
        targets = ["sluice", "sluice+limiter"]
    notes: List[str] = []
    if "pgbouncer" in targets and a.mode == "prepared" and not a.matrix:
        targets.remove("pgbouncer")
        notes.append("PgBouncer skipped: 1.18 has no protocol-level prepared statement "
                     "support in transaction mode (added in 1.21); -M prepared would fail.")
    if "pgbouncer" in targets and not os.access(PGBOUNCER, os.X_OK):
        targets.remove("pgbouncer")
        notes.append(f"PgBouncer skipped: {PGBOUNCER} not found.")

    # cells: (mode, clients); one cell unless --matrix
    if a.matrix:
        modes = [m.strip() for m in a.matrix_modes.split(",") if m.strip()]
        for m in modes:
            if m not in ("simple", "extended", "prepared"):
                ap.error(f"--matrix-modes: unknown mode {m!r}")
        clients = [int(c) for c in a.matrix_clients.split(",") if c.strip()]
        cells: List[Tuple[str, int]] = [(m, c) for m in modes for c in clients]
    else:
        cells = [(a.mode, a.clients)]

    # PostgreSQL max_connections: direct clients + the poolers' server pools + reserve
    n_pools = sum(1 for x in targets if x != "direct") + (1 if a.baseline_bin else 0)
    reserved = 3  # superuser_reserved_connections
    direct_max = max(c for _, c in cells) if "direct" in targets else 0
    need = direct_max + n_pools * a.pool_size + reserved + 5
    max_conn = a.max_connections or max(200, need)
    if max_conn != 200:
        notes.append(
            f"PostgreSQL max_connections = {max_conn} (the harness sets 200)"
            + ("" if a.max_connections else
               f": raised so that {direct_max} direct clients fit next to the poolers' server "
               f"connections ({n_pools} x pool size {a.pool_size}) and {reserved} "
               f"superuser-reserved slots"))

    cell_names: Dict[Tuple[str, int], List[str]] = {}
    skipped_pgb = []
    for m, c in cells:
        names = list(targets)
        if a.matrix and m == "prepared" and "pgbouncer" in names:
            names.remove("pgbouncer")
            skipped_pgb.append(f"{m}/c{c}")
        if "direct" in names and c + n_pools * a.pool_size + reserved > max_conn:
            names.remove("direct")
            notes.append(f"direct skipped at -c {c} -M {m}: {c} clients + {n_pools} pooler "
                         f"pools x {a.pool_size} + {reserved} reserved > max_connections "
                         f"{max_conn}")
        cell_names[(m, c)] = names
    if skipped_pgb:
        notes.append("PgBouncer skipped in the prepared cells (" + ", ".join(skipped_pgb) +
                     "): 1.18 has no protocol-level prepared statement support in transaction "
                     "mode (added in 1.21); -M prepared would fail.")
    started_names = [n for n in targets if any(n in v for v in cell_names.values())]
    if pool_cpus:
        notes.append(f"pinned: poolers on CPU {sorted(pool_cpus)}, pgbench, PostgreSQL and "
                     f"this script on CPUs {sorted(other_cpus)} (direct therefore runs on "
                     f"{len(other_cpus)} of {len(allowed)} CPUs)")
    if a.connect_allowance:
        notes.append("connection allowance: each run's -T is --seconds plus its expected "
                     "pgbench connection time (pgbench 15 counts the connection phase in -T; "
                     "tps excludes it); T_s and conn_ms of every run are in the JSON")
    if not a.no_latency_log:
        notes.append("latency: " + LATENCY_METHOD)
    notes.append("auth_file: PostgreSQL's SCRAM verifier in both poolers' auth_files"
                 if a.auth_secret == "verifier" else
                 "auth_file: the plaintext password in both poolers' auth_files; PgBouncer "
                 "derives a SCRAM verifier (4096 PBKDF2 iterations, about 3.4 ms of CPU here) "
                 "on every login, inside each run's pooler CPU window, Sluice once per "
                 "password: at 200 clients that is several microseconds per transaction of "
                 "PgBouncer's figure (--auth-secret verifier takes it out)")
    for n in notes:
        log(n)

    n_runs = a.rounds * sum(len(v) for v in cell_names.values())
    budget = a.max_minutes * 60 or (n_runs * (a.seconds + 20) + 3 * 120 + 240 + 60 * a.scale)

    def on_signal(signum, frame):
        raise SystemExit(f"stopped by signal {signum} (time limit {budget:.0f}s)"
                         if signum == signal.SIGALRM else f"stopped by signal {signum}")
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
        signal.signal(s, on_signal)
    signal.alarm(int(budget))
    atexit.register(harness.kill_all)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, a.idle_clients + 4096))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it

    base = harness.make_tempdir("sluice-bench-")
    max_clients = max(c for _, c in cells)
    max_client_conn = max(1000, a.idle_clients + max_clients + 100)
    workers_shown = a.workers or max(1, len(pool_cpus or allowed) // 2)
    started: List[Any] = []
    result: Dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
        "cpus": os.cpu_count(), "usable_cpus": allowed, "load_avg_start": os.getloadavg(),
        "sluice_bin": str(harness.sluice_bin()), "settings": vars(a),
        "notes": notes, "max_connections": max_conn, "sluice_workers": workers_shown,
        "latency_method": None if a.no_latency_log else LATENCY_METHOD,
    }
    if not a.matrix:
        result["pgbench_args"] = pgbench_args(a)
    log_dir = base / "pgbench-logs"
    try:
        log(f"PostgreSQL: initdb, pgbench -i -s {a.scale}")
        tls = make_certs(base / "certs") if a.tls else None
        extra_conf: Dict[str, Any] = {}
        if tls:
            extra_conf.update({"ssl": "on", "ssl_cert_file": f"'{tls['cert']}'",
                               "ssl_key_file": f"'{tls['key']}'"})
        if max_conn != 200:
            extra_conf["max_connections"] = max_conn
        pg = Postgres(base=base, extra_conf=extra_conf or None)
        started.append(pg)
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)
        pg.pgbench_init(DB, USER, scale=a.scale, timeout=600)
        # --auth-secret verifier: both auth_files hold PostgreSQL's SCRAM verifier, as
        # pg_shadow or auth_query would give it, instead of the plaintext password.
        secret = pg.role_secret(USER) if a.auth_secret == "verifier" else None
        pg.psql("VACUUM ANALYZE", db=DB, timeout=300)

        tg: Dict[str, Target] = {}
        if "direct" in started_names:
            tg["direct"] = Target("direct", pg.port, None)

        def make_sluice(rate_limits: Optional[Dict[str, Any]]) -> Sluice:
            cfg = default_config(pg, pool_mode="transaction", default_pool_size=a.pool_size,
                                 max_client_conn=max_client_conn, workers=a.workers)
            cfg["sluice"]["server_tls_sslmode"] = a.server_tls_sslmode
            # As PgBouncer's ini below: no log line per login and logout (they cost a
            # formatted write each, which churn runs would count for Sluice alone).
            cfg["sluice"].update(log_connections=False, log_disconnections=False)
            if tls:
                cfg["sluice"].update(client_tls_sslmode="require", client_tls_cert_file=tls["cert"],
                                     client_tls_key_file=tls["key"])
            if rate_limits:
                cfg["rate_limits"] = rate_limits
            s = Sluice(cfg, users={USER: PASSWORD}, base=base,
                       userlist=harness.userlist_text({USER: secret}) if secret else None)
            started.append(s)
            with spawn_affinity(pool_cpus):
                return s.start()

        if "sluice" in started_names:
            s = make_sluice(None)
            tg["sluice"] = Target("sluice", s.port, s.proc.pid)
            result["sluice_config"] = s.config_path.read_text()
        if a.baseline_bin:
            saved = os.environ.get("SLUICE_BIN")
            os.environ["SLUICE_BIN"] = a.baseline_bin
            try:
                sb = make_sluice(None)
            finally:
                if saved is None:
                    os.environ.pop("SLUICE_BIN", None)
                else:
                    os.environ["SLUICE_BIN"] = saved
            tg["baseline"] = Target("baseline", sb.port, sb.proc.pid)
            result["baseline_bin"] = a.baseline_bin
            for v in cell_names.values():
                v.append("baseline")
        if "sluice+limiter" in started_names:
            r = Redis(base=base)
            started.append(r)
            r.start()
            rl = {"backend": "redis", "redis_url": r.url, "tenant_key": "user",
                  "on_redis_failure": a.limiter_failure,
                  "default": {"queries_per_second": a.limiter_rate,
                              "transactions_per_second": a.limiter_rate}}
            s2 = make_sluice(rl)
            tg["sluice+limiter"] = Target("sluice+limiter", s2.port, s2.proc.pid)
            result["sluice_limiter_config"] = s2.config_path.read_text()
            result["_redis"] = r
        if "pgbouncer" in started_names:
            b = PgBouncer(base, pg, a.pool_size, max_client_conn, tls, a.server_tls_sslmode,
                          secret)
            started.append(b)
            with spawn_affinity(pool_cpus):
                b.start()
            tg["pgbouncer"] = Target("pgbouncer", b.port, b.proc.pid)
            result["pgbouncer_ini"] = b.ini.read_text()

        pin_failures = [0]

        def pin_all() -> None:
            """Before every run: poolers on their core, PostgreSQL (new backends and the
            poolers' server connections) and Redis on the others."""
            for t in tg.values():
                if t.pid:
                    pin_failures[0] += set_affinity_tree(t.pid, pool_cpus)[1]
            pin_failures[0] += set_affinity_tree(pg.proc.pid, other_cpus)[1]
            rp = getattr(result.get("_redis"), "proc", None)
            if rp is not None:
                pin_failures[0] += set_affinity_tree(rp.pid, other_cpus)[1]

        if pool_cpus:
            os.sched_setaffinity(0, other_cpus)  # this script, pgbench and psycopg
            pin_all()
            result["pinning"] = {
                "pooler_cpus": sorted(pool_cpus), "other_cpus": sorted(other_cpus),
                "check_after_pinning": {n: affinity_of_tree(t.pid) for n, t in tg.items()
                                        if t.pid},
                "check_postgres": affinity_of_tree(pg.proc.pid),
                "check_pgbench": sorted(os.sched_getaffinity(0))}
            log(f"pinning: {result['pinning']}")

        # one Target per (cell, target) so that run lists and summaries stay per cell
        ctg: Dict[Tuple[str, int], Dict[str, Target]] = {
            cell: {n: Target(n, t.port, t.pid) for n, t in tg.items() if n in names}
            for cell, names in cell_names.items()}
        log_dir.mkdir(parents=True, exist_ok=True)
        if a.matrix:
            log(f"matrix: {len(cells)} cells {[f'{m}/c{c}' for m, c in cells]}, targets "
                f"{list(tg)}, {n_runs} runs of {a.seconds} s")
        else:
            log(f"targets {list(tg)}; pgbench {' '.join(pgbench_args(a))}")
        # pgbench -T counts its connection phase (PostgreSQL 15: the clock starts before
        # the clients connect); 200 direct clients can take longer than a 3 s run. With
        # the allowance, each run gets -T seconds + its expected connection time: that of
        # the same target and cell in the previous round, else the target's last measured
        # time per client x clients, else 40 ms (direct) / 10 ms (pooler) per client.
        conn_prev: Dict[Tuple[str, int, str], float] = {}
        conn_rate: Dict[str, float] = {}

        def allowance(cell: Tuple[str, int], name: str) -> int:
            if not a.connect_allowance:
                return 0
            ms = conn_prev.get((*cell, name))
            if ms is None:
                ms = conn_rate.get(name, 40.0 if name == "direct" else 10.0) * cell[1]
            return math.ceil(ms * 1.3 / 1000) if ms >= 0.1 * a.seconds * 1000 else 0

        for rnd in range(a.rounds):
            for cell in cells:
                m, c = cell
                names = list(ctg[cell])
                if not names:
                    continue
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    t = ctg[cell][name]
                    if pool_cpus:
                        pin_all()
                    prefix = None if a.no_latency_log else \
                        log_dir / f"r{rnd}_{m}_c{c}_{name.replace('+', '_')}"
                    ca = argparse.Namespace(**{**vars(a), "mode": m, "clients": c,
                                               "seconds": a.seconds + allowance(cell, name)})
                    res = run_pgbench(t, ca, prefix, pg.proc.pid)
                    res["round"] = rnd
                    if "conn_ms" in res:
                        conn_prev[(m, c, name)] = res["conn_ms"]
                        conn_rate[name] = res["conn_ms"] / c
                    t.runs.append(res)
                    where = f"{m:8s} -c {c:<4d} " if a.matrix else ""
                    log(f"round {rnd + 1}/{a.rounds} {where}{name:15s} "
                        f"tps={fmt(res.get('tps'))} "
                        f"cpu_us/xact={fmt(res.get('cpu_us_per_xact'), 2)} "
                        f"p99={fmt(res.get('lat_p99_ms'), 2)}ms T={ca.seconds}s "
                        f"conn={fmt(res.get('conn_ms'), 0)}ms"
                        + (f"  ERROR: {res['error']}" if "error" in res else ""))
        shutil.rmtree(log_dir, ignore_errors=True)
        if pool_cpus:
            result["pinning"]["set_affinity_failures"] = pin_failures[0]

        redis = result.pop("_redis", None)
        if redis is not None:
            try:  # evidence that the limiter really talked to Redis
                result["redis_keys"] = redis.command("DBSIZE")
                info = redis.command("INFO", "commandstats")
                result["redis_commandstats"] = [l for l in info.splitlines()
                                                if l.startswith("cmdstat_")]
                evals = sum(int(l.split("calls=")[1].split(",")[0])
                            for l in result["redis_commandstats"]
                            if l.startswith(("cmdstat_eval", "cmdstat_evalsha")))
                result["redis_eval_calls"] = evals
                if evals == 0:
                    notes.append("WARNING: Redis received no EVAL/EVALSHA: the limiter never "
                                 "reached Redis, so limiter_on/off does not measure the Redis "
                                 "path.")
            except Exception as e:
                result["redis_keys"] = f"error: {e}"

        memory: Dict[str, Any] = {}
        if a.idle_clients > 0 and not a.limiter:
            for name in ("sluice", "baseline", "pgbouncer"):
                if name in tg:
                    log(f"memory: {a.idle_clients} idle clients to {name}")
                    memory[name] = idle_memory(tg[name], a.idle_clients, budget_s=240,
                                               sslmode="require" if a.tls else "disable")
                    log(f"memory {name}: {memory[name]}")

        cell_out: List[Dict[str, Any]] = []
        for cell in cells:
            m, c = cell
            summary = {n: summarize(t) for n, t in ctg[cell].items()}
            ca = argparse.Namespace(**{**vars(a), "mode": m, "clients": c})
            cell_out.append({"mode": m, "clients": c, "targets": list(ctg[cell]),
                             "pgbench_args": pgbench_args(ca),
                             "runs": {n: t.runs for n, t in ctg[cell].items()},
                             "summary": summary, "ratios": cell_ratios(summary, a.limiter)})
        if a.matrix:
            result["cells"] = cell_out
        else:
            only = cell_out[0]
            result.update({"runs": only["runs"], "summary": only["summary"],
                           "ratios": only["ratios"]})
        result.update({"memory": memory, "load_avg_end": os.getloadavg(),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

        # -- table
        print()
        pin_txt = (f" pinned: pooler cpu {sorted(pool_cpus)}, rest cpu {sorted(other_cpus)}"
                   if pool_cpus else "")
        settings_txt = (f"rounds={a.rounds} pool_size={a.pool_size} workers={workers_shown} "
                        f"(sluice{', its default' if not a.workers else ''}) scale={a.scale}"
                        + pin_txt)
        if not a.matrix:
            summary, ratios = cell_out[0]["summary"], cell_out[0]["ratios"]
            print(f"pgbench {' '.join(pgbench_args(a))}  | {settings_txt}")
            print(f"{'target':16s} {ROW_HEAD}")
            for n, s in summary.items():
                print(f"{n:16s} {row(s)}")
            for k, v in ratios.items():
                extra = ""
                if k == "limiter_on/off" and v is not None:
                    extra = "  (target >= 0.95: " + ("met" if v >= 0.95 else "NOT met") + ")"
                print(f"ratio {k:26s} {fmt(v, 3)}{extra}")
        else:
            ca = argparse.Namespace(**{**vars(a), "mode": "M", "clients": "C"})
            print(f"pgbench {' '.join(pgbench_args(ca))} per cell  | {settings_txt}")
            print(f"{'mode':8s} {'clients':>7s} {'target':15s} {ROW_HEAD}")
            for co in cell_out:
                for n, s in co["summary"].items():
                    print(f"{co['mode']:8s} {co['clients']:>7d} {n:15s} {row(s)}")
            keys: List[str] = []
            for co in cell_out:
                keys += [k for k, v in co["ratios"].items() if k not in keys]
            keys = [k for k in keys if any(co["ratios"].get(k) is not None for co in cell_out)]
            print()
            print("ratios of medians (- = a target missing in that cell)")
            print(f"{'mode':8s} {'clients':>7s} " + " ".join(f"{k:>{max(8, len(k))}s}"
                                                          for k in keys))
            for co in cell_out:
                print(f"{co['mode']:8s} {co['clients']:>7d} " + " ".join(
                    f"{fmt(co['ratios'].get(k), 3):>{max(8, len(k))}s}" for k in keys))
        for n, m in memory.items():
            print(f"memory {n:10s} {fmt(m.get('kib_per_client'), 2)} KiB/idle client "
                  f"({m['clients']} clients, RSS {m['rss_before_kib']} -> "
                  f"{m['rss_after_kib']} KiB)" + (f"  ERROR: {m['error']}"
                                                  if "error" in m else ""))
        if "redis_commandstats" in result:
            print(f"redis: {result.get('redis_eval_calls')} EVAL/EVALSHA calls, {result['redis_keys']} keys")
        for n in notes:
            print("note:", n)
        result["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"JSON written to {a.json}")
        if a.png:
            try:
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                import plot_bench
                plot_bench.plot(result, a.png)
                print(f"chart written to {a.png}")
            except Exception as e:  # the figures above and the JSON are what matter
                print(f"chart NOT written: {type(e).__name__}: {e}")
        bad = any(s["ok_rounds"] < s["rounds"] for co in cell_out for s in co["summary"].values())
        print(f"elapsed {time.monotonic() - t_begin:.0f} s")
        return 1 if bad else 0
    finally:
        signal.alarm(0)
        shutil.rmtree(log_dir, ignore_errors=True)
        for x in reversed(started):
            try:
                x.stop()
            except Exception as e:
                log(f"stopping {type(x).__name__}: {e}")
        harness.kill_all()


if __name__ == "__main__":
    sys.exit(main())
