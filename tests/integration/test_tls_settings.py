"""The TLS tuning settings do what they say: protocols, cipher lists, TLS 1.3 suites,
ECDH groups and DH parameters, on the client side (checked with Python's ssl and
`openssl s_client -starttls postgres`) and on the server side (checked in SHOW SERVERS and
PostgreSQL's pg_stat_ssl); values OpenSSL cannot use fail `sluice --check`."""
from __future__ import annotations

import socket
import ssl
import struct
import subprocess

import psycopg
import pytest

import harness
from conftest import ADMIN_PW, APP_PW


@pytest.fixture(scope="module")
def ca():
    ca = harness.CertAuthority(harness.make_tempdir("sluice-tls-settings-"), "TLS Settings CA")
    ca.sluice = ca.leaf("sluice", "sluice", "DNS:localhost,IP:127.0.0.1")
    ca.postgres = ca.leaf("postgres", "postgres", "DNS:localhost,IP:127.0.0.1")
    return ca


@pytest.fixture(scope="module")
def tls_pg(ca, workdir):
    pg = harness.Postgres(base=harness.make_tempdir("sluice-tls-settings-pg-"), extra_conf={
        "ssl": "on", "ssl_cert_file": f"'{ca.postgres.crt}'", "ssl_key_file": f"'{ca.postgres.key}'"})
    pg.start()
    pg.create_role("app", APP_PW)
    pg.create_database("app", owner="app")
    try:
        yield pg
    finally:
        pg.stop("fast")


def client_tls(ca, **extra):
    settings = {"client_tls_sslmode": "require", "client_tls_cert_file": str(ca.sluice.crt),
                "client_tls_key_file": str(ca.sluice.key)}
    settings.update(extra)
    return settings


def handshake(s, ca, min_version=None, max_version=None, ciphers=None):
    """SSLRequest, then a TLS handshake from Python; returns (version, cipher name)."""
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=harness.DEADLINE)
    try:
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"S"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(ca.crt))
        if min_version:
            ctx.minimum_version = min_version
        if max_version:
            ctx.maximum_version = max_version
        if ciphers:
            ctx.set_ciphers(ciphers)
        with ctx.wrap_socket(sock, server_hostname="localhost") as t:
            return t.version(), t.cipher()[0]
    finally:
        sock.close()


def s_client(s, ca, *args: str) -> str:
    r = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect",
                        f"127.0.0.1:{s.port}", "-CAfile", str(ca.crt), *args],
                       input="", capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def test_default_protocols_negotiate_tls13(make_sluice, ca):
    s = make_sluice(**client_tls(ca))
    assert handshake(s, ca)[0] == "TLSv1.3"
    # "secure" means TLS 1.2 and 1.3: a TLS 1.1 client is refused.
    with pytest.raises(ssl.SSLError):
        handshake(s, ca, max_version=ssl.TLSVersion.TLSv1_1)


def test_client_tls_protocols_limits_the_version(make_sluice, ca):
    s = make_sluice(**client_tls(ca, client_tls_protocols="tlsv1.2"))
    assert handshake(s, ca)[0] == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        handshake(s, ca, min_version=ssl.TLSVersion.TLSv1_3)


def test_client_tls13_ciphers_picks_the_suite(make_sluice, ca):
    s = make_sluice(**client_tls(ca, client_tls13_ciphers="TLS_CHACHA20_POLY1305_SHA256"))
    assert handshake(s, ca) == ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")


def test_client_tls_ciphers_picks_the_tls12_cipher(make_sluice, ca):
    s = make_sluice(**client_tls(ca, client_tls_protocols="tlsv1.2",
                                 client_tls_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert handshake(s, ca) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    # A client that offers only other ciphers cannot connect.
    with pytest.raises(ssl.SSLError):
        handshake(s, ca, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")


def test_client_tls_ecdhcurve_picks_the_group(make_sluice, ca):
    s = make_sluice(**client_tls(ca, client_tls_ecdhcurve="secp384r1"))
    out = s_client(s, ca, "-groups", "X25519:secp384r1")
    assert "secp384r1" in out and "Cipher is TLS_" in out, out[-2000:]
    # A client that offers only X25519 shares no group with it: no cipher was agreed.
    out = s_client(s, ca, "-groups", "X25519")
    assert "Cipher is (NONE)" in out, out[-2000:]
    assert harness.wait_for(lambda: "no suitable key share" in s.log_text())


def test_client_tls_dheparams_values(make_sluice, ca):
    for value in ("auto", "none"):
        s = make_sluice(**client_tls(ca, client_tls_dheparams=value))
        assert handshake(s, ca)[0] == "TLSv1.3"
        s.stop()


@pytest.mark.parametrize("setting,value,words", [
    ("client_tls_protocols", "tlsv9", "client_tls_protocols"),
    ("client_tls_ciphers", "NO-SUCH-CIPHER", "client_tls_ciphers"),
    ("client_tls13_ciphers", "TLS_NO_SUCH", "client_tls13_ciphers"),
    ("client_tls_ecdhcurve", "nosuchcurve", "client_tls_ecdhcurve"),
    ("client_tls_dheparams", "legacy", "client_tls_dheparams"),
    ("server_tls_protocols", "sslv3", "server_tls_protocols"),
    ("server_tls_ciphers", "NO-SUCH-CIPHER", "server_tls_ciphers"),
    ("server_tls13_ciphers", "TLS_NO_SUCH", "server_tls13_ciphers"),
])
def test_check_refuses_values_openssl_cannot_use(make_sluice, ca, setting, value, words):
    general = client_tls(ca, server_tls_sslmode="require")
    general[setting] = value
    s = make_sluice(start=False, **general)
    r = subprocess.run([str(harness.sluice_bin()), "--check", str(s.config_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert words in r.stderr, r.stderr


def server_tls_of_app(s) -> list:
    with psycopg.connect(s.dsn("admin", ADMIN_PW, "sluice", sslmode="prefer"), autocommit=True,
                         prepare_threshold=None) as con:
        cur = con.execute("SHOW SERVERS")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r))["tls"] for r in cur.fetchall()
                if dict(zip(cols, r))["user"] == "app"]


def pg_ssl_of_app(pg) -> list:
    return pg.psql("SELECT s.version || '/' || s.cipher FROM pg_stat_ssl s JOIN pg_stat_activity a "
                   "USING (pid) WHERE a.usename = 'app' AND s.ssl").splitlines()


@pytest.mark.parametrize("general,version,cipher", [
    ({"server_tls_protocols": "tlsv1.2"}, "TLSv1.2", None),
    ({"server_tls13_ciphers": "TLS_CHACHA20_POLY1305_SHA256"}, "TLSv1.3",
     "TLS_CHACHA20_POLY1305_SHA256"),
    ({"server_tls_protocols": "tlsv1.2", "server_tls_ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"},
     "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"),
])
def test_server_tls_settings_reach_postgres(make_sluice, tls_pg, ca, general, version, cipher):
    s = make_sluice(server_tls_sslmode="verify-full", server_tls_ca_file=str(ca.crt),
                    config={"databases": {"app": {"host": "localhost", "port": tls_pg.port}}},
                    **general)
    with psycopg.connect(s.dsn("app", APP_PW, "app"), autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
        tls = server_tls_of_app(s)
        assert tls and all(t and t.startswith(version) for t in tls), tls
        seen = pg_ssl_of_app(tls_pg)
        assert seen and all(x.startswith(version) for x in seen), seen
        if cipher:
            assert all(t.endswith("/" + cipher) for t in tls), tls
            assert all(x.endswith("/" + cipher) for x in seen), seen


def console(s):
    return psycopg.connect(s.dsn("admin", ADMIN_PW, "sluice", sslmode="prefer"), autocommit=True,
                           prepare_threshold=None)


def test_console_set_changes_tls_for_new_handshakes(make_sluice, ca):
    s = make_sluice(**client_tls(ca))
    assert handshake(s, ca)[0] == "TLSv1.3"
    with console(s) as con:
        con.execute("SET client_tls_protocols = 'tlsv1.2'")
        # A value OpenSSL cannot use is refused and changes nothing.
        with pytest.raises(psycopg.Error) as e:
            con.execute("SET client_tls_ciphers = 'NO-SUCH-CIPHER'")
        assert e.value.sqlstate == "22023"
        assert "client_tls_ciphers" in str(e.value)
    assert handshake(s, ca)[0] == "TLSv1.2"


def test_tls_servers_shared_by_clients_on_both_workers(make_sluice, tls_pg, ca):
    # Transaction mode, two workers, two servers for twenty clients: servers are handed to
    # clients on the other worker too, TLS session and all.
    import threading
    s = make_sluice(workers=2, pool_mode="transaction", default_pool_size=2,
                    server_tls_sslmode="verify-full", server_tls_ca_file=str(ca.crt),
                    config={"databases": {"app": {"host": "localhost", "port": tls_pg.port}}},
                    **client_tls(ca))
    errors, done = [], []

    def work(i):
        try:
            with psycopg.connect(s.dsn("app", APP_PW, "app", sslmode="require"),
                                 autocommit=True) as c:
                for k in range(50):
                    assert c.execute("SELECT %s::int + 1", (k,)).fetchone()[0] == k + 1
            done.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=harness.DEADLINE)
    assert not errors, errors[:3]
    assert len(done) == 20
    tls = server_tls_of_app(s)
    assert 1 <= len(tls) <= 2 and all(t and t.startswith("TLSv1.3") for t in tls), tls
    assert pg_ssl_of_app(tls_pg)


def test_reload_with_an_unusable_key_keeps_the_running_tls(make_sluice, ca, tmp_path):
    s = make_sluice(**client_tls(ca))
    assert handshake(s, ca)[0] == "TLSv1.3"
    (tmp_path / "empty.key").write_text("")
    s.update(client_tls_key_file=str(tmp_path / "empty.key"))
    with console(s) as con:
        with pytest.raises(psycopg.Error) as e:
            con.execute("RELOAD")
        assert e.value.sqlstate == "F0000"
    assert harness.wait_for(lambda: "client_tls_key_file" in s.log_text())
    assert handshake(s, ca)[0] == "TLSv1.3"  # still the old certificate and key
