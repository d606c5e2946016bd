"""Providers: blocks of nodes from a resource manager, each behind three verbs (see base.py)."""

from .aws import AWSProvider, EC2Provider
from .base import ExecutionProvider, JobState, JobStatus
from .cluster import ClusterProvider
from .cobalt import CobaltProvider
from .condor import CondorProvider
from .gridengine import GridEngineProvider
from .local import LocalProvider
from .lsf import LSFProvider
from .pbspro import PBSProProvider
from .slurm import SlurmProvider
from .torque import TorqueProvider

__all__ = [
    "AWSProvider",
    "ClusterProvider",
    "CobaltProvider",
    "CondorProvider",
    "EC2Provider",
    "ExecutionProvider",
    "GridEngineProvider",
    "JobState",
    "JobStatus",
    "LSFProvider",
    "LocalProvider",
    "PBSProProvider",
    "SlurmProvider",
    "TorqueProvider",
]
