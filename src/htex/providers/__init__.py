"""Providers: blocks of nodes from a resource manager, each behind three verbs (see base.py).

The cloud providers (googlecloud, openstack, kubernetes) import their client library only when made.
"""

from .aws import AWSProvider, EC2Provider
from .base import ExecutionProvider, JobState, JobStatus
from .cluster import ClusterProvider
from .cobalt import CobaltProvider
from .condor import CondorProvider
from .googlecloud import GoogleCloudProvider
from .gridengine import GridEngineProvider
from .kubernetes import KubernetesProvider
from .local import LocalProvider
from .lsf import LSFProvider
from .openstack import JetstreamProvider, OpenStackProvider
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
    "GoogleCloudProvider",
    "GridEngineProvider",
    "JetstreamProvider",
    "JobState",
    "JobStatus",
    "KubernetesProvider",
    "LSFProvider",
    "LocalProvider",
    "OpenStackProvider",
    "PBSProProvider",
    "SlurmProvider",
    "TorqueProvider",
]
