"""Real servers on 127.0.0.1 for the transport tests, started with their own
configuration, keys and unprivileged ports.

Test modules load a server module's fixtures with ``pytest_plugins``; the
registration below lets pytest rewrite its asserts although the test modules
also import it directly.
"""
import pytest

pytest.register_assert_rewrite("servers.sshd")
