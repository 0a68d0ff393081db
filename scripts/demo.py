#!/usr/bin/python3
"""Sluice demo: PostgreSQL + Redis + Sluice on temporary loopback ports, pgbench through
Sluice and directly, then the admin console's view. Everything is stopped at the end.

    cmake -S . -B build && cmake --build build -j2
    /usr/bin/python3 scripts/demo.py [--clients 50] [--seconds 15] [--scale 5] [--replica]

--replica adds a streaming standby (pg_basebackup -R, on 127.0.0.2) and a second run with
two entries over both hosts: `app` (target_session_attrs read-write) and `app_ro`
(prefer-standby). It drives writes through one and reads through the other at once, and
shows which host served what.

Runs as root or as a normal user (as root, PostgreSQL runs as the system user
`sluicetest`). Uses conf/sluice.yaml, rewritten for the temporary ports.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import yaml  # noqa: E402

import harness  # noqa: E402
from harness import Postgres, Redis, Sluice  # noqa: E402

PASSWORDS = {"app": "app_pw", "admin": "admin_pw", "stats": "stats_pw"}


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def load_config(path: Path) -> dict:
    if path.exists():
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        print(f"using {path.relative_to(ROOT)} (ports and paths rewritten)")
        return cfg
    print(f"{path} not found; using a built-in configuration")
    return {"sluice": {"pool_mode": "transaction", "default_pool_size": 20,
                       "auth_type": "scram-sha-256", "admin_users": ["admin"]},
            "databases": {"app": {"host": "127.0.0.1", "port": 5432, "dbname": "app"}}}


def rewrite(cfg: dict, pg: Postgres, redis: Redis, tmp: Path) -> dict:
    gen = dict(cfg.get("sluice") or {})
    gen["listen_addr"] = "127.0.0.1"
    gen["listen_port"] = harness.free_port()
    gen.pop("unix_socket_dir", None)  # Sluice() uses its own temp dir
    gen.pop("auth_file", None)  # Sluice() points it at the userlist it writes
    gen.pop("logfile", None)
    gen.pop("pidfile", None)
    admins = list(gen.get("admin_users") or [])
    if "admin" not in admins:
        admins.append("admin")
    gen["admin_users"] = admins
    if "metrics_listen" in gen:
        gen["metrics_listen"] = f"127.0.0.1:{harness.free_port()}"
    if int(gen.get("max_client_conn", 100) or 100) < 200:
        gen["max_client_conn"] = 200
    cfg["sluice"] = gen
    dbs = cfg.get("databases") or {}
    if not dbs:
        dbs = {"app": {"dbname": "app"}}
    for name, db in dbs.items():
        if isinstance(db, str):  # a libpq-style connection string: "host=... dbname=..."
            db = dict(kv.split("=", 1) for kv in db.split() if "=" in kv)
        db = dict(db or {})
        db["host"] = "127.0.0.1"
        db["port"] = pg.port
        dbs[name] = db
    cfg["databases"] = dbs
    rl = cfg.get("rate_limits")
    if isinstance(rl, dict):
        rl["redis_url"] = redis.url
    return cfg


def pgbench_run(label: str, host: str, port: int, db: str, clients: int, seconds: int):
    r = harness.pgbench(["-c", str(clients), "-j", "2", "-T", str(seconds), "-M", "prepared",
                         "-n"], host, port, "app", PASSWORDS["app"], db,
                        timeout=seconds + 120)
    res = harness.parse_pgbench(r.stdout)
    if r.returncode != 0 or "tps" not in res:
        print(f"{label}: pgbench exit {r.returncode}")
        print("\n".join((r.stdout + r.stderr).splitlines()[-15:]))
        return None
    else:
        print(f"{label}: tps {res['tps']:.0f}, latency {res.get('latency_ms', 0):.2f} ms, "
              f"failed {res.get('failed', '?')}", flush=True)
    return res.get("tps")


def console(s: Sluice, command: str, expanded: bool = False) -> None:
    print(f"\n{command}")
    # Column headers, aligned; wide results (SHOW STATS) one field per line.
    view = ["-P", "pager=off", "-P", "tuples_only=off", "-P", "format=aligned"]
    if expanded:
        view += ["-P", "expanded=on"]
    for db in ("sluice", "pgbouncer"):
        try:
            r = s.psql(command, user="admin", password=PASSWORDS["admin"], db=db, timeout=15,
                       extra_args=view)
        except Exception as e:  # noqa: BLE001
            print(f"  ({db}: {e})")
            continue
        if r.returncode == 0:
            print(r.stdout.rstrip() or "(no rows)")
            return
        print(f"  ({db}: {r.stderr.strip()})")


def replica_run(args, tmp: Path, pg: Postgres, base_cfg: dict) -> None:
    """A primary, its standby, and Sluice splitting writes from reads by entry."""
    banner("starting a streaming standby (pg_basebackup -R) on 127.0.0.2")
    standby = harness.Standby(pg).start()
    if not standby.caught_up():
        print("the standby did not catch up; skipping the replica run")
        standby.stop()
        return
    print(f"standby 127.0.0.2:{standby.port}  (primary 127.0.0.1:{pg.port})")
    server_db = "app"
    hosts = ["127.0.0.1", "127.0.0.2"]
    cfg = {"sluice": dict(base_cfg["sluice"]), "databases": {
        "app": {"host": list(hosts), "port": pg.port, "dbname": server_db,
                "target_session_attrs": "read-write"},
        "app_ro": {"host": list(hosts), "port": pg.port, "dbname": server_db,
                   "target_session_attrs": "prefer-standby", "max_replica_lag": 5},
    }}
    cfg["sluice"]["listen_port"] = harness.free_port()
    cfg["sluice"]["pool_mode"] = "transaction"
    cfg.pop("rate_limits", None)
    print("databases:\n" + yaml.safe_dump(cfg["databases"], sort_keys=False).rstrip())
    s = Sluice(cfg, users=PASSWORDS, base=tmp)
    try:
        s.start()
    except harness.SluiceStartError as e:
        print(e)
        standby.stop()
        return
    try:
        for entry in ("app", "app_ro"):
            r = s.psql("SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' "
                       "END || ' ' || inet_server_addr()", db=entry,
                       password=PASSWORDS["app"])
            print(f"{entry:7s} -> {r.stdout.strip() or r.stderr.strip()}")
        seconds = max(5, args.seconds // 2)
        banner(f"writes through app and reads through app_ro at once, {seconds} s each")
        procs = []
        for label, entry, extra in (("writes (tpcb, app)   ", "app", []),
                                    ("reads  (-S, app_ro)  ", "app_ro", ["-S"])):
            argv = [str(harness.PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(s.port),
                    "-U", "app", "-c", str(max(2, args.clients // 2)), "-j", "2", "-T",
                    str(seconds), "-n", *extra, entry]
            procs.append((label, harness.subprocess.Popen(
                argv, stdout=harness.subprocess.PIPE, stderr=harness.subprocess.STDOUT,
                text=True, env=harness.client_env(PASSWORDS["app"]))))
        for label, p in procs:
            out, _ = p.communicate(timeout=seconds + 120)
            res = harness.parse_pgbench(out)
            print(f"{label}: tps {res.get('tps', 0):.0f}" if "tps" in res
                  else f"{label}: pgbench exit {p.returncode}\n{out[-800:]}")
        banner("which host served what")
        console(s, "SHOW SERVERS;")
        console(s, "SHOW DATABASES;", True)
    finally:
        s.stop()
        standby.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "conf" / "sluice.yaml"))
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--replica", action="store_true",
                    help="also run with a streaming standby: reads and writes split by entry")
    args = ap.parse_args()

    # atexit (which stops everything) does not run on SIGTERM/SIGINT by default.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(130))

    binary = harness.sluice_bin()
    if not binary.exists():
        print(f"{binary} not found: build first (cmake -S . -B build && cmake --build build)")
        return 2

    tmp = harness.make_tempdir("sluice-demo-")
    banner("starting PostgreSQL 15 and Redis")
    pg = Postgres(base=tmp).start()
    redis = Redis(base=tmp).start()
    print(f"postgres 127.0.0.1:{pg.port}  redis {redis.url}  temp {tmp}")

    cfg = rewrite(load_config(Path(args.config)), pg, redis, tmp)
    pg.create_role("app", PASSWORDS["app"])
    pg.create_role("admin", PASSWORDS["admin"])
    pg.create_role("stats", PASSWORDS["stats"])
    for db in {d.get("dbname") or name for name, d in cfg["databases"].items() if name != "*"}:
        pg.create_database(db, owner="app")
    bench_db = "app" if "app" in cfg["databases"] else next(iter(cfg["databases"]))
    server_db = cfg["databases"][bench_db].get("dbname") or bench_db

    banner(f"pgbench -i -s {args.scale} (directly)")
    t0 = time.monotonic()
    pg.pgbench_init(server_db, "app", scale=args.scale)
    print(f"done in {time.monotonic() - t0:.1f}s")

    banner("starting Sluice")
    s = Sluice(cfg, users=PASSWORDS, base=tmp)
    try:
        s.start()
    except harness.SluiceStartError as e:
        print(e)
        return 1
    g = cfg["sluice"]
    print(f"sluice 127.0.0.1:{s.port}  pool_mode {g.get('pool_mode', 'session')}  "
          f"default_pool_size {g.get('default_pool_size', 20)}  log {s.log}")

    banner(f"pgbench -c {args.clients} -j 2 -T {args.seconds} -M prepared")
    via = pgbench_run("through Sluice ", "127.0.0.1", s.port, bench_db, args.clients,
                      args.seconds)
    direct = pgbench_run("direct to PG   ", "127.0.0.1", pg.port, server_db, args.clients,
                         args.seconds)
    if via and direct:
        print(f"ratio Sluice/direct: {via / direct:.2f}")

    banner("admin console")
    for cmd, expanded in (("SHOW POOLS;", False), ("SHOW STATS;", True),
                          ("SHOW LATENCY;", True), ("SHOW TENANTS;", False)):
        console(s, cmd, expanded)

    if args.replica:
        replica_run(args, tmp, pg, cfg)

    banner("stopping")
    rc = s.stop()
    print(f"sluice exit code {rc}")
    if not s.alive() and rc not in (0, None):
        print(s.log_tail(20))
    redis.stop()
    pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
