"""GoogleCloudProvider against a stand-in for Compute Engine (emulators/gce.py).

No Google Cloud can run here, and Google ships no emulator of Compute Engine:
the provider talks through the real google-cloud-compute client (REST, its
``api_endpoint`` pointed at the stand-in, a real service-account key signing
each request) to a local HTTP server that answers the documented calls, and
boots each instance's ``startup-script`` through the test hypervisor.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from htex.errors import ProviderError
from htex.providers.base import JobState

from emulators import scenarios
from emulators.scenarios import Cloud
from hypervisor import Hypervisor

pytest.importorskip("google.cloud.compute_v1", reason="the [gcp] extra is not installed")

from htex.providers.googlecloud import GoogleCloudProvider

from emulators.gce import ComputeEngine

hypervisor = scenarios.hypervisor
PROJECT = "htex-test"
ZONE = "us-central1-a"


@pytest.fixture
def gce(hypervisor: Hypervisor) -> Iterator[ComputeEngine]:
    emulator = ComputeEngine(hypervisor, quota=3)
    yield emulator
    emulator.close()


@pytest.fixture
def key_file(gce: ComputeEngine, tmp_path: Any) -> str:
    path = str(tmp_path / "key.json")
    gce.service_account(path, PROJECT)
    return path


@pytest.fixture
def cloud(gce: ComputeEngine, key_file: str, hypervisor: Hypervisor) -> Cloud:
    def provider(**block: Any) -> GoogleCloudProvider:
        return GoogleCloudProvider(PROJECT, key_file=key_file, zone=ZONE, api_endpoint=gce.url, **block)

    outside = GoogleCloudProvider(PROJECT, key_file=key_file, zone=ZONE, api_endpoint=gce.url)

    def delete(name: str) -> None:  # as a user would, with the same client library
        outside._client("InstancesClient").delete(project=PROJECT, zone=ZONE, instance=name).result(timeout=60)

    def boot_script(name: str) -> str:
        with gce.lock:
            items = gce.instances[name]["metadata"]["items"]
        return next(i["value"] for i in items if i["key"] == "startup-script")

    return Cloud(hypervisor, provider, gce.names, delete, boot_script)


@pytest.mark.timeout(300)
def test_tasks_run_on_instances_booted_from_startup_scripts(cloud: Cloud, make_executor: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here), instances booted by the hypervisor."""
    scenarios.tasks_run_on_booted_pools(cloud, make_executor)


@pytest.mark.timeout(400)
def test_burst_scales_out_and_idleness_deletes_instances(cloud: Cloud, make_executor: Any, tmp_path: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here), instances booted by the hypervisor."""
    scenarios.burst_scales_out_then_idle_scales_in(cloud, make_executor, tmp_path)


@pytest.mark.timeout(400)
def test_instance_deleted_outside_is_noticed_and_replaced(cloud: Cloud, make_executor: Any, tmp_path: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here), instances booted by the hypervisor."""
    scenarios.deleted_machine_is_noticed_and_replaced(cloud, make_executor, tmp_path)



@pytest.mark.timeout(400)
def test_a_block_of_two_instances_ends_with_either(cloud: Cloud, make_executor: Any, tmp_path: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here), instances booted by the hypervisor."""
    scenarios.block_of_two_ends_with_either_machine(cloud, make_executor, tmp_path)


@pytest.mark.timeout(300)
def test_walltime_powers_the_instance_off_and_it_is_deleted(cloud: Cloud, make_executor: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here), instances booted by the hypervisor."""
    scenarios.walltime_powers_the_machine_off(cloud, make_executor)


def test_bad_credentials_are_googles_refusal_and_start_nothing(gce: ComputeEngine, tmp_path: Any,
                                                               make_executor: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here)."""
    stranger = str(tmp_path / "stranger.json")
    gce.service_account(stranger, PROJECT, known=False)
    provider = GoogleCloudProvider(PROJECT, key_file=stranger, zone=ZONE, api_endpoint=gce.url)
    with pytest.raises(ProviderError, match="Request had invalid authentication credentials"):
        make_executor(provider=provider, address=gce.hypervisor.address if gce.hypervisor else None)
    assert not gce.names()


def test_unknown_image_family_quotes_google(gce: ComputeEngine, key_file: str) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here)."""
    provider = GoogleCloudProvider(PROJECT, key_file=key_file, zone=ZONE, api_endpoint=gce.url, os_family="no-such-os")
    with pytest.raises(ProviderError, match="images/family/no-such-os' was not found"):
        provider.submit("true", 1)
    assert not gce.names()


def test_quota_refusal_quotes_google_and_leaves_no_instance(gce: ComputeEngine, key_file: str) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here)."""
    provider = GoogleCloudProvider(PROJECT, key_file=key_file, zone=ZONE, api_endpoint=gce.url, nodes_per_block=4)
    with pytest.raises(ProviderError, match="Quota 'INSTANCES' exceeded"):
        provider.submit("true", 1)  # four instances a block, three allowed: the three made are deleted
    assert not gce.names()


def test_missing_key_file_is_a_provider_error(gce: ComputeEngine, tmp_path: Any) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here)."""
    provider = GoogleCloudProvider(PROJECT, key_file=str(tmp_path / "nope.json"), api_endpoint=gce.url)
    with pytest.raises(ProviderError, match="cannot load credentials"):
        provider.submit("true", 1)
    assert not gce.names()


def test_without_the_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cloud: the provider alone."""
    monkeypatch.setitem(sys.modules, "google.cloud.compute_v1", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'htex[gcp]'")):
        GoogleCloudProvider(PROJECT)



@pytest.mark.timeout(300)
def test_the_readme_example(cloud: Cloud, gce: ComputeEngine, key_file: str, tmp_path: Any,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here), instances booted by the hypervisor."""
    scenarios.readme_example_runs("Google Cloud", cloud, {
        '"my-project"': repr(PROJECT),
        '"~/gcp-key.json"': f"{key_file!r}, api_endpoint={gce.url!r}",
    }, tmp_path, monkeypatch, capsys)


def test_a_cloud_that_does_not_answer_makes_blocks_unknown_not_missing(gce: ComputeEngine, key_file: str) -> None:
    """Against the Compute Engine stand-in (no Google Cloud here)."""
    provider = GoogleCloudProvider(PROJECT, key_file=key_file, zone=ZONE, api_endpoint=gce.url, cmd_timeout=5)
    job = provider.submit("true", 1)
    gce.close()  # the API is gone (a network outage): nothing is known about the instance
    [status] = provider.status([job])
    assert status.state is JobState.UNKNOWN and "Google Cloud: cannot list instances" in status.message


def test_a_parsl_configurations_positional_call_works() -> None:
    """No cloud: the provider alone."""
    provider = GoogleCloudProvider("p", "key.json", "europe-west1", "ubuntu-os-cloud", "ubuntu-2204-lts", "v1",
                                   "n1-standard-1", 2, 1, 5)
    assert (provider.zone, provider.os_project, provider.os_family, provider.machine_type) == (
        "europe-west1-a", "ubuntu-os-cloud", "ubuntu-2204-lts", "n1-standard-1")
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (2, 1, 5)
