"""The run directory: where an executor keeps its logs, scripts, keys and connection file.

::

    runinfo/000/                      run_dir, numbered as Parsl numbers its runs
        <label>/                      0700: the run's user's alone
            connection.json           0600: how hand-started pools and `htex status` find the interchange
            certs/                    CurveZMQ keys (security.py)
            interchange.log, submit_scripts/, block-<id>/<manager>/manager.log
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

CONNECTION_FILE = "connection.json"


def next_run_dir(base: str = "runinfo") -> str:
    """runinfo/000, runinfo/001, ...: the first free number (made here, so two runs never share one)."""
    os.makedirs(base, exist_ok=True)
    taken = [int(d) for d in os.listdir(base) if d.isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        path = os.path.join(base, f"{n:03d}")
        try:
            os.makedirs(path)
            return os.path.abspath(path)
        except FileExistsError:
            n += 1


def make_private_dir(path: str) -> None:
    """The label's directory: logs, scripts and keys are the run's user's alone."""
    os.makedirs(path, mode=0o700, exist_ok=True)


@dataclass(frozen=True)
class ConnectionInfo:
    """What connection.json says: written by the executor at start, read by `htex pool` and `htex status`."""

    label: str
    addresses: list[str]
    task_port: int  # 0: the executor listens on no TCP port (an unencrypted run on this host)
    result_port: int
    heartbeat_period: float = 30.0
    heartbeat_threshold: float = 120.0
    interchange_pid: int | None = None
    client_pid: int | None = None
    ipc_dir: str | None = None
    ipc_tasks: str | None = None  # the interchange's UNIX task socket, for `htex status` on this host
    cert_dir: str | None = None  # where the keys are, when not <label dir>/certs
    extra: dict[str, object] = field(default_factory=dict)  # keys this version does not know

    def write(self, label_dir: str) -> str:
        path = os.path.join(label_dir, CONNECTION_FILE)
        fields = dataclasses.asdict(self)
        fields.update(fields.pop("extra"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(fields, f, indent=1)
        return path

    @classmethod
    def read(cls, path: str) -> ConnectionInfo:
        """Raises ValueError saying what is wrong (unreadable, not JSON, a field missing or mistyped)."""
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            info = cls(**{k: v for k, v in raw.items() if k in known},
                       extra={k: v for k, v in raw.items() if k not in known})
        except TypeError as exc:
            raise ValueError(f"{path} is incomplete: {exc}") from None
        if not isinstance(info.addresses, list) or not isinstance(info.task_port, int):
            raise ValueError(f"{path}: addresses must be a list and task_port a number")
        return info
