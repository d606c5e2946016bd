"""``Monitoring``: what the user asks for (``HighThroughputExecutor(monitoring=Monitoring(...))``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError

__all__ = ["Monitoring"]


@dataclass(frozen=True)
class Monitoring:
    """Monitoring options; ``monitoring=True`` is ``Monitoring()``.

    * ``url``: the store, a SQLAlchemy URL (``postgresql+psycopg://user:pw@host/db``) or a file path;
      None: ``<run_dir>/monitoring.db`` (SQLite).
    * ``hub_address``, ``hub_port``: where the hub listens on TCP (the spec's ``hub_address`` and
      ``hub_port``); None: the executor's own address, a free port.  With ``start_hub=False``, the
      address of a hub that runs already (``python -m htex.monitoring.hub``); ``hub_cert_dir`` holds
      its keys if it is encrypted.
    * ``resource_period``: seconds between CPU and memory samples of every worker.
    * ``flush_period``: seconds between two batches of events from one process.
    * ``dashboard``: serve the dashboard while the run goes (see the README's Dashboard section).
    """

    url: str | None = None
    hub_address: str | None = None
    hub_port: int | None = None
    start_hub: bool = True
    hub_cert_dir: str | None = None
    resource_period: float = 10.0
    flush_period: float = 0.25
    dashboard: bool = False

    def __post_init__(self) -> None:
        if not self.resource_period > 0:
            raise ConfigurationError(f"Monitoring.resource_period must be > 0 s, got {self.resource_period}")
        if not self.flush_period > 0:
            raise ConfigurationError(f"Monitoring.flush_period must be > 0 s, got {self.flush_period}")
        if not self.start_hub and (not self.hub_address or not self.hub_port):
            raise ConfigurationError("Monitoring(start_hub=False) connects to a running hub: give its hub_address "
                                     "and hub_port")
        if self.hub_port is not None and not 0 < self.hub_port < 65536:
            raise ConfigurationError(f"Monitoring.hub_port must be a TCP port, got {self.hub_port}")

    @classmethod
    def of(cls, value: bool | Monitoring | None) -> Monitoring | None:
        """The executor's ``monitoring`` argument as options: None when off."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Monitoring):
            return value
        raise ConfigurationError(f"monitoring must be True, False or htex.Monitoring(...), got {type(value).__name__}")
