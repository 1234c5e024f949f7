"""Start ``mseg serve`` as a child process and wait until it is ready: what the load benchmark and the tests do.

A service is only tested as users run it when it runs as its own process, on a real socket. ``--port 0`` lets the
server take a free port; it prints its address on stderr (``mseg serve: http://HOST:PORT/ ...``), which
:func:`start_server` reads, then it polls ``/readyz``. The rest of stderr keeps being read on a thread (so that the
pipe never fills and blocks the server) and its last lines are kept for the message of a failure. Standard library
only: the caller needs no HTTP client.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_ADDRESS = re.compile(r"^mseg serve: (http://\S+?)/? ")


@dataclass
class ServerProcess:
    """A running ``mseg serve``: its process, its base URL (no trailing slash) and the last lines of its stderr."""

    process: subprocess.Popen
    url: str = ""
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return "\n".join(self.log)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL after ``timeout``; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as when the machine or an operator kills the server."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def start_server(
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    headers: Mapping[str, str] | None = None,
) -> ServerProcess:
    """``python -m mseg_semantic serve ARGS`` (add ``--port 0`` for any free port), returned once ``/readyz``
    answers 200 (``headers``: sent with the polls); a RuntimeError with the server's stderr if it exits first or
    is not ready within ``timeout`` seconds."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mseg_semantic", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
    )
    server = ServerProcess(process)
    found = threading.Event()
    threading.Thread(target=_read_stderr, args=(server, found), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not found.wait(0.05):
            _check_alive(server, deadline, "print its address")
        wait_ready(server, deadline, headers or {})
    except BaseException:
        server.kill()
        raise
    return server


def _read_stderr(server: ServerProcess, found: threading.Event) -> None:
    assert server.process.stderr is not None
    for line in server.process.stderr:
        server.log.append(line.rstrip("\n"))
        match = _ADDRESS.match(line)
        if match and not found.is_set():
            server.url = match.group(1)
            found.set()


def _check_alive(server: ServerProcess, deadline: float, what: str) -> None:
    if server.process.poll() is not None:
        time.sleep(0.2)  # the last lines of stderr
        raise RuntimeError(f"mseg serve exited with status {server.process.returncode}:\n{server.output()}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"mseg serve did not {what} in time:\n{server.output()}")


def wait_ready(server: ServerProcess, deadline: float, headers: Mapping[str, str]) -> None:
    """Poll ``/readyz`` until it answers 200."""
    request = urllib.request.Request(server.url + "/readyz", headers=dict(headers))
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            pass
        _check_alive(server, deadline, "become ready")
        time.sleep(0.1)


def child_env(pythonpath: str | os.PathLike | None = None, **extra: str) -> dict[str, str]:
    """This process's environment with ``pythonpath`` first on PYTHONPATH (a checkout not installed) and ``extra``."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return {**env, **extra}
