"""The Debian package (packaging/): built with CPack from this build, installed with dpkg -i
on this machine, its files checked, the unit verified, the installed binary run as the
unit runs it (user sluice, Type=notify), then dpkg -r (only the conffiles stay) and
dpkg -P (nothing stays but the system user, as Debian does).

Root only, and only where no sluice package is installed already (it would be replaced):
CI runs as root in a throwaway machine."""
from __future__ import annotations

import gzip
import os
import pwd
import grp
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

import harness
from harness import DEADLINE, wait_for

BUILD = harness.REPO_ROOT / "build"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dpkg -i needs root"),
    pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("cpack") is None,
                       reason="needs dpkg and cpack"),
    pytest.mark.timeout(600),
]

PACKAGE_FILES = ["/usr/bin/sluice", "/etc/sluice/sluice.yaml", "/etc/sluice/userlist.txt",
                 "/etc/logrotate.d/sluice", "/lib/systemd/system/sluice.service",
                 "/usr/share/man/man1/sluice.1.gz", "/usr/share/doc/sluice/config.md"]
CONFFILES = ["/etc/sluice/sluice.yaml", "/etc/sluice/userlist.txt", "/etc/logrotate.d/sluice"]


def run(*argv, check=True, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert r.returncode == 0, f"{argv}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def package_status() -> str:
    r = run("dpkg-query", "-W", "-f=${Status}", "sluice", check=False)
    return r.stdout if r.returncode == 0 else ""


@pytest.fixture
def deb(tmp_path):
    if package_status().endswith("installed") or package_status().endswith("config-files"):
        pytest.skip("a sluice package is already on this machine; it is not replaced")
    if not (BUILD / "CPackConfig.cmake").exists():
        pytest.skip("build/ was not configured by CMake")
    had_user = True
    try:
        pwd.getpwnam("sluice")
    except KeyError:
        had_user = False
    # cpack installs this build (the binary the other tests ran) into a staging tree.
    run("cmake", "--build", BUILD, "--target", "sluice", "man")
    run("cpack", "--config", BUILD / "CPackConfig.cmake", "-B", tmp_path)
    debs = list(tmp_path.glob("sluice_*.deb"))
    assert len(debs) == 1, list(tmp_path.iterdir())
    try:
        yield debs[0]
    finally:
        if package_status():
            run("dpkg", "-P", "sluice", check=False)
        if not had_user:
            run("userdel", "sluice", check=False)


def test_deb_installs_runs_and_removes_cleanly(deb, tmp_path):
    listed = run("dpkg-deb", "-c", deb).stdout
    for f in PACKAGE_FILES:
        assert "." + f in listed, f
    control = run("dpkg-deb", "-f", deb, "Package", "Depends").stdout
    assert "Package: sluice" in control and "libssl3" in control, control

    run("dpkg", "-i", deb)
    assert package_status() == "install ok installed"
    for f in PACKAGE_FILES:
        assert Path(f).exists(), f
    assert os.access("/usr/bin/sluice", os.X_OK)
    version = run("/usr/bin/sluice", "--version").stdout.splitlines()[0]
    assert version == run(harness.sluice_bin(), "--version").stdout.splitlines()[0]
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "sluice").stdout
    for f in CONFFILES:
        assert f in conffiles, conffiles

    # What postinst made: the system user, its log directory, a userlist it alone reads.
    user = pwd.getpwnam("sluice")
    assert user.pw_shell.endswith("nologin")
    log_dir = os.stat("/var/log/sluice")
    assert log_dir.st_uid == user.pw_uid and stat.S_IMODE(log_dir.st_mode) == 0o750
    ul = os.stat("/etc/sluice/userlist.txt")
    assert ul.st_gid == grp.getgrnam("sluice").gr_gid and stat.S_IMODE(ul.st_mode) == 0o640

    # The man page: help2man's options and the settings from the table.
    man = gzip.decompress(Path("/usr/share/man/man1/sluice.1.gz").read_bytes()).decode()
    assert ".SH SETTINGS" in man and ".B pool_mode" in man and "\\-\\-daemon" in man

    unit = Path("/lib/systemd/system/sluice.service").read_text()
    for line in ["Type=notify", "User=sluice", "ExecReload=/bin/kill -HUP $MAINPID",
                 "KillSignal=SIGINT", "ExecStart=/usr/bin/sluice /etc/sluice/sluice.yaml"]:
        assert line in unit.splitlines(), line
    assert any(l.startswith("LimitNOFILE=") and int(l.split("=")[1]) >= 65536
               for l in unit.splitlines())
    if shutil.which("systemd-analyze"):
        r = run("systemd-analyze", "verify", "--man=no",
                "/lib/systemd/system/sluice.service", check=False)
        assert r.returncode == 0, r.stderr

    r = run("/usr/bin/sluice", "--check", "/etc/sluice/sluice.yaml")
    assert "configuration is valid" in r.stdout

    # Run as the unit runs it: user sluice, NOTIFY_SOCKET, stopped by SIGINT. The installed
    # configuration with only the port and the socket directory moved (6432 may be taken).
    home = Path(harness.make_tempdir("sluice-pkg-"))  # user sluice must reach it
    os.chmod(home, 0o755)
    cfg = home / "sluice.yaml"
    port = harness.free_port()
    text = Path("/etc/sluice/sluice.yaml").read_text()
    assert "listen_port: 6432" in text and "unix_socket_dir: /run/sluice" in text
    run_dir = home / "run"
    run_dir.mkdir()
    os.chown(run_dir, user.pw_uid, user.pw_gid)
    cfg.write_text(text.replace("listen_port: 6432", f"listen_port: {port}")
                   .replace("unix_socket_dir: /run/sluice", f"unix_socket_dir: {run_dir}"))
    os.chmod(cfg, 0o644)
    sock_path = home / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        os.chmod(sock_path, 0o777)
        sock.settimeout(DEADLINE)
        p = harness.spawn(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                           "--init-groups", "/usr/bin/sluice", cfg],
                          log_path=home / "service.log",
                          env={**os.environ, "NOTIFY_SOCKET": str(sock_path)})
        try:
            try:
                ready = sock.recv(4096).decode().splitlines()
            except TimeoutError:
                raise AssertionError("no READY=1: " + (home / "service.log").read_text())
            assert "READY=1" in ready, ready
            assert harness.wait_port(port, proc=p)
            p.send_signal(signal.SIGINT)
            assert sock.recv(4096).decode() == "STOPPING=1"
            assert p.wait(DEADLINE) == 0
        finally:
            if p.poll() is None:
                p.kill()

    run("dpkg", "-r", "sluice")
    assert package_status() == "deinstall ok config-files"
    for f in PACKAGE_FILES:
        assert Path(f).exists() == (f in CONFFILES), f
    run("dpkg", "-P", "sluice")
    assert package_status() in ("", "unknown ok not-installed")
    for f in CONFFILES + ["/var/log/sluice", "/etc/sluice"]:
        assert not Path(f).exists(), f
