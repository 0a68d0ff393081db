#!/usr/bin/python3
"""Macro benchmark: pgbench against PostgreSQL directly, through Sluice and through
PgBouncer, in one run, interleaved rounds, medians (DESIGN.md section 5, issues 3 and 5).

    /usr/bin/python3 bench/pgbench_compare.py --rounds 5 --seconds 10 --json out.json
    /usr/bin/python3 bench/pgbench_compare.py --limiter --rounds 5 --seconds 10
    /usr/bin/python3 bench/pgbench_compare.py --tls --mode simple --rounds 5   # sslmode=require

Everything listens on 127.0.0.1 only; every process started here is stopped at exit
(try/finally, atexit, SIGTERM/SIGINT handlers, PR_SET_PDEATHSIG) and the whole run has a
time limit (--max-minutes). See bench/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

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


# ----------------------------------------------------------------------------------------
# PgBouncer

class PgBouncer:
    def __init__(self, base: Path, pg: Postgres, pool_size: int, max_client_conn: int,
                 tls: Optional[Dict[str, str]] = None):
        self.dir = base / "pgbouncer"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = harness.free_port()
        self.ini = self.dir / "pgbouncer.ini"
        self.log = self.dir / "pgbouncer.log"
        self.proc: Optional[subprocess.Popen] = None
        (self.dir / "userlist.txt").write_text(harness.userlist_text({USER: PASSWORD}))
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


def run_pgbench(t: Target, a) -> Dict[str, Any]:
    cmd = [str(harness.PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(t.port), "-U", USER,
           *pgbench_args(a), DB]
    cpu0 = cpu_seconds(t.pid) if t.pid else None
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
    res: Dict[str, Any] = {"rc": rc, "wall_s": round(wall, 2)}
    res.update(harness.parse_pgbench(out))
    if cpu0 is not None:
        res["pooler_cpu_s"] = round(cpu1 - cpu0, 3)
        if res.get("processed"):
            res["cpu_us_per_xact"] = round((cpu1 - cpu0) * 1e6 / res["processed"], 2)
    if rc != 0 or "tps" not in res or res.get("failed"):
        res["error"] = "\n".join(out.strip().splitlines()[-6:])
    return res


# ----------------------------------------------------------------------------------------
# memory per idle client

def idle_memory(t: Target, k: int, budget_s: float, sslmode: str = "disable") -> Dict[str, Any]:
    import psycopg
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
    return {"tps_median": med(tps), "tps_min": min(tps) if tps else None,
            "tps_max": max(tps) if tps else None, "ok_rounds": len(tps),
            "rounds": len(t.runs), "cpu_us_per_xact_median": med(cpu),
            "failed_xacts": sum(int(r.get("failed", 0)) for r in t.runs)}


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a and b else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10, help="pgbench -T per run")
    ap.add_argument("--clients", type=int, default=50, help="pgbench -c")
    ap.add_argument("--threads", type=int, default=2, help="pgbench -j")
    ap.add_argument("--mode", default="extended", choices=["simple", "extended", "prepared"],
                    help="pgbench -M (prepared skips PgBouncer 1.18)")
    ap.add_argument("--builtin", default="select-only",
                    help="pgbench -b script: select-only (default), tpcb-like, simple-update")
    ap.add_argument("--script-file", help="pgbench -f FILE instead of a builtin script")
    ap.add_argument("--pgbench-extra", nargs=argparse.REMAINDER,
                    help="extra pgbench arguments (must come last)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    ap.add_argument("--pool-size", type=int, default=20,
                    help="default_pool_size, same for Sluice and PgBouncer")
    ap.add_argument("--workers", type=int, default=0, help="Sluice workers (0 = Sluice's default: half the usable cores)")
    ap.add_argument("--idle-clients", type=int, default=1000,
                    help="idle clients for the memory figure (0 = skip)")
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
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="hard time limit for the whole run (default: computed)")
    a = ap.parse_args()

    targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    if a.limiter:
        targets = ["sluice", "sluice+limiter"]
    notes: List[str] = []
    if "pgbouncer" in targets and a.mode == "prepared":
        targets.remove("pgbouncer")
        notes.append("PgBouncer skipped: 1.18 has no protocol-level prepared statement "
                     "support in transaction mode (added in 1.21); -M prepared would fail.")
    if "pgbouncer" in targets and not os.access(PGBOUNCER, os.X_OK):
        targets.remove("pgbouncer")
        notes.append(f"PgBouncer skipped: {PGBOUNCER} not found.")
    for n in notes:
        log(n)

    budget = a.max_minutes * 60 or (a.rounds * len(targets) * (a.seconds + 20)
                                    + 3 * 120 + 240 + 60 * a.scale)

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
    max_client_conn = max(1000, a.idle_clients + a.clients + 100)
    started: List[Any] = []
    result: Dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
        "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
        "sluice_bin": str(harness.sluice_bin()), "settings": vars(a),
        "pgbench_args": pgbench_args(a), "notes": notes,
    }
    try:
        log(f"PostgreSQL: initdb, pgbench -i -s {a.scale}")
        tls = make_certs(base / "certs") if a.tls else None
        pg = Postgres(base=base, extra_conf={"ssl": "on", "ssl_cert_file": f"'{tls['cert']}'",
                                             "ssl_key_file": f"'{tls['key']}'"} if tls else None)
        started.append(pg)
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)
        pg.pgbench_init(DB, USER, scale=a.scale, timeout=600)
        pg.psql("VACUUM ANALYZE", db=DB, timeout=300)

        tg: Dict[str, Target] = {}
        if "direct" in targets:
            tg["direct"] = Target("direct", pg.port, None)

        def make_sluice(rate_limits: Optional[Dict[str, Any]]) -> Sluice:
            cfg = default_config(pg, pool_mode="transaction", default_pool_size=a.pool_size,
                                 max_client_conn=max_client_conn, workers=a.workers)
            if tls:
                cfg["sluice"].update(client_tls_sslmode="require", client_tls_cert_file=tls["cert"],
                                     client_tls_key_file=tls["key"])
            if rate_limits:
                cfg["rate_limits"] = rate_limits
            s = Sluice(cfg, users={USER: PASSWORD}, base=base)
            started.append(s)
            return s.start()

        if "sluice" in targets:
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
        if "sluice+limiter" in targets:
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
        if "pgbouncer" in targets:
            b = PgBouncer(base, pg, a.pool_size, max_client_conn, tls)
            started.append(b)
            b.start()
            tg["pgbouncer"] = Target("pgbouncer", b.port, b.proc.pid)
            result["pgbouncer_ini"] = b.ini.read_text()

        names = list(tg)
        log(f"targets {names}; pgbench {' '.join(pgbench_args(a))}")
        for rnd in range(a.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                t = tg[name]
                res = run_pgbench(t, a)
                res["round"] = rnd
                t.runs.append(res)
                log(f"round {rnd + 1}/{a.rounds} {name:15s} tps={fmt(res.get('tps'))} "
                    f"cpu_us/xact={fmt(res.get('cpu_us_per_xact'), 2)}"
                    + (f"  ERROR: {res['error']}" if "error" in res else ""))

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

        summary = {n: summarize(t) for n, t in tg.items()}
        med_ = {n: s["tps_median"] for n, s in summary.items()}
        ratios: Dict[str, Any] = {}
        if a.limiter:
            ratios["limiter_on/off"] = ratio(med_.get("sluice+limiter"), med_.get("sluice"))
        else:
            ratios["sluice/pgbouncer"] = ratio(med_.get("sluice"), med_.get("pgbouncer"))
            ratios["sluice/direct"] = ratio(med_.get("sluice"), med_.get("direct"))
            if "baseline" in med_:
                ratios["sluice/baseline"] = ratio(med_.get("sluice"), med_.get("baseline"))
            ratios["pgbouncer/direct"] = ratio(med_.get("pgbouncer"), med_.get("direct"))
            c_s = summary.get("sluice", {}).get("cpu_us_per_xact_median")
            c_b = summary.get("pgbouncer", {}).get("cpu_us_per_xact_median")
            ratios["cpu_sluice/pgbouncer"] = ratio(c_s, c_b)
            if "baseline" in summary:
                ratios["cpu_sluice/baseline"] = ratio(
                    c_s, summary["baseline"].get("cpu_us_per_xact_median"))
        result.update({"runs": {n: t.runs for n, t in tg.items()}, "summary": summary,
                       "ratios": ratios, "memory": memory,
                       "load_avg_end": os.getloadavg(),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

        # -- table
        print()
        print(f"pgbench {' '.join(pgbench_args(a))}  | rounds={a.rounds} pool_size="
              f"{a.pool_size} workers={a.workers or max(1, len(os.sched_getaffinity(0)) // 2)} "
              f"(sluice{', its default' if not a.workers else ''}) scale={a.scale}")
        print(f"{'target':16s} {'median tps':>11s} {'min':>10s} {'max':>10s} "
              f"{'ok/rounds':>9s} {'failed':>6s} {'cpu us/xact':>11s}")
        for n, s in summary.items():
            print(f"{n:16s} {fmt(s['tps_median']):>11s} {fmt(s['tps_min']):>10s} "
                  f"{fmt(s['tps_max']):>10s} {s['ok_rounds']:>4d}/{s['rounds']:<4d} "
                  f"{s['failed_xacts']:>6d} {fmt(s['cpu_us_per_xact_median'], 2):>11s}")
        for k, v in ratios.items():
            extra = ""
            if k == "limiter_on/off" and v is not None:
                extra = "  (target >= 0.95: " + ("met" if v >= 0.95 else "NOT met") + ")"
            print(f"ratio {k:22s} {fmt(v, 3)}{extra}")
        for n, m in memory.items():
            print(f"memory {n:10s} {fmt(m.get('kib_per_client'), 2)} KiB/idle client "
                  f"({m['clients']} clients, RSS {m['rss_before_kib']} -> "
                  f"{m['rss_after_kib']} KiB)" + (f"  ERROR: {m['error']}"
                                                  if "error" in m else ""))
        if "redis_commandstats" in result:
            print(f"redis: {result.get('redis_eval_calls')} EVAL/EVALSHA calls, {result['redis_keys']} keys")
        for n in notes:
            print("note:", n)
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"JSON written to {a.json}")
        bad = any(s["ok_rounds"] < s["rounds"] for s in summary.values())
        return 1 if bad else 0
    finally:
        signal.alarm(0)
        for x in reversed(started):
            try:
                x.stop()
            except Exception as e:
                log(f"stopping {type(x).__name__}: {e}")
        harness.kill_all()


if __name__ == "__main__":
    sys.exit(main())
