"""AWSProvider (alias EC2Provider): blocks of EC2 instances whose user-data starts the pools.

Optional: ``pip install 'htex[aws]'`` (boto3).  A block is ``nodes_per_block``
instances started by one RunInstances call (all or none: MinCount = MaxCount),
so its job id is the reservation id.  Each instance runs the user-data of
userdata.py: the pool's keys, ``worker_init``, its pool, then (unless
``linger``) a shutdown that terminates it.  The network it needs is made at the
first block and deleted by ``close()`` at shutdown (aws_network.py).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from typing import Any

from ..errors import ConfigurationError, ProviderError
from ..launchers import Launcher, SingleNodeLauncher
from . import userdata
from .aws_network import State, call, instances, wait_terminated
from .base import ExecutionProvider, JobState, JobStatus

log = logging.getLogger("htex.providers.aws")

# EC2 refuses user-data above 16 KiB (before base64).
USER_DATA_LIMIT = 16 * 1024
# How long close() waits for instances to be terminated before it can delete the network (EC2: 30-90 s).
TEARDOWN_SECONDS = 300.0
# Instance states whose pool runs (or soon will); every other state means the instance is gone or going.
_ALIVE = {"pending": JobState.PENDING, "running": JobState.RUNNING}


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ImportError(f"AWSProvider needs boto3, which is not installed here ({exc}): pip install 'htex[aws]'") from exc
    return boto3


class AWSProvider(ExecutionProvider):
    """Blocks on Amazon EC2, or on any cloud that speaks its API (``endpoint_url``).

    The parameters are Parsl's AWSProvider's, plus ``endpoint_url``,
    ``status_polling_interval`` and ``label``.  Credentials: ``key_file`` (a
    JSON file with ``AWSAccessKeyId`` and ``AWSSecretKey``, as Parsl's), else
    ``profile`` (from ~/.aws/config), else boto3's usual search (AWS_*
    variables, an instance role...).  ``key_name`` names an EC2 key pair for
    SSH to the instances (debugging); without it no port is open.
    ``walltime`` is enforced (unlike Parsl's): an instance powers itself off
    then, unless ``linger`` keeps it (and its bill) alive after its pool ends.
    ``state_file`` (JSON) records what was made: a later provider given the
    same file first deletes what an earlier client left behind.

    The executor must be reachable from the instances: give it ``address``
    (the client's public address) and open its worker ports to them.
    """

    remote = True

    def __init__(
        self, image_id: str, key_name: str | None = None, init_blocks: int = 1, min_blocks: int = 0,
        max_blocks: int = 10, nodes_per_block: int = 1, parallelism: float = 1, worker_init: str = "",
        instance_type: str = "t2.small", region: str = "us-east-2", spot_max_bid: float = 0,
        key_file: str | None = None, profile: str | None = None, iam_instance_profile_arn: str = "",
        state_file: str | None = None, walltime: str = "01:00:00", linger: bool = False,
        launcher: Launcher | None = None, endpoint_url: str | None = None, status_polling_interval: float = 15.0,
        cmd_timeout: int = 30, label: str = "ec2",
    ) -> None:
        boto3 = _boto3()
        self._configure(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher if launcher is not None else SingleNodeLauncher(debug=False), cmd_timeout=cmd_timeout,
        )
        if nodes_per_block < 1:
            raise ConfigurationError(f"nodes_per_block must be at least 1, got {nodes_per_block}")
        self._walltime = userdata.walltime_seconds(walltime)
        self.image_id, self.key_name, self.instance_type, self.region = image_id, key_name, instance_type, region
        self.spot_max_bid, self.iam_instance_profile_arn, self.linger = spot_max_bid, iam_instance_profile_arn, linger
        self.key_file, self.profile, self.endpoint_url = key_file, profile, endpoint_url
        self.state_file = os.path.abspath(state_file or "awsproviderstate.json")  # Parsl's default name, in the cwd
        self._polling = status_polling_interval
        from botocore.config import Config

        config = Config(connect_timeout=cmd_timeout, read_timeout=cmd_timeout, retries={"mode": "standard", "max_attempts": 3})
        self.ec2 = self._session(boto3).client("ec2", endpoint_url=endpoint_url, config=config)
        self._lock = threading.Lock()  # the state: submit may run in the poller and in the user's thread
        self._state = State(run=secrets.token_hex(6), region=region)
        self._cancelled: set[str] = set()
        self._ready = False

    def _session(self, boto3: Any) -> Any:
        if self.key_file:
            try:
                with open(os.path.expanduser(os.path.expandvars(self.key_file))) as f:
                    creds = json.load(f)
                keys = {"aws_access_key_id": creds["AWSAccessKeyId"], "aws_secret_access_key": creds["AWSSecretKey"]}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigurationError(
                    f"key_file {self.key_file} must be a JSON file with AWSAccessKeyId and AWSSecretKey: {exc}") from exc
            return boto3.session.Session(region_name=self.region, **keys)
        try:
            return boto3.session.Session(profile_name=self.profile, region_name=self.region)
        except Exception as exc:  # botocore's ProfileNotFound and kin
            raise ConfigurationError(f"cannot use AWS profile {self.profile!r}: {exc}") from exc

    @property
    def status_polling_interval(self) -> float:
        return self._polling

    # -- the three verbs -----------------------------------------------------------------

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        script = userdata.boot_script(
            command, worker_init=self.worker_init, launcher=self.launcher, tasks_per_node=tasks_per_node,
            job_name=job_name, halt_after=not self.linger, walltime_seconds=self._walltime,
        )
        if len(script.encode()) > USER_DATA_LIMIT:
            raise ProviderError(f"the user-data of {job_name} is {len(script.encode())} bytes, above EC2's 16 KiB; "
                                "shorten worker_init (install software from a script it downloads)")
        with self._lock:
            self._get_ready()
            try:
                reply = call("start instances", self.ec2.run_instances, **self._run_args(script, job_name))
            except ProviderError:
                self._undo_if_unused()
                raise
            job_id = reply["ReservationId"]
            self._state.jobs[job_id] = [i["InstanceId"] for i in reply["Instances"]]
            self._state.save(self.state_file)
        log.info("block %s: reservation %s, instances %s", job_name, job_id, self._state.jobs[job_id])
        return str(job_id)

    def _run_args(self, script: str, job_name: str) -> dict[str, Any]:
        tags = [{"Key": "Name", "Value": f"htex-{job_name}"}, {"Key": "htex:block", "Value": job_name}, *self._tags()]
        args: dict[str, Any] = {
            "ImageId": self.image_id, "InstanceType": self.instance_type, "UserData": script,
            "MinCount": self.nodes_per_block, "MaxCount": self.nodes_per_block,
            "SubnetId": self._state.network.subnet_id, "SecurityGroupIds": [self._state.network.group_id],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if self.key_name:
            args["KeyName"] = self.key_name
        if self.iam_instance_profile_arn:
            args["IamInstanceProfile"] = {"Arn": self.iam_instance_profile_arn}
        if self.spot_max_bid:
            args["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "MaxPrice": str(self.spot_max_bid), "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate"}}
        return args

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        if not job_ids:
            return []
        by_job: dict[str, list[dict[str, Any]]] = {}
        for inst in instances(self.ec2, self._state.run):
            by_job.setdefault(inst["ReservationId"], []).append(inst)
        return [self._job_status(j, by_job.get(j, [])) for j in job_ids]

    def _job_status(self, job_id: str, insts: list[dict[str, Any]]) -> JobStatus:
        if not insts:
            return JobStatus(JobState.MISSING, f"EC2 knows no instance of reservation {job_id}")
        states = [_ALIVE.get(i["State"]["Name"]) for i in insts]
        if JobState.RUNNING in states:
            return JobStatus(JobState.RUNNING)
        if JobState.PENDING in states:
            return JobStatus(JobState.PENDING)
        if job_id in self._cancelled:
            return JobStatus(JobState.CANCELLED, "terminated by cancel()")
        said = "; ".join(sorted(f"{i['InstanceId']} {i['State']['Name']}: {i.get('StateReason', {}).get('Message', '')}"
                                for i in insts))
        # Pools run until the executor stops them, and then it has cancelled their block: an instance gone
        # before that (its pool ended and it powered off, or it was terminated from outside, a spot
        # interruption...) is a failed block, which the executor counts against blocks that never start.
        return JobStatus(JobState.FAILED, f"{said} (its console: aws ec2 get-console-output --instance-id ...)")

    def cancel(self, job_ids: list[str]) -> list[bool]:
        with self._lock:
            known = [j for j in job_ids if j in self._state.jobs]
            ids = [i for j in known for i in self._state.jobs[j]]
            if ids:
                call("terminate instances", self.ec2.terminate_instances, InstanceIds=ids)
            self._cancelled.update(known)
        return [j in self._state.jobs for j in job_ids]

    def close(self) -> None:
        """Terminate what is left, wait until it is gone, delete the network and the state file."""
        with self._lock:
            if not self._ready:
                return
            self._delete_everything(self._state)
            self._ready = False

    # -- what the blocks need around them ----------------------------------------------

    def _tags(self) -> list[dict[str, str]]:
        return [{"Key": "htex:run", "Value": self._state.run}, {"Key": "htex:label", "Value": self.label}]

    def _get_ready(self) -> None:
        """Before the first block: clean up after an earlier client, check the image, make the network."""
        if self._ready:
            return
        earlier = State.load(self.state_file)
        if earlier is not None and earlier.region != self.region:
            raise ProviderError(f"the state file {self.state_file} is of region {earlier.region}, not {self.region}: "
                                "give another state_file, or clean that region up first")
        if earlier is not None:
            log.warning("state file %s: deleting what an earlier client left (run %s)", self.state_file, earlier.run)
            self._delete_everything(earlier)
        # Checked before anything is made, so a bad image (or bad credentials) leaves nothing behind.
        call(f"find image {self.image_id} in {self.region}", self.ec2.describe_images, ImageIds=[self.image_id])
        self._ready = True
        self._state.save(self.state_file)
        try:
            self._state.network.create(self.ec2, f"htex-{self.label}-{self._state.run}", self._tags(),
                                       ssh=bool(self.key_name), saved=lambda: self._state.save(self.state_file))
        except ProviderError:
            self._undo_if_unused()
            raise

    def _undo_if_unused(self) -> None:
        """A start failed: with no instance of ours alive, delete the network so that nothing is left."""
        alive = [i for i in instances(self.ec2, self._state.run) if i["State"]["Name"] in _ALIVE]
        if not alive:
            self._delete_everything(self._state)
            self._ready = False

    def _delete_everything(self, state: State) -> None:
        deadline = time.monotonic() + TEARDOWN_SECONDS
        left = [i["InstanceId"] for i in instances(self.ec2, state.run) if i["State"]["Name"] != "terminated"]
        if left:
            call("terminate instances", self.ec2.terminate_instances, InstanceIds=left)
        wait_terminated(self.ec2, state.run, deadline)
        state.network.delete(self.ec2, deadline, saved=lambda: state.save(self.state_file))
        try:
            os.unlink(self.state_file)
        except FileNotFoundError:
            pass


EC2Provider = AWSProvider
