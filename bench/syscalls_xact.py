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


def measure(name: str, port: int, pid: int, base: Path, clients: int, transactions: int,
            mode: str) -> Dict:
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable")
    pgbench = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", "-S",
               "-M", mode, "-c", str(clients), "-j", "2"]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", type=Path,
                    help="a Sluice binary (repeatable; default build/sluice)")
    ap.add_argument("--no-pgbouncer", action="store_true")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--transactions", type=int, default=2000, help="pgbench -t, per client")
    ap.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"])
    ap.add_argument("--pool-size", type=int, default=20)
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
        targets = []
        for i, b in enumerate(bins):
            cfg = default_config(pg, pool_mode="transaction", default_pool_size=a.pool_size,
                                 max_client_conn=1000, workers=0)
            cfg["sluice"]["server_tls_sslmode"] = "prefer"
            saved = os.environ.get("SLUICE_BIN")
            os.environ["SLUICE_BIN"] = str(b)
            try:
                s = Sluice(cfg, users={USER: PASSWORD}, base=base)
                started.append(s)
                s.start()
            finally:
                if saved is None:
                    os.environ.pop("SLUICE_BIN", None)
                else:
                    os.environ["SLUICE_BIN"] = saved
            targets.append((f"sluice:{b}", s.port, s.proc.pid))
        if not a.no_pgbouncer:
            pb = PgBouncer(base, pg, a.pool_size, 1000, None, "prefer")
            started.append(pb)
            pb.start()
            targets.append(("pgbouncer", pb.port, pb.proc.pid))
        for name, port, pid in targets:
            r = measure(name, port, pid, base, a.clients, a.transactions, a.mode)
            results.append(r)
            top = sorted(r["calls"].items(), key=lambda kv: -kv[1]["per_xact"])
            shown = ", ".join(f"{k} {v['per_xact']:.2f}" +
                              (f" ({v['failed_per_xact']:.2f} failed)" if v["failed_per_xact"] >= 0.01 else "")
                              for k, v in top if v["per_xact"] >= 0.01)
            print(f"{name}: {r['per_xact_total']:.2f} system calls per transaction "
                  f"(pgbench -S -M {a.mode} -c {a.clients} -t {a.transactions}): {shown}",
                  flush=True)
    finally:
        for x in reversed(started):
            try:
                x.stop()
            except Exception as e:  # keep stopping the others
                print(f"stop failed: {e}", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps({"clients": a.clients, "mode": a.mode,
                                      "transactions_per_client": a.transactions,
                                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
