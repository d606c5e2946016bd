"""Providers: blocks of nodes from a resource manager."""

from .base import ExecutionProvider, JobState, JobStatus
from .local import LocalProvider

__all__ = ["ExecutionProvider", "JobState", "JobStatus", "LocalProvider"]
