"""A private sshd on 127.0.0.1 with a test user, for the ssh benchmarks
(the same servers as the tests: tests/servers/sshd.py)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import CACHE, FIXTURE_NAME  # noqa: E402
from servers.sshd import SSHD, TestUsers, User  # noqa: E402


@dataclass
class Lab:
    """The running server, its user (with an ed25519 key), a directory the user owns."""

    work: Path
    server: SSHD
    user: User
    key: str
    dest: Path
    known_hosts: Path


def fixture_vmcore() -> Path:
    """The decompressed fixture vmcore; exits with a message when the tests have not made it yet."""
    if os.geteuid() != 0:
        sys.exit("run as root (creates a Unix user and runs sshd)")
    vmcore = CACHE / f"{FIXTURE_NAME}.elf"
    if not vmcore.exists():
        sys.exit(f"{vmcore} missing: run the tests once (fixture_vmcore decompresses it)")
    return vmcore


@contextlib.contextmanager
def ssh_lab(prefix: str) -> Iterator[Lab]:
    """Start the server; stop it and remove the user and every file afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)
    users = TestUsers(work)
    users.create()
    server = SSHD(work / "sshd", users.names, sftp=True).start()
    try:
        user = users.key_user
        assert user is not None and user.keys is not None
        yield Lab(work, server, user, str(user.keys["ed25519"]), user.make_dir(work, "dest"),
                  server.write_known_hosts(work / "known_hosts"))
    finally:
        server.stop()
        users.remove()
        subprocess.run(["rm", "-rf", "--", str(work)], check=False)
