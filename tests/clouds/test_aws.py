"""AWSProvider against moto's EC2 server, with instances booted for real.

What each test runs against: moto (``python -m moto.server``, a separate
process on 127.0.0.1; every call is an HTTP API call through boto3), the
executor, its interchange and pools as real processes; pools start from the
user-data that the provider gave EC2, run by the hypervisor on a host of its
own (network namespace, 198.18.0.0/24, the client's run directory hidden:
the keys come from the user-data) and connect back over TCP with CURVE.
Where a test uses a stand-in (the quota proxy), its docstring says so.
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

import pytest

from htex import AWSProvider, HighThroughputExecutor, security
from htex.errors import ManagerLost, ProviderError
from htex.providers import JobState, userdata

import cloudtasks
import netlab
from cloudlab import REGION, TESTS, Cloud, QuotaProxy, free_port, leftovers
from support import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = 60.0  # a boot here is a namespace and a Python start: seconds, on a loaded machine


def provider(url: str, image_id: str, key_file: str, tmp_path: Any, **kw: Any) -> AWSProvider:
    kw.setdefault("worker_init", f"export PYTHONPATH={TESTS}:{HERE}")
    kw.setdefault("status_polling_interval", 0.5)
    return AWSProvider(image_id, key_file=key_file, endpoint_url=url, region=REGION,
                       state_file=str(tmp_path / "aws-state.json"), **kw)


def executor(cloud: Cloud, prov: AWSProvider, client_dir: str, **kw: Any) -> HighThroughputExecutor:
    kw.setdefault("heartbeat_period", 1)
    kw.setdefault("heartbeat_threshold", 5)
    kw.setdefault("max_workers", 1)
    return HighThroughputExecutor(provider=prov, address=cloud.hv.address, run_dir=os.path.join(client_dir, "runinfo"),
                                  **kw)


def user_data(ec2: Any, instance_id: str) -> str:
    attr = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(attr["UserData"]["Value"]).decode()


def assert_clean(ec2: Any, cloud: Cloud | None, state_file: str) -> None:
    assert leftovers(ec2) == {}
    assert not os.path.exists(state_file)
    if cloud is not None:
        wait_for(lambda: not cloud.hv.running(), timeout=30, what="every instance's processes to be gone")


@pytest.mark.timeout(240)
def test_tasks_run_on_pools_booted_from_user_data(cloud: Cloud, ec2: Any, moto: Any, image_id: str,
                                                  aws_key_file: str, client_dir: str, tmp_path: Any) -> None:
    """A block of two instances: each boots from its user-data, its pool connects back over TCP with CURVE
    (the keys in the user-data: the pool's pair and the server's public key, never the server's secret)."""
    prov = provider(moto.url, image_id, aws_key_file, tmp_path, nodes_per_block=2, init_blocks=1, max_blocks=1)
    ex = executor(cloud, prov, client_dir)
    ex.start()
    try:
        assert ex.encrypted
        futures = [ex.submit(cloudtasks.hostname, {}) for _ in range(20)]
        hosts = {f.result(timeout=BOOT) for f in futures}
        managers = wait_for(lambda: ex.connected_managers if len(ex.connected_managers) == 2 else None,
                            timeout=BOOT, what="both pools of the block")
        booted = cloud.hv.booted()
        assert len(booted) == 2
        assert hosts <= {"ip-" + cloud.hv.address_of(i).replace(".", "-") for i in booted}
        for m in managers:
            iid = cloud.hv.instance_of(m["pid"])
            assert iid in booted, f"pool {m} runs on no instance"
            mine = cloud.hv.address_of(iid)
            tcp = [c for c in netlab.tcp_connections(m["pid"]) if c[0] == mine and c[2] == cloud.hv.address
                   and c[3] == ex.worker_task_port and c[4] == netlab.ESTABLISHED]
            assert len(tcp) == 1, f"pool on {iid}: not one TCP connection to the executor: {netlab.tcp_connections(m['pid'])}"
        certs = os.path.join(ex.logdir, "certs")
        script = user_data(ec2, next(iter(booted)))
        assert security.load(certs, "server", secret=False)[0].decode() in script
        assert security.load(certs, "pool")[1].decode() in script
        assert security.load(certs, "server")[1].decode() not in script
        group = ec2.describe_security_groups(GroupIds=[prov._state.network.group_id])["SecurityGroups"][0]
        assert group["IpPermissions"] == []  # pools dial out: nothing comes in (no key_name: no SSH)
    finally:
        ex.shutdown()
    assert_clean(ec2, cloud, prov.state_file)


@pytest.mark.timeout(300)
def test_a_burst_scales_out_and_idleness_scales_in(cloud: Cloud, ec2: Any, moto: Any, image_id: str,
                                                   aws_key_file: str, client_dir: str, tmp_path: Any) -> None:
    """Six tasks, one worker per block, max_blocks=3: three instances boot; idle, they are terminated."""
    prov = provider(moto.url, image_id, aws_key_file, tmp_path, init_blocks=0, min_blocks=0, max_blocks=3)
    ex = executor(cloud, prov, client_dir, max_idletime=1.0)
    ex.start()
    try:
        assert not cloud.hv.booted()
        futures = [ex.submit(cloudtasks.nap, {}, 1.0) for _ in range(6)]
        hosts = {f.result(timeout=2 * BOOT) for f in futures}
        assert len(cloud.hv.booted()) == 3  # the strategy's decision: 6 tasks, 1 slot a block, max_blocks=3
        assert hosts <= {"ip-" + cloud.hv.address_of(i).replace(".", "-") for i in cloud.hv.booted()}

        def scaled_in() -> bool:
            pages = ec2.get_paginator("describe_instances").paginate()
            states = [i["State"]["Name"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
            return len(states) == 3 and set(states) == {"terminated"} and not cloud.hv.running()

        wait_for(scaled_in, timeout=BOOT, what="the idle instances to be terminated")
        assert len(cloud.hv.booted()) == 3
    finally:
        ex.shutdown()
    assert_clean(ec2, cloud, prov.state_file)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("retries", [0, 1])
def test_an_instance_terminated_from_outside_is_replaced(cloud: Cloud, ec2: Any, moto: Any, image_id: str,
                                                         aws_key_file: str, client_dir: str, tmp_path: Any,
                                                         retries: int) -> None:
    """Someone terminates the instance through the API: its task ends with ManagerLost (or, with
    lost_task_retries, runs again), and min_blocks brings a new instance."""
    prov = provider(moto.url, image_id, aws_key_file, tmp_path, init_blocks=1, min_blocks=1, max_blocks=1)
    ex = executor(cloud, prov, client_dir, lost_task_retries=retries)
    ex.start()
    try:
        marker = str(tmp_path / "started")
        fut = ex.submit(cloudtasks.hang_first_time, {}, marker, 600)
        wait_for(lambda: os.path.exists(marker), timeout=BOOT, what="the task to start on the instance")
        (first,) = cloud.hv.booted()
        ec2.terminate_instances(InstanceIds=[first])
        if retries:
            assert fut.result(timeout=2 * BOOT) != "ip-" + cloud.hv.address_of(first).replace(".", "-")
        else:
            with pytest.raises(ManagerLost):
                fut.result(timeout=BOOT)
        again = ex.submit(cloudtasks.hostname, {}).result(timeout=2 * BOOT)
        (second,) = cloud.hv.booted() - {first}
        assert again == "ip-" + cloud.hv.address_of(second).replace(".", "-")
        assert first not in cloud.hv.running()
    finally:
        ex.shutdown()
    assert_clean(ec2, cloud, prov.state_file)


@pytest.mark.timeout(180)
def test_a_restarted_client_deletes_what_the_earlier_one_left(cloud: Cloud, ec2: Any, moto: Any, image_id: str,
                                                              aws_key_file: str, tmp_path: Any) -> None:
    """A provider that died without close() left an instance and its network; the next one given the same
    state file terminates and deletes them before it starts its own block."""
    dead = provider(moto.url, image_id, aws_key_file, tmp_path)
    old_job = dead.submit("sleep 600", 1, "old.block-0")
    wait_for(lambda: cloud.hv.running(), timeout=BOOT, what="the first instance to boot")
    (old,) = cloud.hv.booted()
    old_vpc = dead._state.network.vpc_id
    del dead  # the client died: nothing was cleaned up

    fresh = provider(moto.url, image_id, aws_key_file, tmp_path)
    job = fresh.submit("sleep 600", 1, "new.block-0")
    assert job != old_job
    assert old_vpc not in {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    wait_for(lambda: old not in cloud.hv.running() and len(cloud.hv.running()) == 1, timeout=BOOT,
             what="the old instance to be killed and the new one to boot")
    assert fresh.status([job])[0].state.value == "running"
    fresh.cancel([job])
    fresh.close()
    assert_clean(ec2, cloud, fresh.state_file)


@pytest.mark.timeout(120)
def test_walltime_powers_the_instance_off(cloud: Cloud, ec2: Any, moto: Any, image_id: str, aws_key_file: str,
                                          tmp_path: Any) -> None:
    """At walltime the instance shuts itself down (the hypervisor's stub records it), EC2 terminates it (the
    watcher, as for InstanceInitiatedShutdownBehavior=terminate), and its block is reported failed."""
    prov = provider(moto.url, image_id, aws_key_file, tmp_path, walltime="00:00:02")
    job = prov.submit("sleep 600", 1, "b-0")
    ended = wait_for(lambda: [st for st in prov.status([job]) if st.terminal], timeout=BOOT,
                     what="the instance to power itself off")
    assert ended[0].state is JobState.FAILED
    assert cloud.hv.halted() == cloud.hv.booted() and len(cloud.hv.booted()) == 1
    prov.close()
    assert_clean(ec2, cloud, prov.state_file)


# -- bad input: ProviderError quoting EC2, nothing left -------------------------------------------


def _start_fails(prov: AWSProvider, client_dir: str, quoted: str) -> None:
    ex = HighThroughputExecutor(provider=prov, address="198.18.0.1", run_dir=os.path.join(client_dir, "runinfo"),
                                heartbeat_period=1, heartbeat_threshold=5)
    with pytest.raises(ProviderError, match=quoted):
        ex.start()
    ex.shutdown()


def test_bad_credentials(ec2: Any, moto: Any, image_id: str, aws_key_file: str, client_dir: str, tmp_path: Any) -> None:
    """moto told to check keys (/moto-api/reset-auth): ours are unknown to it, as to AWS."""
    prov = provider(moto.url, image_id, aws_key_file, tmp_path)
    moto.post("/moto-api/reset-auth", b"0")
    try:
        _start_fails(prov, client_dir, "AuthFailure: AWS was not able to validate the provided access credentials")
    finally:
        moto.post("/moto-api/reset-auth", b"inf")
    assert_clean(ec2, None, prov.state_file)


def test_an_image_that_does_not_exist(ec2: Any, moto: Any, aws_key_file: str, client_dir: str, tmp_path: Any) -> None:
    """moto checks images (MOTO_ENABLE_AMI_VALIDATION), as AWS does; the check comes before anything is made."""
    prov = provider(moto.url, "ami-0123456789abcdef0", aws_key_file, tmp_path)
    _start_fails(prov, client_dir, r"InvalidAMIID.NotFound: The image id '\[ami-0123456789abcdef0\]' does not exist")
    assert_clean(ec2, None, prov.state_file)


def test_a_quota_refusal(ec2: Any, moto: Any, image_id: str, aws_key_file: str, client_dir: str, tmp_path: Any) -> None:
    """Runs against moto through QuotaProxy, a stand-in for AWS's instance quota (moto has none): RunInstances
    past one instance is refused with EC2's InstanceLimitExceeded.  The network made for the block is deleted."""
    proxy = QuotaProxy(moto.url, ec2, limit=1)
    try:
        prov = provider(proxy.url, image_id, aws_key_file, tmp_path, nodes_per_block=2)
        _start_fails(prov, client_dir, "InstanceLimitExceeded: You have requested more instances")
    finally:
        proxy.close()
    assert_clean(ec2, None, prov.state_file)


def test_without_boto3_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cloud: boto3 made unimportable in this process."""
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImportError, match=r"pip install 'htex\[aws\]'"):
        AWSProvider("ami-1")


# -- the user-data, as a function (no cloud) -------------------------------------------------------


def test_the_user_data_carries_the_pool_keys_only(tmp_path: Any) -> None:
    """No cloud: the user-data of real launch commands (ours, and a Parsl 1.0 template that gets the keys
    through HTEX_CERT_DIR inside `sh -c`), with a key directory whose path has a space."""
    from htex import poolcmd
    from htex.launchers import SimpleLauncher

    certs = str(tmp_path / "a dir" / "certs")
    security.make_keys(certs)
    launch = poolcmd.PoolLaunch(
        python="python3", debug=False, max_workers=1, addresses=["198.18.0.1"], task_port=1,
        local_url=None, prefetch_capacity=0, cores_per_worker=1, mem_per_worker=None, poll_period=10,
        logdir="/l", heartbeat_period=1, heartbeat_threshold=5, address_probe_timeout=5, nodes_per_block=1,
        cert_dir=certs, working_dir=None, client_dir="/somewhere",
    )
    for template in (None, poolcmd.PARSL_1_0_LAUNCH_CMD):  # --cert_dir=..., or HTEX_CERT_DIR inside sh -c
        command = poolcmd.launch_command(template, launch, "0")
        assert userdata.cert_dir_of(command) == certs
        script = userdata.boot_script(command, worker_init="echo init", launcher=SimpleLauncher(), tasks_per_node=1,
                                      job_name="b", halt_after=True, walltime_seconds=60)
        assert security.load(certs, "pool")[1].decode() in script
        assert security.load(certs, "server")[1].decode() not in script  # the server's secret stays home
        assert script.startswith("#!/bin/bash\n") and script.rstrip().endswith("shutdown -h now")
        assert "sleep 60; shutdown -h now" in script  # the walltime watchdog
    lingering = userdata.boot_script("pool", worker_init="", launcher=SimpleLauncher(), tasks_per_node=1,
                                     job_name="b", halt_after=False, walltime_seconds=60)
    assert "shutdown" not in lingering  # linger=True: the instance outlives its pool, and walltime


def test_parsl_parameters_reach_ec2(ec2: Any, moto: Any, image_id: str, aws_key_file: str, tmp_path: Any) -> None:
    """key_name (SSH: the one port let in), spot_max_bid, iam_instance_profile_arn and instance_type, as EC2
    (moto) records them; no instance is booted (none is needed to read them back)."""
    import boto3

    ec2.create_key_pair(KeyName="mine")
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    arn = iam.create_instance_profile(InstanceProfileName="htex")["InstanceProfile"]["Arn"]
    prov = provider(moto.url, image_id, aws_key_file, tmp_path, key_name="mine", spot_max_bid=0.05,
                    instance_type="t3.micro", iam_instance_profile_arn=arn)
    job = prov.submit("true", 1, "b-0")
    try:
        (inst,) = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        assert (inst["KeyName"], inst["InstanceType"], inst.get("InstanceLifecycle")) == ("mine", "t3.micro", "spot")
        assert inst["IamInstanceProfile"]["Arn"].endswith("instance-profile/htex")
        group = ec2.describe_security_groups(GroupIds=[prov._state.network.group_id])["SecurityGroups"][0]
        assert [(p["FromPort"], p["ToPort"]) for p in group["IpPermissions"]] == [(22, 22)]
        assert prov.status([job])[0].state.value == "running"
    finally:
        prov.cancel([job])
        prov.close()
    assert_clean(ec2, None, prov.state_file)


@pytest.mark.timeout(240)
def test_the_readme_example(cloud: Cloud, ec2: Any, moto: Any, image_id: str, aws_key_file: str, client_dir: str,
                            tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's EC2 example, run as written but for its site values (address, ports, image, keys, the
    emulator's endpoint, and a worker_init that finds this machine's Python where the README installs htex)."""
    with open(os.path.join(os.path.dirname(TESTS), "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("\n## EC2\n"):]
    code = section[section.index("```python\n") + 10:section.index("\n```\n")]
    state_file = str(tmp_path / "aws-state.json")
    ports = (free_port(), free_port())
    for old, new in {
        '"203.0.113.7"': repr(cloud.hv.address),
        "(54000, 54001)": repr(ports),
        '"ami-0abcdef1234567890"': f"{image_id!r}, endpoint_url={moto.url!r}, status_polling_interval=0.5",
        '"~/.aws/htex.json"': repr(aws_key_file),
        '"pip install htex"': repr(f"export PATH={os.path.dirname(sys.executable)}:$PATH"),
        '"awsproviderstate.json"': repr(state_file),
    }.items():
        assert old in code, f"the README's example no longer has {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(client_dir)  # its run directory (runinfo/) is there, hidden from the instances
    exec(compile(code, "README.md (EC2)", "exec"), {})
    assert capsys.readouterr().out.strip().endswith("6")
    assert len(cloud.hv.booted()) == 1
    assert_clean(ec2, cloud, state_file)
