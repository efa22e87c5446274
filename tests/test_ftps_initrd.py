"""ftps in the capture initrd: the CA bundle it verifies the server against.

A capture initrd has no system certificate store, so an ftps target without
KDUMP_CA_FILE carries the host's bundle (what OpenSSL finds: SSL_CERT_FILE,
else its compiled-in cert.pem) to /etc/kdump-saver/ca-bundle.pem and the
initrd's configuration names that file; without a bundle on the host
build-initrd refuses.  The "system bundle" of these tests is the test CA,
given to OpenSSL through SSL_CERT_FILE: the machine's own store is never
touched.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from capture.config.options import Config
from capture.host import initrd as initrd_mod
from capture.save.sequence import save
from conftest import REPO, require, require_program, sha256_of
from servers.ftpd import FtpServer, TestCA
from test_initrd import PY, bind, build, kernel_version  # noqa: F401  (kernel_version: a fixture)
from transports.base import TransportError


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    require_program("openssl")
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def ftpsd(tmp_path_factory, ca):
    require(os.geteuid() == 0, "the ftps tests run vsftpd and create a test account: run as root")
    require_program("vsftpd")
    server = FtpServer(tmp_path_factory.mktemp("ftpsd"), tls_pem=ca.server_cert("server", "IP:127.0.0.1"))
    server.start()
    yield server
    server.remove()


def _only_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_plan_carries_the_system_bundle_and_names_it_in_the_initrd(ftpsd, ca, kernel_version, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    config = Config(savedir=ftpsd.url("/plan"), dumplevel=31)
    p = initrd_mod.plan(config, kernel_version)
    assert p.ca_bundle == str(ca.cert)
    assert p.initrd_config.ca_file == initrd_mod.CA_BUNDLE_PATH
    assert p.config.ca_file == ""
    assert p.stamp["files_sha256"][str(ca.cert)] == initrd_mod.file_sha256(str(ca.cert))
    initrd_mod.write_stage(p, tmp_path / "stage")
    assert (tmp_path / "stage" / "ca-bundle.pem").read_bytes() == ca.cert.read_bytes()
    assert f'KDUMP_CA_FILE="{initrd_mod.CA_BUNDLE_PATH}"' in (tmp_path / "stage" / "kdump.conf").read_text()


def test_a_set_ca_file_is_carried_as_it_is(ftpsd, ca, kernel_version, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/kdump-saver-test-bundle.pem")
    config = Config(savedir=ftpsd.url("/plan"), ca_file=str(ca.cert))
    p = initrd_mod.plan(config, kernel_version)
    assert str(ca.cert) in p.files
    assert p.ca_bundle == ""
    assert p.initrd_config.ca_file == str(ca.cert)


def _check(conf_text: str, tmp_path: Path, kernel: str, ssl_cert_file: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "kdump.conf"
    conf.write_text(conf_text)
    conf.chmod(0o600)
    return subprocess.run([PY, "-m", "capture.cli", "build-initrd", "--check", "--config", str(conf),
                           "--kernel", kernel], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SSL_CERT_FILE=ssl_cert_file))


def test_build_initrd_refuses_ftps_when_the_host_has_no_bundle(ftpsd, kernel_version, tmp_path):
    proc = _check(f'KDUMP_SAVEDIR="{ftpsd.url("/x")}"\n', tmp_path, kernel_version,
                  "/nonexistent/kdump-saver-test-bundle.pem")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no CA bundle" in proc.stderr and "set KDUMP_CA_FILE" in proc.stderr
    assert ftpsd.password not in proc.stderr


@pytest.mark.parametrize("content, why", [(b"", "no CA certificate"), (None, "cannot read")])
def test_build_initrd_refuses_an_unusable_bundle(ftpsd, ca, kernel_version, tmp_path, content, why):
    bad = tmp_path / "bad.pem"
    if content is not None:
        bad.write_bytes(content)
    # both as the system bundle and as KDUMP_CA_FILE
    proc = _check(f'KDUMP_SAVEDIR="{ftpsd.url("/x")}"\n', tmp_path, kernel_version, str(bad))
    if content is None:  # OpenSSL ignores a missing SSL_CERT_FILE: there is no bundle at all
        assert "no CA bundle" in proc.stderr, proc.stderr
    else:
        assert why in proc.stderr and "system CA bundle" in proc.stderr, proc.stderr
    assert proc.returncode == 1
    proc = _check(f'KDUMP_SAVEDIR="{ftpsd.url("/x")}"\nKDUMP_CA_FILE="{bad}"\n', tmp_path, kernel_version,
                  str(ca.cert))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"KDUMP_CA_FILE: " in proc.stderr and why in proc.stderr, proc.stderr


def test_save_verifies_against_exactly_the_carried_file(ftpsd, ca, kernel_version, tmp_path, fixture_vmcore,
                                                        monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    p = initrd_mod.plan(Config(savedir=ftpsd.url("/carried"), dumpformat="lzo", dumplevel=31), kernel_version)
    stage = tmp_path / "stage"
    initrd_mod.write_stage(p, stage)
    # the capture kernel's view: no SSL_CERT_FILE, the carried file as KDUMP_CA_FILE
    monkeypatch.delenv("SSL_CERT_FILE")
    carried = dataclasses.replace(p.initrd_config, ca_file=str(stage / "ca-bundle.pem"))
    result = save(carried, vmcore=str(fixture_vmcore))
    d = ftpsd.home / "carried" / result.directory
    assert "vmcore status: saved successfully" in (d / "README.txt").read_text()
    # a carried file without the test CA fails, whatever the process's default store holds
    other = TestCA(tmp_path / "other")
    (stage / "ca-bundle.pem").write_bytes(other.cert.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    with pytest.raises(TransportError, match="certificate does not verify.*ca-bundle.pem"):
        save(dataclasses.replace(carried, net_timeout=0), vmcore=str(fixture_vmcore))


def test_capture_initrd_saves_over_ftps_verified_by_the_carried_bundle(ftpsd, ca, kernel_version, tmp_path,
                                                                       fixture_vmcore, monkeypatch,
                                                                       reference_dumps, makedumpfile):
    """A real initrd, run in a chroot: it holds no OpenSSL default store
    (/usr/lib/ssl/cert.pem), only the carried bundle."""
    require_program("chroot")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    built = build(tmp_path, "ftps", f'KDUMP_SAVEDIR="{ftpsd.url("/chroot")}"\nKDUMP_DUMPFORMAT="lzo"\n'
                  f'KDUMP_DUMPLEVEL="31"\nKDUMP_NET_TIMEOUT="10"\n', kernel_version)
    assert built.initrd_config().ca_file == initrd_mod.CA_BUNDLE_PATH
    assert built.text(initrd_mod.CA_BUNDLE_PATH) == ca.cert.read_text()
    assert not built.has("usr/lib/ssl/cert.pem") and not built.has("etc/ssl/certs/ca-certificates.crt")
    with bind(fixture_vmcore, built.root / "vmcore"):
        proc = built.chroot("/usr/bin/kdump-saver", "save", "--vmcore", "/vmcore", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ftpsd.password not in proc.stdout + proc.stderr
    d = _only_dir(ftpsd.home / "chroot")
    rebuilt = tmp_path / "rebuilt"
    with open(d / "vmcore.flat", "rb") as src:
        subprocess.run([makedumpfile, "-R", str(rebuilt)], stdin=src, check=True, capture_output=True)
    assert sha256_of(rebuilt) == sha256_of(reference_dumps.direct("-l", 31))
