"""The script a cloud instance runs when it boots (EC2 user-data; any cloud's startup script).

A cloud instance shares no file system with the client, so everything its pool
needs travels in the script: ``worker_init``, the launch command, and, for an
encrypted executor, the pool's CurveZMQ keys.

Which keys, and why only those (see security.py for the roles):

* ``server.public``: the pool checks that it talks to *this* run's interchange;
* ``pool.public`` and ``pool.secret``: the interchange lets in only holders of
  the pool's secret.

Never ``server.secret``: whoever holds it could pose as the interchange to the
pools.  The pool's secret does travel, and user-data is readable by anyone
who may call the cloud's "describe instance attribute" on the account, and by
every process on the instance through the metadata service: such a reader can
register a pool and receive tasks.  That is the trust the instance's owner
already has (its root can read the pool's memory anyway); keys are made anew
for every run, so what leaks dies with the run.  The files are written with
umask 077 at the path the launch command names, so the command runs unchanged.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator

from ..errors import ConfigurationError, ProviderError
from ..launchers import Launcher

# The keys a pool needs (file names in the run's cert directory); the server's secret is not one of them.
POOL_KEY_FILES = ("server.public", "pool.public", "pool.secret")


def cert_dir_of(command: str) -> str | None:
    """The key directory a launch command names (``--cert_dir=DIR`` or ``HTEX_CERT_DIR=DIR``), or None.

    The command may wrap the pool in ``/bin/sh -c '...'`` (poolcmd's prologue): quoted words that hold a
    command are read too.
    """
    for word in _words(command):
        for prefix in ("--cert_dir=", "HTEX_CERT_DIR="):
            if word.startswith(prefix) and len(word) > len(prefix):
                return word[len(prefix):]
    return None


def _words(command: str, depth: int = 0) -> Iterator[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: not a command we wrote
        return
    for word in words:
        yield word
        if depth < 3 and any(c.isspace() for c in word):
            yield from _words(word, depth + 1)


def key_lines(cert_dir: str) -> list[str]:
    """Shell lines that recreate the pool's keys in ``cert_dir`` on the instance (0700 directory, 0600 files)."""
    lines = ["umask 077", f"mkdir -p {shlex.quote(cert_dir)}"]
    for name in POOL_KEY_FILES:
        path = os.path.join(cert_dir, name)
        try:
            with open(path) as f:
                key = f.read().strip()
        except OSError as exc:
            raise ProviderError(f"cannot read the pool's key {path} to put it in the instance's user-data: {exc}") from exc
        # Z85 text (no quote, no backslash), quoted all the same.
        lines.append(f"printf '%s\\n' {shlex.quote(key)} > {shlex.quote(path)}")
    lines.append("umask 022")
    return lines


def boot_script(
    command: str, *, worker_init: str, launcher: Launcher, tasks_per_node: int, job_name: str,
    halt_after: bool, walltime_seconds: int | None,
) -> str:
    """The whole script: keys, a walltime watchdog, ``worker_init``, the pool, then (``halt_after``) power off.

    With ``halt_after`` the instance shuts itself down when its pool ends, and at the latest after
    ``walltime_seconds``: a provider that asks the cloud to *terminate* on an instance-initiated shutdown
    pays for no idle machine.  Every instance runs its own pool (no launcher spans instances).
    """
    lines = ["#!/bin/bash", f"# htex block {job_name}: the pool's keys, worker_init, the pool"]
    cert_dir = cert_dir_of(command)
    if cert_dir:
        lines += key_lines(cert_dir)
    if halt_after and walltime_seconds:
        lines.append(f"( sleep {int(walltime_seconds)}; shutdown -h now ) >/dev/null 2>&1 &")
    lines += [worker_init, launcher(command, tasks_per_node, 1).rstrip("\n")]
    if halt_after:
        lines.append("shutdown -h now")
    return "\n".join(lines) + "\n"


def walltime_seconds(walltime: str) -> int:
    """``HH:MM:SS`` (or ``MM:SS``, ``SS``) in seconds."""
    try:
        parts = [int(p) for p in walltime.split(":")]
    except ValueError:
        raise ConfigurationError(f"walltime {walltime!r} is not HH:MM:SS") from None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds
