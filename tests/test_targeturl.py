"""KDUMP_SAVEDIR URLs: schemes, aliases, credentials, IPv6, paths, masking, errors."""
from __future__ import annotations

import pytest

from capture.errors import URLError
from capture.config.targeturl import parse


@pytest.mark.parametrize("text,scheme,host,port,user,password,path", [
    ("/var/crash", "file", "", None, "", "", "/var/crash"),
    ("/var/crash/", "file", "", None, "", "", "/var/crash"),
    ("file:///var/crash", "file", "", None, "", "", "/var/crash"),
    ("FILE:///var/my%20dumps", "file", "", None, "", "", "/var/my dumps"),
    ("ftp://dumps.example/srv", "ftp", "dumps.example", None, "", "", "/srv"),
    ("ftp://anna:s%40cret%2Fx@host:2121/in/coming", "ftp", "host", 2121, "anna", "s@cret/x", "/in/coming"),
    ("ftps://u:p@host/x", "ftps", "host", None, "u", "p", "/x"),
    ("sftp://root@[::1]:2222/var/crash", "sftp", "::1", 2222, "root", "", "/var/crash"),
    ("scp://root@host/var/crash", "sftp", "host", None, "root", "", "/var/crash"),
    ("SSH://admin:pw@[2001:db8::5]/dumps", "ssh", "2001:db8::5", None, "admin", "pw", "/dumps"),
    ("nfs://filer/export/dumps", "nfs", "filer", None, "", "", "/export/dumps"),
    ("cifs://DOM%3Buser:pw@server/share/a%20b", "cifs", "server", None, "DOM;user", "pw", "/share/a b"),
    ("smb://server/share", "cifs", "server", None, "", "", "/share"),
    ("sftp://h/dir%20with%20%27quotes%27%20and%20%24%28x%29", "sftp", "h", None, "", "", "/dir with 'quotes' and $(x)"),
])
def test_parse(text, scheme, host, port, user, password, path):
    url = parse(text)
    assert (url.scheme, url.host, url.port, url.user, url.password, url.path) == \
        (scheme, host, port, user, password, path)
    assert url.is_remote == (scheme != "file")


def test_masked_form_hides_the_password_everywhere():
    url = parse("sftp://root:hunter2@[::1]:2222/var/crash")
    assert url.masked() == "sftp://root:***@[::1]:2222/var/crash"
    assert "hunter2" not in str(url) and "hunter2" not in repr(url)
    assert parse("ftp://host/x").masked() == "ftp://host/x"
    assert parse("/var/crash").masked() == "/var/crash"


def test_default_ports():
    assert parse("sftp://h/x").effective_port == 22
    assert parse("cifs://h/s").effective_port == 445
    assert parse("ftp://h:2121/x").effective_port == 2121


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("var/crash", "neither an absolute path nor a URL"),
    ("gopher://h/x", "unknown scheme 'gopher'"),
    ("sftp:///x", "needs a host"),
    ("ftp://h:99999/x", "port must be a number"),
    ("ftp://h:0/x", "port 0"),
    ("ssh://fe80::1/x", "port must be a number"),
    ("ssh://[nothost]/x", "host is malformed"),
    ("cifs://server", "needs a share"),
    ("nfs://u@filer/x", "no user"),
    ("file://otherhost/x", "take no host"),
    ("sftp://h/a/../etc", "'..' is not allowed"),
    ("ftp://h/x?y", "must be percent-encoded"),
])
def test_bad_urls_are_clear_errors(text, message):
    with pytest.raises(URLError) as err:
        parse(text)
    assert message in str(err.value)


@pytest.mark.parametrize("text", [
    "ftp://u:zqk/wvy@host/x", "ftp://u:zqk#wvy@host/x", "sftp://root:hunter2@[::1/x", "ftp://u:hunter2@h:99999/x",
])
def test_errors_never_show_the_password(text):
    secret = text.split("://")[1].split("@")[0].split(":", 1)[1]
    with pytest.raises(URLError) as err:
        parse(text)
    for piece in {secret, secret.split("/")[0], secret.split("#")[0]}:
        assert piece not in str(err.value).replace("***", "")
