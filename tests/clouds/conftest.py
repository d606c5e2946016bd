"""Fixtures of the cloud tests: moto's EC2 server, a boto3 client of it, and a "cloud" whose instances boot.

* ``moto`` (one per test module): moto's server, a separate process on 127.0.0.1;
* ``ec2``: a boto3 client of it, after a reset (each test starts from an empty account);
* ``aws_key_file``: a key file in Parsl's format (moto takes any key unless told to check them);
* ``cloud``: the Hypervisor and an Ec2Watcher: instances the emulator runs are booted for real
  (tests/clouds/hypervisor.py), each on a host in 198.18.0.0/24; skipped with the reason without
  root or network namespaces (ci/netns/setup.sh);
* ``client_dir``: where the executor's run directory goes; instances do not see it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import hypervisor
from cloudlab import REGION, Cloud, Ec2Watcher, MotoServer


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield server
    server.close()


@pytest.fixture
def ec2(moto: MotoServer) -> Any:
    import boto3

    moto.post("/moto-api/reset")
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    return session.client("ec2", endpoint_url=moto.url)


@pytest.fixture
def image_id(ec2: Any) -> str:
    return str(ec2.describe_images()["Images"][0]["ImageId"])


@pytest.fixture
def aws_key_file(tmp_path: Any) -> str:
    path = tmp_path / "aws-keys.json"
    path.write_text(json.dumps({"AWSAccessKeyId": "testing", "AWSSecretKey": "testing"}))
    return str(path)


@pytest.fixture
def client_dir(tmp_path: Any) -> str:
    path = tmp_path / "client"
    path.mkdir()
    return str(path)


@pytest.fixture
def cloud(tmp_path: Any, ec2: Any, client_dir: str) -> Iterator[Cloud]:
    reason = hypervisor.unavailable()
    if reason:
        pytest.skip(reason)
    hv = hypervisor.Hypervisor(str(tmp_path / "instances"), hide=[client_dir])
    watcher = Ec2Watcher(ec2, hv)
    try:
        yield Cloud(hv, watcher)
    finally:
        try:
            watcher.stop()
        finally:
            hv.close()
