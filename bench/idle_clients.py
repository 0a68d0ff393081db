#!/usr/bin/python3
"""Memory held per idle authenticated client: Sluice and PgBouncer side by side.

    /usr/bin/python3 bench/idle_clients.py                        # 100000 asked, clamped to the fd limit
    /usr/bin/python3 bench/idle_clients.py --clients 500          # a quick check
    /usr/bin/python3 bench/idle_clients.py --targets sluice --sluice-bin /tmp/other/sluice \\
        --json /tmp/idle.json

For each target in turn (one pooler at a time, the same PostgreSQL): start the pooler
(transaction mode, default_pool_size 20, SCRAM-SHA-256 with a plaintext userlist), warm
its server pool, read its VmRSS, then open N raw-socket clients that each do the real
login (StartupMessage, SCRAM-SHA-256, ReadyForQuery) and one `SELECT 1` (a round trip
through a pooled server), and leave them idle. After a settle time read VmRSS again and
the admin console's SHOW MEM / SHOW POOLS; KiB per client = (after - before) / N. Then
check that every idle client is still connected and stop the pooler.

The clients are non-blocking sockets driven by `selectors`, spread over several
processes (each process is bound by the same open-file limit as the pooler) and over
source addresses 127.0.0.1..127.0.0.K (--clients-per-addr each, so that no address runs
out of ephemeral ports). The pooler itself needs one fd per client: N is clamped to the
open-file hard limit minus --fd-margin, and the RSS at 100,000 clients is then
extrapolated (rss_before + per_client * 100000) and labelled so.

Everything listens on 127.0.0.1; every process started here is stopped at exit
(try/finally, atexit, signal handlers, PR_SET_PDEATHSIG), and the whole run has a hard
time limit (--max-minutes). Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import errno
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
from harness import Postgres, RawPg, Sluice, default_config  # noqa: E402
import pgbench_compare  # noqa: E402
from pgbench_compare import PGBOUNCER, rss_kib  # noqa: E402

USER, PASSWORD, DB = pgbench_compare.USER, pgbench_compare.PASSWORD, pgbench_compare.DB
ADMIN, ADMIN_PW = "admin", "admin_pw"
TARGET_KIB_PER_CLIENT = 1.0
TARGET_CLIENTS = 100_000
TARGET_RSS_KIB = 200 * 1000 * 1000 // 1024  # 200 MB (10^6 bytes) = 195312 KiB, the stricter reading
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the source port at connect(), not at bind()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# SCRAM: harness' client (_ScramClient) with the PBKDF2 step memoised. The pooler shows the
# same salt on every login of a user (Sluice derives one verifier per plaintext password),
# so SaltedPassword is computed once instead of once per client (~1-3 ms each in Python).

class _CachedHashlib:
    """Stands in for the `hashlib` module inside harness: pbkdf2_hmac is memoised, the
    rest is hashlib's."""

    def __init__(self) -> None:
        self.cache: Dict[tuple, bytes] = {}
        self.hits = 0
        self.misses = 0

    def pbkdf2_hmac(self, name, password, salt, iterations, dklen=None):
        key = (name, bytes(password), bytes(salt), iterations, dklen)
        v = self.cache.get(key)
        if v is None:
            self.misses += 1
            v = hashlib.pbkdf2_hmac(name, password, salt, iterations, dklen)
            if len(self.cache) < 4096:
                self.cache[key] = v
        else:
            self.hits += 1
        return v

    def __getattr__(self, name):
        return getattr(hashlib, name)


SCRAM_HASH = _CachedHashlib()
harness.hashlib = SCRAM_HASH  # only harness' own lookups (its _ScramClient) see it


# ----------------------------------------------------------------------------------------
# The client processes

# client states
CONNECTING, LOGIN, QUERY, IDLE, FAILED = range(5)


class _Client:
    __slots__ = ("sock", "state", "buf", "out", "scram", "t0", "events", "idx")

    def __init__(self, sock: socket.socket, idx: int):
        self.sock = sock
        self.idx = idx
        self.state = CONNECTING
        self.buf = bytearray()
        self.out = b""
        self.scram: Optional[harness._ScramClient] = None
        self.t0 = time.monotonic()
        self.events = selectors.EVENT_WRITE


class _Failure(Exception):
    pass


def _source_addr(g: int, per_addr: int) -> str:
    n = g // per_addr  # 0 -> 127.0.0.1, 1 -> 127.0.0.2, ...
    if n > 253:
        raise ValueError("more clients than 254 loopback source addresses can hold")
    return f"127.0.0.{1 + n}"


def client_worker(wid: int, port: int, first: int, count: int, per_addr: int,
                  inflight: int, deadline_wall: float, per_client_timeout: float,
                  conn) -> None:
    """Opens clients first..first+count-1 (global indexes), logs each in, runs SELECT 1,
    then keeps them idle until the parent says "stop". Reports over `conn` (a Pipe)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
    except Exception:
        pass
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, signal.SIG_DFL)
    # counters (and cache) start afresh here: what the parent computed before the fork
    # is not this process' work
    SCRAM_HASH.cache.clear()
    SCRAM_HASH.hits = SCRAM_HASH.misses = 0

    sel = selectors.DefaultSelector()
    sel.register(conn.fileno(), selectors.EVENT_READ, None)
    startup = harness.startup_packet(USER, DB)
    query = harness.message(b"Q", b"SELECT 1\0")
    started = ok = 0
    errors: Dict[str, int] = {}
    samples: List[str] = []
    pending: Dict[int, _Client] = {}  # fd -> client, not idle yet
    idle: set = set()
    dropped = 0
    login_sum, login_n, login_max = 0.0, 0, 0.0
    done_sent = False
    last_progress = 0.0

    def fail(c: _Client, why: str) -> None:
        kind = why.split(":", 1)[0]
        errors[kind] = errors.get(kind, 0) + 1
        if len(samples) < 5:
            samples.append(f"client {c.idx}: {why}")
        pending.pop(c.sock.fileno(), None)
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.state = FAILED

    def want(c: _Client, events: int) -> None:
        if events != c.events:
            sel.modify(c.sock, events, c)
            c.events = events

    def send(c: _Client, data: bytes) -> None:
        c.out += data
        n = c.sock.send(c.out)
        c.out = c.out[n:]
        want(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0))

    def start_one() -> None:
        nonlocal started
        g = first + started
        started += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c = _Client(s, g)
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((_source_addr(g, per_addr), 0))
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
        except OSError as e:
            s.close()
            errors["connect"] = errors.get("connect", 0) + 1
            if len(samples) < 5:
                samples.append(f"client {g}: connect: {e}")
            return
        pending[s.fileno()] = c
        sel.register(s, selectors.EVENT_WRITE, c)

    def on_message(c: _Client, kind: bytes, body: bytes) -> None:
        nonlocal login_sum, login_n, login_max
        if kind == b"E":
            f = harness.parse_error_fields(body)
            raise _Failure(f"{'login' if c.state == LOGIN else 'query'}: "
                           f"{f.get('C')} {f.get('M')}")
        if c.state == LOGIN:
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 0:
                    return
                if code == 10:
                    c.scram = harness._ScramClient(PASSWORD)
                    first_msg = c.scram.client_first()
                    send(c, harness.message(b"p", b"SCRAM-SHA-256\0" +
                                            struct.pack("!I", len(first_msg)) + first_msg))
                elif code == 11 and c.scram is not None:
                    send(c, harness.message(b"p", c.scram.client_final(bytes(body[4:]))))
                elif code == 12 and c.scram is not None:
                    c.scram.verify_server_final(bytes(body[4:]))
                    c.scram = None
                else:
                    raise _Failure(f"login: unexpected auth request {code}")
            elif kind == b"Z":
                c.state = QUERY
                dt = time.monotonic() - c.t0
                login_sum, login_n, login_max = login_sum + dt, login_n + 1, max(login_max, dt)
                send(c, query)
            elif kind not in (b"S", b"K", b"N"):
                raise _Failure(f"login: unexpected message {kind!r}")
        elif c.state == QUERY:
            if kind == b"Z":
                c.state = IDLE
        else:  # idle: ParameterStatus or NOTICE are harmless, anything else is not
            if kind not in (b"S", b"N"):
                raise _Failure(f"idle: unexpected message {kind!r}")

    def on_readable(c: _Client) -> None:
        nonlocal ok, dropped
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            data = None
            err = f"{'idle' if c.state == IDLE else 'io'}: {e}"
        if not data:
            if c.state == IDLE:
                dropped += 1
                idle.discard(c)
                try:
                    sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
                c.sock.close()
                if len(samples) < 5:
                    samples.append(f"client {c.idx}: idle: closed by the pooler")
                return
            raise _Failure(err if data is None else
                           f"{'login' if c.state == LOGIN else 'query'}: closed by the pooler")
        c.buf += data
        was_idle = c.state == IDLE
        while len(c.buf) >= 5:
            kind = bytes(c.buf[:1])
            (length,) = struct.unpack("!I", c.buf[1:5])
            if length < 4 or length > 1 << 24:
                raise _Failure(f"protocol: bad length {length} for {kind!r}")
            if len(c.buf) < 1 + length:
                break
            body = bytes(c.buf[5:1 + length])
            del c.buf[:1 + length]
            on_message(c, kind, body)
        if c.state == IDLE and not was_idle:
            if c.buf:
                raise _Failure("query: data after ReadyForQuery")
            ok += 1
            pending.pop(c.sock.fileno(), None)
            idle.add(c)
            c.buf = bytearray()
            c.out = b""
            want(c, selectors.EVENT_READ)  # still watched: a close by the pooler is an error

    def report(kind: str) -> None:
        conn.send({"kind": kind, "wid": wid, "started": started, "ok": ok,
                   "idle": len(idle), "errors": dict(errors), "samples": list(samples),
                   "dropped": dropped, "scram_pbkdf2": [SCRAM_HASH.misses, SCRAM_HASH.hits],
                   "login_s_sum": login_sum, "login_n": login_n, "login_s_max": login_max})

    stop = False
    while not stop:
        now = time.monotonic()
        if not done_sent and time.time() < deadline_wall:
            while started < count and len(pending) < inflight:
                start_one()
        elif not done_sent:  # out of time: what is still pending is an error
            for c in list(pending.values()):
                fail(c, "timeout: global time budget exhausted")
            if started < count:
                errors["timeout"] = errors.get("timeout", 0) + count - started
                if len(samples) < 5:
                    samples.append(f"{count - started} clients never started: time budget")
                started = count
        for key, ev in sel.select(timeout=0.2):
            c = key.data
            if c is None:  # the parent
                msg = conn.recv()
                if msg == "stop":
                    stop = True
                continue
            try:
                if c.state == CONNECTING:
                    e = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if e:
                        raise _Failure(f"connect: {os.strerror(e)}")
                    c.state = LOGIN
                    send(c, startup)
                    continue
                if ev & selectors.EVENT_WRITE and c.out:
                    send(c, b"")
                if ev & selectors.EVENT_READ:
                    on_readable(c)
            except _Failure as e:
                if c in idle:
                    dropped += 1
                    idle.discard(c)
                fail(c, str(e))
            except (OSError, RuntimeError, ValueError, KeyError, struct.error) as e:
                if c in idle:
                    dropped += 1
                    idle.discard(c)
                fail(c, f"{'login' if c.state in (CONNECTING, LOGIN) else 'query'}: "
                        f"{type(e).__name__}: {e}")
        now = time.monotonic()
        for c in [c for c in pending.values() if now - c.t0 > per_client_timeout]:
            fail(c, f"timeout: no ReadyForQuery within {per_client_timeout:.0f}s")
        if not done_sent and started >= count and not pending:
            report("done")
            done_sent = True
        elif not done_sent and now - last_progress >= 2.0:
            report("progress")
            last_progress = now
    report("final")
    for c in idle:
        c.sock.close()


# ----------------------------------------------------------------------------------------
# PgBouncer: pgbench_compare's configuration, plus an admin user for SHOW MEM

class PgBouncer(pgbench_compare.PgBouncer):
    def __init__(self, base: Path, pg: Postgres, pool_size: int, max_client_conn: int):
        super().__init__(base, pg, pool_size, max_client_conn)
        text = self.ini.read_text()
        if "[pgbouncer]\n" not in text:
            raise RuntimeError(f"no [pgbouncer] section in {self.ini}")
        self.ini.write_text(text.replace("[pgbouncer]\n", f"[pgbouncer]\nadmin_users = {ADMIN}\n", 1))
        (self.dir / "userlist.txt").write_text(harness.userlist_text({USER: PASSWORD,
                                                                      ADMIN: ADMIN_PW}))
        if harness.is_root():
            import shutil
            for p in [self.dir, *self.dir.iterdir()]:
                shutil.chown(p, harness.PG_OS_USER, harness.PG_OS_USER)


# ----------------------------------------------------------------------------------------
# One target

def admin_show(port: int, what: str) -> Dict[str, Any]:
    try:
        c = RawPg("127.0.0.1", port, timeout=10)
        try:
            c.login(ADMIN, ADMIN_PW, "pgbouncer")
            cols: List[str] = []
            c.send(harness.message(b"Q", f"SHOW {what}\0".encode()))
            rows: List[Any] = []
            while True:
                m = c.read_msg()
                if m is None:
                    raise ConnectionError("closed")
                kind, body = m
                if kind == b"T":
                    (n,) = struct.unpack("!H", body[:2])
                    i, cols = 2, []
                    for _ in range(n):
                        j = body.index(b"\0", i)
                        cols.append(body[i:j].decode())
                        i = j + 1 + 18
                elif kind == b"D":
                    rows.append(dict(zip(cols, harness.parse_data_row(body))))
                elif kind == b"E":
                    return {"error": harness.parse_error_fields(body).get("M")}
                elif kind == b"Z":
                    return {"rows": rows}
        finally:
            c.terminate()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def warm_up(port: int, n: int) -> None:
    """A few logins and SELECT 1 before the first reading, so that the pooler's one-off
    allocations (the user's SCRAM verifier, the pool, server connections) are in the
    baseline rather than charged to the idle clients."""
    conns = []
    try:
        for _ in range(n):
            c = RawPg("127.0.0.1", port, timeout=10)
            conns.append(c)
            c.login(USER, PASSWORD, DB)
        for c in conns:
            c.send(harness.message(b"Q", b"SELECT pg_sleep(0.05)\0"))
        for c in conns:
            while True:
                m = c.read_msg()
                if m is None or m[0] == b"Z":
                    break
    finally:
        for c in conns:
            c.terminate()


def run_target(name: str, port: int, pid: int, a, n: int) -> Dict[str, Any]:
    res: Dict[str, Any] = {"target": name, "clients_asked": n}
    warm_up(port, a.warmup)
    time.sleep(a.settle)
    before = rss_kib(pid)
    res["rss_before_kib"] = before
    res["show_mem_before"] = admin_show(port, "MEM")
    res["show_pools_before"] = admin_show(port, "POOLS")
    log(f"{name}: RSS before {before} KiB; opening {n} clients")

    nproc = max(1, math.ceil(n / a.clients_per_proc))
    share = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
    inflight = max(1, a.inflight // nproc)
    ctx = mp.get_context("fork")
    deadline_wall = time.time() + a.connect_budget
    workers, pipes = [], []
    first = 0
    t0 = time.monotonic()
    for i, k in enumerate(share):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=client_worker, daemon=True,
                        args=(i, port, first, k, a.clients_per_addr, inflight, deadline_wall,
                              a.client_timeout, child_end))
        p.start()
        child_end.close()
        workers.append(p)
        pipes.append(parent_end)
        first += k
    last: Dict[int, Dict[str, Any]] = {}
    done: set = set()
    try:
        hard_end = time.monotonic() + a.connect_budget + a.client_timeout + 30
        last_log = 0.0
        while len(done) < nproc:
            if time.monotonic() > hard_end:
                raise RuntimeError("client processes did not finish in time")
            for i, pe in enumerate(pipes):
                while i not in done and pe.poll(0):
                    msg = pe.recv()
                    last[i] = msg
                    if msg["kind"] == "done":
                        done.add(i)
                if i not in done and not workers[i].is_alive():
                    raise RuntimeError(f"client process {i} died ({workers[i].exitcode})")
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log(f"{name}: {sum(m['ok'] for m in last.values())} idle, "
                    f"{sum(sum(m['errors'].values()) for m in last.values())} errors, "
                    f"{time.monotonic() - t0:.0f}s")
            time.sleep(0.05)
        connect_s = time.monotonic() - t0
        ok = sum(m["ok"] for m in last.values())
        log(f"{name}: {ok} clients idle after {connect_s:.1f}s; settling {a.idle_seconds}s")
        time.sleep(a.idle_seconds)
        after = rss_kib(pid)
        res["rss_after_kib"] = after
        res["show_mem"] = admin_show(port, "MEM")
        res["show_pools"] = admin_show(port, "POOLS")
        time.sleep(0.5)
        for pe in pipes:
            pe.send("stop")
        for i, pe in enumerate(pipes):
            if pe.poll(30):
                last[i] = pe.recv()
    finally:
        for p in workers:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    errs: Dict[str, int] = {}
    for m in last.values():
        for k, v in m["errors"].items():
            errs[k] = errs.get(k, 0) + v
    dropped = sum(m["dropped"] for m in last.values())
    still = sum(m["idle"] for m in last.values())
    ok = sum(m["ok"] for m in last.values())
    samples = [s for m in last.values() for s in m["samples"]][:10]
    finals = sum(1 for m in last.values() if m["kind"] == "final")
    if finals < nproc:
        errs["unreported"] = errs.get("unreported", 0) + (n - sum(
            m["started"] for m in last.values() if m["kind"] == "final"))
    misses = sum(m["scram_pbkdf2"][0] for m in last.values())
    hits = sum(m["scram_pbkdf2"][1] for m in last.values())
    per_client = (after - before) / ok if ok else None
    errors = sum(errs.values())  # an idle client closed by the pooler is counted in errs
    res.update({
        "clients": ok, "still_connected_at_end": still, "errors": errors,
        "error_kinds": errs, "error_samples": samples, "dropped_while_idle": dropped,
        "client_processes": nproc, "inflight": inflight * nproc,
        "connect_s": round(connect_s, 1),
        "login_ms_avg": round(1000 * sum(m["login_s_sum"] for m in last.values())
                              / max(1, sum(m["login_n"] for m in last.values())), 2),
        "login_ms_max": round(1000 * max(m["login_s_max"] for m in last.values()), 1),
        "scram_pbkdf2_computed": misses, "scram_pbkdf2_cached": hits,
        "source_addrs": [_source_addr(g, a.clients_per_addr)
                         for g in range(0, n, a.clients_per_addr)],
        "kib_per_client": round(per_client, 3) if per_client is not None else None,
    })
    if per_client is not None:
        res["rss_at_100k_kib"] = round(before + per_client * TARGET_CLIENTS)
        res["rss_at_100k_extrapolated"] = ok < TARGET_CLIENTS
    log(f"{name}: RSS {before} -> {after} KiB, {res['kib_per_client']} KiB/client, "
        f"{errors} errors, pbkdf2 computed {misses} cached {hits}")
    return res


# ----------------------------------------------------------------------------------------

def mib(kib: Optional[float]) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=TARGET_CLIENTS,
                    help="idle clients to open (clamped to what the fd limit allows)")
    ap.add_argument("--targets", default="sluice,pgbouncer", help="comma list: sluice,pgbouncer")
    ap.add_argument("--sluice-bin", help="Sluice binary (default: $SLUICE_BIN or build/sluice)")
    ap.add_argument("--pool-size", type=int, default=20, help="default_pool_size for both")
    ap.add_argument("--workers", type=int, default=0, help="Sluice workers (0 = its default)")
    ap.add_argument("--fd-margin", type=int, default=1000,
                    help="fds kept back from the hard limit for servers, listeners, logs")
    ap.add_argument("--clients-per-proc", type=int, default=5000,
                    help="clients per client process")
    ap.add_argument("--clients-per-addr", type=int, default=20000,
                    help="clients per source address 127.0.0.K (ephemeral ports: ~28000)")
    ap.add_argument("--inflight", type=int, default=200,
                    help="logins in flight at once, over all client processes")
    ap.add_argument("--warmup", type=int, default=20,
                    help="clients that log in and query before the first RSS reading")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before the first reading")
    ap.add_argument("--idle-seconds", type=float, default=3.0,
                    help="seconds the clients sit idle before the second reading")
    ap.add_argument("--connect-budget", type=float, default=600,
                    help="seconds for all clients of one target to log in")
    ap.add_argument("--client-timeout", type=float, default=60,
                    help="seconds one client may take from connect to its SELECT 1 answer")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="hard time limit for the whole run (default: computed)")
    a = ap.parse_args()

    targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    for t in targets:
        if t not in ("sluice", "pgbouncer"):
            ap.error(f"unknown target {t}")
    if a.sluice_bin:
        os.environ["SLUICE_BIN"] = str(Path(a.sluice_bin).resolve())
    notes: List[str] = []
    if "pgbouncer" in targets and not os.access(PGBOUNCER, os.X_OK):
        targets.remove("pgbouncer")
        notes.append(f"PgBouncer skipped: {PGBOUNCER} not found.")

    # -- the open-file limit: raise soft to hard (inherited by every child), clamp N
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = (hard if hard != resource.RLIM_INFINITY else 1 << 20) - a.fd_margin
    n = a.clients
    if n > cap:
        n = cap
        notes.append(f"fd hard limit {hard}: measuring {n} clients, not {a.clients} "
                     f"(the pooler needs one fd per client; {a.fd_margin} kept for servers, "
                     f"listeners and logs). RSS at {TARGET_CLIENTS} is extrapolated.")
    if n < 1:
        ap.error("no clients to open")
    a.clients_per_proc = max(1, min(a.clients_per_proc, (soft if soft != resource.RLIM_INFINITY
                                                          else 1 << 20) - 200))
    for x in notes:
        log(x)

    per_target_s = a.connect_budget + a.client_timeout + a.idle_seconds + 120
    budget = a.max_minutes * 60 or (len(targets) * per_target_s + 180)

    def on_signal(signum, frame):
        raise SystemExit(f"stopped by signal {signum} (time limit {budget:.0f}s)"
                         if signum == signal.SIGALRM else f"stopped by signal {signum}")
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
        signal.signal(s, on_signal)
    signal.alarm(int(budget))
    atexit.register(harness.kill_all)

    result: Dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
        "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
        "sluice_bin": str(harness.sluice_bin()), "pgbouncer_bin": PGBOUNCER,
        "settings": vars(a), "fd_limit": [soft, hard], "clients_asked": a.clients,
        "clients_measured": n, "clamped": n < a.clients, "notes": notes,
        "targets_kib_per_client": TARGET_KIB_PER_CLIENT,
        "targets_rss_at_100k_kib": TARGET_RSS_KIB, "results": {},
    }
    base = harness.make_tempdir("sluice-idle-")
    max_client_conn = n + 200
    started: List[Any] = []
    rows: List[Dict[str, Any]] = []
    try:
        log("PostgreSQL: initdb")
        pg = Postgres(base=base)
        started.append(pg)
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)

        for name in targets:
            if name == "sluice":
                cfg = default_config(pg, pool_mode="transaction", default_pool_size=a.pool_size,
                                     max_client_conn=max_client_conn, workers=a.workers,
                                     admin_users=[ADMIN])
                cfg["sluice"].pop("stats_users", None)
                # as PgBouncer's ini (pgbench_compare.PgBouncer): no log line per login
                cfg["sluice"].update(log_connections=False, log_disconnections=False)
                binary = harness.sluice_bin()
                for _ in range(120):  # the lead may be relinking it right now
                    if binary.exists():
                        break
                    log(f"{binary} missing; waiting")
                    time.sleep(5)
                p = Sluice(cfg, users={USER: PASSWORD, ADMIN: ADMIN_PW}, base=base)
                started.append(p)
                p.start()
                result["sluice_config"] = p.config_path.read_text()
                result["sluice_bin"] = str(binary)
            else:
                p = PgBouncer(base, pg, a.pool_size, max_client_conn)
                started.append(p)
                p.start()
                result["pgbouncer_ini"] = p.ini.read_text()
            try:
                r = run_target(name, p.port, p.proc.pid, a, n)
            except Exception as e:
                log(f"{name}: FAILED: {type(e).__name__}: {e}")
                r = {"target": name, "clients": 0, "errors": 1,
                     "error_samples": [f"{type(e).__name__}: {e}"]}
            if p.proc.poll() is not None:
                r["errors"] = r.get("errors", 0) + 1
                r.setdefault("error_samples", []).append(
                    f"{name} exited with code {p.proc.returncode}")
            p.stop()
            if name == "sluice":
                r["problems"] = p.problems()
            result["results"][name] = r
            rows.append(r)

        result["load_avg_end"] = os.getloadavg()
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")

        # -- table
        clamp = f" (asked {a.clients}, clamped by the fd limit)" if n < a.clients else ""
        print()
        print(f"idle authenticated clients: {n}{clamp}; transaction mode, default_pool_size "
              f"{a.pool_size}, SCRAM-SHA-256, one SELECT 1 each")
        ext = "extrap." if n < TARGET_CLIENTS else "measured"
        print(f"{'target':10s} {'clients':>8s} {'errors':>6s} {'RSS before':>10s} "
              f"{'RSS after':>10s} {'KiB/client':>10s} {'RSS@100k':>12s}  targets")
        print(f"{'':10s} {'':>8s} {'':>6s} {'MiB':>10s} {'MiB':>10s} {'':>10s} "
              f"{'MiB ' + ext:>12s}  (<=1.0 KiB/client; <=200 MB at 100k)")
        all_met = True
        for r in rows:
            kpc = r.get("kib_per_client")
            at = r.get("rss_at_100k_kib")
            met1 = kpc is not None and kpc <= TARGET_KIB_PER_CLIENT
            met2 = at is not None and at <= TARGET_RSS_KIB
            clean = r.get("errors", 1) == 0 and r.get("clients", 0) == n
            verdict = (f"{'met' if met1 else 'NOT met'}; {'met' if met2 else 'NOT met'}"
                       + ("" if clean else "; ERRORS"))
            r["targets_met"] = {"kib_per_client": met1, "rss_at_100k": met2, "no_errors": clean}
            if r["target"] == "sluice":
                all_met = all_met and met1 and met2 and clean
            print(f"{r['target']:10s} {r.get('clients', 0):>8d} {r.get('errors', 0):>6d} "
                  f"{mib(r.get('rss_before_kib')):>10s} {mib(r.get('rss_after_kib')):>10s} "
                  f"{'-' if kpc is None else f'{kpc:.3f}':>10s} {mib(at):>12s}  {verdict}")
        for r in rows:
            if r.get("error_samples"):
                print(f"{r['target']} errors {r.get('error_kinds', {})}: "
                      + "; ".join(r["error_samples"][:3]))
        if n < TARGET_CLIENTS:
            print(f"RSS@100k is EXTRAPOLATED: rss_before + KiB/client x {TARGET_CLIENTS} "
                  f"(measured at {n} clients). 200 MB = {TARGET_RSS_KIB} KiB = "
                  f"{TARGET_RSS_KIB / 1024:.1f} MiB.")
        for x in notes:
            print("note:", x)
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"JSON written to {a.json}")
        bad = any(r.get("errors", 1) or r.get("clients", 0) != n for r in rows)
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
