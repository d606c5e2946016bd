"""OpenStackProvider and JetstreamProvider against a stand-in for an OpenStack cloud (emulators/openstack.py).

No OpenStack (nor Jetstream2) can run here: the providers talk through the
real openstacksdk (a clouds.yaml whose auth_url is the stand-in's Keystone;
the service catalog it answers points Nova, Glance and Neutron at it too) to a
local HTTP server that answers the documented calls, and boots each server's
user-data through the test hypervisor.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from htex.errors import ProviderError, ScaleOutFailed

import cloudtasks
from emulators import scenarios
from emulators.scenarios import Cloud
from hypervisor import Hypervisor

pytest.importorskip("openstack", reason="the [openstack] extra is not installed")

import base64

import openstack.config
import openstack.connection

from htex.providers.openstack import JetstreamProvider, OpenStackProvider

from emulators.openstack import OpenStackCloud

hypervisor = scenarios.hypervisor


@pytest.fixture
def nova(hypervisor: Hypervisor) -> Iterator[OpenStackCloud]:
    emulator = OpenStackCloud(hypervisor, quota=3)
    yield emulator
    emulator.close()


@pytest.fixture
def clouds_yaml(nova: OpenStackCloud, tmp_path: Any) -> str:
    path = str(tmp_path / "clouds.yaml")
    nova.clouds_yaml(path)
    return path


def _cloud(nova: OpenStackCloud, clouds_yaml: str, hypervisor: Hypervisor, kind: type[OpenStackProvider]) -> Cloud:
    def provider(**block: Any) -> OpenStackProvider:
        return kind(cloud="standin", clouds_yaml=clouds_yaml, **block)

    def delete(server: str) -> None:  # as `openstack server delete` would
        region = openstack.config.OpenStackConfig(config_files=[clouds_yaml]).get_one(cloud="standin")
        openstack.connection.Connection(config=region).compute.delete_server(server)

    def boot_script(server: str) -> str:
        with nova.lock:
            return base64.b64decode(nova.servers[server]["user_data"]).decode()

    return Cloud(hypervisor, provider, nova.names, delete, boot_script)


@pytest.fixture
def cloud(nova: OpenStackCloud, clouds_yaml: str, hypervisor: Hypervisor) -> Cloud:
    return _cloud(nova, clouds_yaml, hypervisor, OpenStackProvider)


@pytest.mark.timeout(300)
def test_tasks_run_on_servers_booted_from_user_data(cloud: Cloud, make_executor: Any) -> None:
    """Against the OpenStack stand-in (no OpenStack here), servers booted by the hypervisor."""
    scenarios.tasks_run_on_booted_pools(cloud, make_executor)


@pytest.mark.timeout(400)
def test_burst_scales_out_and_idleness_deletes_servers(cloud: Cloud, make_executor: Any, tmp_path: Any) -> None:
    """Against the OpenStack stand-in (no OpenStack here), servers booted by the hypervisor."""
    scenarios.burst_scales_out_then_idle_scales_in(cloud, make_executor, tmp_path)


@pytest.mark.timeout(400)
def test_jetstream_server_deleted_outside_is_noticed_and_replaced(
        nova: OpenStackCloud, clouds_yaml: str, hypervisor: Hypervisor, make_executor: Any, tmp_path: Any) -> None:
    """JetstreamProvider: Jetstream2's flavor and featured image by default, on the auto network.
    Against the OpenStack stand-in (no OpenStack here), servers booted by the hypervisor."""
    cloud = _cloud(nova, clouds_yaml, hypervisor, JetstreamProvider)
    scenarios.deleted_machine_is_noticed_and_replaced(cloud, make_executor, tmp_path)
    created = [s for s in nova.calls if s == ("POST", "/compute/v2.1/servers")]
    assert len(created) == 2



@pytest.mark.timeout(300)
def test_walltime_powers_the_server_off_and_it_is_deleted(cloud: Cloud, make_executor: Any) -> None:
    """Against the OpenStack stand-in (no OpenStack here), servers booted by the hypervisor."""
    scenarios.walltime_powers_the_machine_off(cloud, make_executor)


def test_jetstream_defaults_reach_nova(nova: OpenStackCloud, clouds_yaml: str) -> None:
    """Against the OpenStack stand-in (no OpenStack here)."""
    provider = JetstreamProvider(cloud="standin", clouds_yaml=clouds_yaml, key_name="mykey")
    job = provider.submit("true", 1)
    [server] = nova.servers.values()
    assert server["flavor"] == {"original_name": "m3.small"}
    assert nova.images[server["image"]["id"]]["name"] == "Featured-Ubuntu24"
    assert server["networks"] == "auto" and server["key_name"] == "mykey"
    assert provider.label == "jetstream"
    assert provider.cancel([job]) == [True]
    assert not nova.names()


def test_wrong_password_is_keystones_refusal_and_starts_nothing(nova: OpenStackCloud, tmp_path: Any,
                                                                make_executor: Any) -> None:
    """Against the OpenStack stand-in (no OpenStack here)."""
    wrong = str(tmp_path / "wrong.yaml")
    nova.clouds_yaml(wrong, password="not-the-password")
    provider = OpenStackProvider(cloud="standin", clouds_yaml=wrong)
    with pytest.raises(ProviderError, match="The request you have made requires authentication"):
        make_executor(provider=provider, address=nova.hypervisor.address if nova.hypervisor else None)
    assert not nova.names()


@pytest.mark.parametrize("what", ["flavor", "image", "network"])
def test_unknown_flavor_image_or_network_is_named(nova: OpenStackCloud, clouds_yaml: str, what: str) -> None:
    """Against the OpenStack stand-in (no OpenStack here)."""
    provider = OpenStackProvider(cloud="standin", clouds_yaml=clouds_yaml, **{what: "no-such-thing"})
    with pytest.raises(ProviderError, match=f"No {what.capitalize()} found for no-such-thing"):
        provider.submit("true", 1)
    assert not nova.names()


def test_quota_refusal_quotes_nova_and_leaves_no_server(nova: OpenStackCloud, clouds_yaml: str) -> None:
    """Against the OpenStack stand-in (no OpenStack here)."""
    provider = OpenStackProvider(cloud="standin", clouds_yaml=clouds_yaml, nodes_per_block=4)
    with pytest.raises(ProviderError, match="Quota exceeded for instances: Requested 1, but already used 3 of 3"):
        provider.submit("true", 1)  # four servers a block, three allowed: the three made are deleted
    assert not nova.names()


def test_unknown_cloud_name_is_a_provider_error(clouds_yaml: str) -> None:
    """Against the OpenStack stand-in (no OpenStack here)."""
    with pytest.raises(ProviderError, match=r"read cloud 'elsewhere' from clouds\.yaml"):
        OpenStackProvider(cloud="elsewhere", clouds_yaml=clouds_yaml).submit("true", 1)


@pytest.mark.timeout(200)
def test_servers_in_error_fail_the_executor_with_novas_fault(nova: OpenStackCloud, clouds_yaml: str,
                                                             make_executor: Any) -> None:
    """Nova accepts the server, then puts it in ERROR: the block fails with Nova's fault and the server is
    deleted; after three such blocks the executor gives up, quoting it.
    Against the OpenStack stand-in (no OpenStack here)."""
    provider = OpenStackProvider(cloud="standin", clouds_yaml=clouds_yaml, flavor="m1.giant", init_blocks=1,
                                 max_blocks=1, status_polling_interval=0.2)
    ex = make_executor(provider=provider, address=nova.hypervisor.address if nova.hypervisor else None)
    future = ex.submit(cloudtasks.hostname, {})
    with pytest.raises(ScaleOutFailed, match="No valid host was found"):
        future.result(timeout=120)
    assert not nova.names()


@pytest.mark.parametrize("kind", [OpenStackProvider, JetstreamProvider])
def test_without_the_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, kind: type[Any]) -> None:
    """No cloud: the provider alone."""
    monkeypatch.setitem(sys.modules, "openstack", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'htex[openstack]'")):
        kind()


@pytest.mark.timeout(300)
def test_the_readme_example(nova: OpenStackCloud, clouds_yaml: str, hypervisor: Hypervisor, tmp_path: Any,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the OpenStack stand-in (no OpenStack here), servers booted by the hypervisor."""
    cloud = _cloud(nova, clouds_yaml, hypervisor, JetstreamProvider)
    scenarios.readme_example_runs("OpenStack and Jetstream2", cloud, {
        'cloud="openstack"': f'cloud="standin", clouds_yaml={clouds_yaml!r}',
    }, tmp_path, monkeypatch, capsys)
