#!/usr/bin/env python3
"""System calls per transaction, by call, for Sluice builds and PgBouncer (strace -c).

    /usr/bin/python3 bench/syscalls_xact.py                        # build/sluice, PgBouncer
    /usr/bin/python3 bench/syscalls_xact.py --bin OLD/build/sluice --bin build/sluice
    /usr/bin/python3 bench/syscalls_xact.py --clients 50 --transactions 400 --json out.json

Another figure a noisy, shared machine cannot move: each pooler runs in front of one
throwaway PostgreSQL; after a warm-up, `strace -c -f` attaches to every thread of the
pooler, pgbench -S -t N runs, and the counts are divided by the transactions. Calls that
failed (a recv that would block) are shown apart. strace slows the pooler down, so the
counts are the figure, not the speed. Kernel time per call is not measured here
(pgbench_compare.py measures CPU). Everything listens on 127.0.0.1 and is stopped at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
from harness import Postgres, Sluice, default_config  # noqa: E402
from pgbench_compare import DB, PASSWORD, USER, PgBouncer  # noqa: E402


def parse_strace_summary(text: str) -> Dict[str, Dict[str, int]]:
    """strace -c's table: {syscall: {"calls": n, "errors": e}}."""
    out: Dict[str, Dict[str, int]] = {}
    for line in text.splitlines():
        p = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(p) in (5, 6) and p[3].isdigit() and p[-1] != "total":
            out[p[-1]] = {"calls": int(p[3]), "errors": int(p[4]) if len(p) == 6 else 0}
    return out


def pgbench_argv(port: int, clients: int, mode: str, connect: bool) -> List[str]:
    """connect: pgbench -C, a new connection per transaction."""
    return ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", "-S",
            "-M", mode, "-c", str(clients), "-j", "2", *(["-C"] if connect else [])]


PGBENCH_ENV = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable")


def tcp_segments() -> int:
    """Segments sent by every TCP socket of this network namespace (/proc/net/snmp)."""
    lines = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines()
             if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def cpu_ticks(pid: int) -> tuple:
    """(user, system) clock ticks of the whole process, all threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def context_switches(pid: int) -> tuple:
    """(voluntary, involuntary) context switches of every thread of the process
    (/proc/PID/task/*/status): a voluntary one is the pooler going to sleep (epoll_wait
    with nothing ready), each paid again on the wake-up."""
    vol = invol = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # (a thread that ended)
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return vol, invol


def kernel_share(port: int, pid: int, clients: int, transactions: int, mode: str,
                 connect: bool) -> Dict:
    """One untraced run: the pooler's user and system CPU per transaction, and the TCP
    segments per transaction (all legs: pgbench, pooler, PostgreSQL; 4 is the least a
    pooled -S transaction can take: query in and out, result in and out). /proc/PID/stat
    counts in clock ticks (10 ms), so a run should last a few seconds."""
    pgbench = pgbench_argv(port, clients, mode, connect)
    subprocess.run(pgbench + ["-t", "100", DB], env=PGBENCH_ENV, capture_output=True,
                   timeout=600, check=True)  # (the logins and the warm-up stay outside)
    seg0, (u0, s0), (v0, i0) = tcp_segments(), cpu_ticks(pid), context_switches(pid)
    subprocess.run(pgbench + ["-t", str(transactions), DB], env=PGBENCH_ENV,
                   capture_output=True, timeout=1800, check=True)
    seg1, (u1, s1), (v1, i1) = tcp_segments(), cpu_ticks(pid), context_switches(pid)
    n = clients * transactions
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {"user_us_per_xact": (u1 - u0) * tick_us / n,
            "system_us_per_xact": (s1 - s0) * tick_us / n,
            "tcp_segments_per_xact": (seg1 - seg0) / n,
            "sleeps_per_xact": (v1 - v0) / n,
            "preemptions_per_xact": (i1 - i0) / n}


def measure(name: str, port: int, pid: int, base: Path, clients: int, transactions: int,
            mode: str, connect: bool) -> Dict:
    env = PGBENCH_ENV
    pgbench = pgbench_argv(port, clients, mode, connect)
    subprocess.run(pgbench + ["-t", "100", DB], env=env, capture_output=True, timeout=600,
                   check=True)
    out = base / f"strace-{time.monotonic_ns()}.txt"
    err = base / f"strace-{time.monotonic_ns()}.err"
    threads = sorted(os.listdir(f"/proc/{pid}/task"))
    with open(err, "w") as err_file:
        st = subprocess.Popen(["strace", "-c", "-f", "-o", str(out)] +
                              [a for t in threads for a in ("-p", t)],
                              stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        # strace says nothing when it has attached: wait until every thread is traced.
        def attached() -> bool:
            for t in threads:
                try:
                    status = Path(f"/proc/{pid}/task/{t}/status").read_text()
                except FileNotFoundError:  # (a thread that ended)
                    continue
                tracer = [l.split()[1] for l in status.splitlines() if l.startswith("TracerPid:")]
                if tracer and tracer[0] == "0":
                    return False
            return True
        if not harness.wait_for(attached, 30):
            raise RuntimeError(f"strace did not attach to {name} (threads {threads}; "
                               f"strace: {harness.tail(err)})")
        r = subprocess.run(pgbench + ["-t", str(transactions), DB], env=env,
                           capture_output=True, text=True, timeout=1800, check=True)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(timeout=60)
    calls = parse_strace_summary(out.read_text())
    n = clients * transactions
    per = {k: {"per_xact": v["calls"] / n, "failed_per_xact": v["errors"] / n}
           for k, v in calls.items()}
    total = sum(v["calls"] for v in calls.values()) / n
    failed = [line for line in r.stdout.splitlines() if "failed transactions" in line]
    return {"target": name, "transactions": n, "per_xact_total": total, "calls": per,
            "pgbench": failed}


def start_targets(pg: Postgres, base: Path, bins: List[Path], pool_size: int, secret,
                  pgbouncer: bool, started: List) -> List[tuple]:
    """Starts each Sluice binary, and PgBouncer, in front of pg, configured alike
    (transaction mode, the pool size, server_tls_sslmode prefer, no log line per login):
    [(name, port, pid)]. Each one started is appended to `started`, for the caller to stop.
    secret: what both auth_files hold (None: the plaintext password)."""
    targets = []
    for b in bins:
        cfg = default_config(pg, pool_mode="transaction", default_pool_size=pool_size,
                             max_client_conn=1000, workers=0)
        cfg["sluice"]["server_tls_sslmode"] = "prefer"
        # as PgBouncer's (pgbench_compare.PgBouncer): no log line per login and logout
        cfg["sluice"].update(log_connections=False, log_disconnections=False)
        saved = os.environ.get("SLUICE_BIN")
        os.environ["SLUICE_BIN"] = str(b)
        try:
            s = Sluice(cfg, users={USER: PASSWORD}, base=base,
                       userlist=harness.userlist_text({USER: secret}) if secret else None)
            started.append(s)
            s.start()
        finally:
            if saved is None:
                os.environ.pop("SLUICE_BIN", None)
            else:
                os.environ["SLUICE_BIN"] = saved
        targets.append((f"sluice:{b}", s.port, s.proc.pid))
    if pgbouncer:
        pb = PgBouncer(base, pg, pool_size, 1000, None, "prefer", secret)
        started.append(pb)
        pb.start()
        targets.append(("pgbouncer", pb.port, pb.proc.pid))
    return targets


def target_arguments(doc: str, transactions: int) -> argparse.ArgumentParser:
    """The options every per-transaction tool here shares (this one, perf_xact.py): the
    Sluice binaries, PgBouncer or not, pgbench's clients, -t and -M."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--bin", action="append", type=Path,
                    help="a Sluice binary (repeatable; default build/sluice)")
    ap.add_argument("--no-pgbouncer", action="store_true")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--transactions", type=int, default=transactions,
                    help="pgbench -t, per client")
    ap.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"])
    return ap


def main() -> int:
    ap = target_arguments(__doc__, transactions=2000)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--cpu-rounds", type=int, default=3,
                    help="untraced rounds, interleaved across the targets, for the user and "
                         "system CPU per transaction (0: none)")
    ap.add_argument("--cpu-transactions", type=int, default=3000,
                    help="pgbench -t per client in each untraced round")
    ap.add_argument("--connect", action="store_true",
                    help="pgbench -C: every transaction is a new connection (login, SELECT, "
                         "close), so the figures are per connection")
    ap.add_argument("--auth-secret", default="plaintext", choices=["plaintext", "verifier"],
                    help="what both auth_files hold (see pgbench_compare.py --auth-secret)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    bins = [b.resolve() for b in (a.bin or [REPO / "build" / "sluice"])]
    base = harness.make_tempdir("sluice-sc-")
    pg = Postgres(base=base)
    started: List = [pg]
    results = []
    try:
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)
        pg.pgbench_init(DB, USER, scale=1)
        secret = pg.role_secret(USER) if a.auth_secret == "verifier" else None
        targets = start_targets(pg, base, bins, a.pool_size, secret, not a.no_pgbouncer, started)
        shares: Dict[str, List[Dict]] = {name: [] for name, _, _ in targets}
        for _ in range(a.cpu_rounds):
            for name, port, pid in targets:
                shares[name].append(kernel_share(port, pid, a.clients, a.cpu_transactions,
                                                 a.mode, a.connect))
        for name, port, pid in targets:
            r = measure(name, port, pid, base, a.clients, a.transactions, a.mode, a.connect)
            if shares[name]:
                med = {k: statistics.median(x[k] for x in shares[name])
                       for k in shares[name][0]}
                total = med["user_us_per_xact"] + med["system_us_per_xact"]
                r["cpu"] = dict(med, rounds=shares[name], total_us_per_xact=total,
                                system_share=med["system_us_per_xact"] / total if total else 0)
                print(f"{name}: CPU per transaction {total:.2f} us, user {med['user_us_per_xact']:.2f}"
                      f" + system {med['system_us_per_xact']:.2f} ({r['cpu']['system_share']:.0%} in the "
                      f"kernel); TCP segments per transaction {med['tcp_segments_per_xact']:.2f}; "
                      f"context switches per transaction {med['sleeps_per_xact']:.3f} voluntary, "
                      f"{med['preemptions_per_xact']:.3f} involuntary "
                      f"(medians of {a.cpu_rounds} untraced rounds, -t {a.cpu_transactions})", flush=True)
            results.append(r)
            top = sorted(r["calls"].items(), key=lambda kv: -kv[1]["per_xact"])
            shown = ", ".join(f"{k} {v['per_xact']:.2f}" +
                              (f" ({v['failed_per_xact']:.2f} failed)" if v["failed_per_xact"] >= 0.01 else "")
                              for k, v in top if v["per_xact"] >= 0.01)
            print(f"{name}: {r['per_xact_total']:.2f} system calls per transaction "
                  f"(pgbench -S -M {a.mode} -c {a.clients} -t {a.transactions}{' -C' if a.connect else ''}): {shown}",
                  flush=True)
    finally:
        for x in reversed(started):
            try:
                x.stop()
            except Exception as e:  # keep stopping the others
                print(f"stop failed: {e}", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps({"clients": a.clients, "mode": a.mode, "connect": a.connect,
                                      "auth_secret": a.auth_secret,
                                      "transactions_per_client": a.transactions,
                                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
