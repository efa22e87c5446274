"""Real servers on 127.0.0.1 for the transport tests, started with their own
configuration, keys and unprivileged ports."""
