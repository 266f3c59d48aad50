"""What the tests share: process management, real-client drivers, waiting, ports, metrics, fixtures.

Test modules import helpers from here, never from each other (importing a ``test_*`` module into
another makes pytest collect its tests twice). Fixtures are in ``fixtures``, ``clientfixtures``
and ``kraken_images``, registered for the whole suite by tests/conftest.py: test modules use
them without importing them.

The real-client drivers (``docker``, ``containerd``, ``podman``, ``skopeo``, ``oras``,
``distribution``) start those clients (and a baseline distribution registry) by hand, in private
temporary directories, so that end-to-end tests and benchmarks can push and pull through any
registry at ``127.0.0.1:<port>`` without touching the machine's global state. Every driver:

* **Proxy trap.**  Every client and daemon gets ``process.PROXY_TRAP_ENV``: a request that would
  leave loopback (e.g. a fallback to Docker Hub) goes to a proxy at 127.0.0.1:9, which refuses
  at once, instead of reaching the internet.
* **No hard-coded registry.**  Every helper takes the registry host (``"127.0.0.1:5000"``) or a
  full reference as a parameter.
* **Errors carry stderr.**  A failing client command raises ``process.ClientError`` with the
  command line, exit code, stdout and stderr.
* **No sleeps as synchronisation.**  Readiness is polled with ``waiting.wait_until`` (condition
  + deadline).
* **Everything started is stopped by PID**, also on failure: classes are context managers,
  fixtures use ``yield`` + ``finally``, and an ``atexit`` hook stops whatever is still running
  when the interpreter exits.

This package imports nothing at its top, so ``python -m tests.support.ocigen`` stays light.
"""
