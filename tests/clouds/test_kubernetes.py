"""KubernetesProvider against a stand-in for a Kubernetes API server (emulators/kube.py).

No Kubernetes cluster can run here (no container runtime, no images to pull):
the provider talks through the real kubernetes client (a kubeconfig whose
server is the stand-in, with a bearer token) to a local HTTP server that
answers the documented core v1 pod calls, and whose "kubelet" runs each pod's
command through the test hypervisor, on a host of its own.
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

pytest.importorskip("kubernetes", reason="the [kubernetes] extra is not installed")

from kubernetes import client, config

from htex.providers.kubernetes import KubernetesProvider

from emulators.kube import KubeAPI

hypervisor = scenarios.hypervisor
NS = "htex"


@pytest.fixture
def kube(hypervisor: Hypervisor) -> Iterator[KubeAPI]:
    emulator = KubeAPI(hypervisor, namespaces=(NS,), pod_quota=3)
    yield emulator
    emulator.close()


@pytest.fixture
def kubeconfig(kube: KubeAPI, tmp_path: Any) -> str:
    path = str(tmp_path / "kubeconfig")
    kube.kubeconfig(path)
    return path


@pytest.fixture
def cloud(kube: KubeAPI, kubeconfig: str, hypervisor: Hypervisor) -> Cloud:
    def provider(**block: Any) -> KubernetesProvider:
        return KubernetesProvider("python:3.11", namespace=NS, kube_config=kubeconfig, **block)

    def delete(name: str) -> None:  # as kubectl delete pod would
        client.CoreV1Api(config.new_client_from_config(kubeconfig)).delete_namespaced_pod(name, NS)

    def boot_script(name: str) -> str:
        with kube.lock:
            return str(kube.pods[NS, name]["spec"]["containers"][0]["command"][2])

    return Cloud(hypervisor, provider, kube.names, delete, boot_script)


@pytest.mark.timeout(300)
def test_tasks_run_in_pods_booted_from_their_command(cloud: Cloud, make_executor: Any) -> None:
    """Against the Kubernetes API stand-in (no cluster here), pods booted by the hypervisor."""
    scenarios.tasks_run_on_booted_pools(cloud, make_executor)


@pytest.mark.timeout(400)
def test_burst_scales_out_and_idleness_deletes_pods(cloud: Cloud, make_executor: Any, tmp_path: Any) -> None:
    """Against the Kubernetes API stand-in (no cluster here), pods booted by the hypervisor."""
    scenarios.burst_scales_out_then_idle_scales_in(cloud, make_executor, tmp_path)


@pytest.mark.timeout(400)
def test_pod_deleted_outside_is_noticed_and_replaced(cloud: Cloud, make_executor: Any, tmp_path: Any) -> None:
    """Against the Kubernetes API stand-in (no cluster here), pods booted by the hypervisor."""
    scenarios.deleted_machine_is_noticed_and_replaced(cloud, make_executor, tmp_path)


def test_pod_spec_has_parsls_resources_volumes_and_account(kube: KubeAPI, kubeconfig: str) -> None:
    """Against the Kubernetes API stand-in (no cluster here)."""
    provider = KubernetesProvider("python:3.11", namespace=NS, kube_config=kubeconfig, pod_name="My.Pods",
                                  max_cpu=3, max_mem="1Gi", init_cpu=0.5, init_mem="100Mi", secret="pull",
                                  persistent_volumes=[("data", "/data")], service_account_name="runner",
                                  user_id="1000", group_id="1000", run_as_non_root=True, annotations={"a": "b"})
    job = provider.submit("true", 1)
    assert job.startswith("my-pods-")
    with kube.lock:
        pod = kube.pods[NS, job]
    [container] = pod["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "0.5", "memory": "100Mi"}, "limits": {"cpu": "3", "memory": "1Gi"}}
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert container["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True}
    assert pod["spec"]["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["spec"]["serviceAccountName"] == "runner"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 3600  # walltime 01:00:00, which Kubernetes enforces
    assert "shutdown" not in container["command"][2]  # a container cannot power its node off
    assert pod["metadata"]["annotations"] == {"a": "b"}
    assert provider.cancel([job]) == [True]
    assert not kube.names()


def test_bad_token_is_the_api_servers_refusal_and_starts_nothing(kube: KubeAPI, tmp_path: Any,
                                                                 make_executor: Any) -> None:
    """Against the Kubernetes API stand-in (no cluster here)."""
    stranger = str(tmp_path / "stranger")
    kube.kubeconfig(stranger, token="not-a-token-of-this-cluster")
    provider = KubernetesProvider("python:3.11", namespace=NS, kube_config=stranger)
    with pytest.raises(ProviderError, match="401 Unauthorized"):
        make_executor(provider=provider, address=kube.hypervisor.address if kube.hypervisor else None)
    assert not kube.names()


def test_quota_refusal_quotes_the_api_server_and_leaves_no_pod(kube: KubeAPI, kubeconfig: str) -> None:
    """Against the Kubernetes API stand-in (no cluster here)."""
    provider = KubernetesProvider("python:3.11", namespace=NS, kube_config=kubeconfig, nodes_per_block=4)
    with pytest.raises(ProviderError, match="exceeded quota: pod-quota"):
        provider.submit("true", 1)  # four pods a block, three allowed: the three made are deleted
    assert not kube.names()


@pytest.mark.timeout(200)
def test_image_that_cannot_be_pulled_fails_the_executor_with_the_kubelets_words(
        kube: KubeAPI, kubeconfig: str, make_executor: Any) -> None:
    """Kubernetes accepts the pod and retries the pull forever: each such block is cancelled, and after
    three the executor gives up, quoting ErrImagePull; no pod is left.
    Against the Kubernetes API stand-in (no cluster here)."""
    provider = KubernetesProvider("no-such-image:1", namespace=NS, kube_config=kubeconfig, init_blocks=1, max_blocks=1,
                                  status_polling_interval=0.2)
    ex = make_executor(provider=provider, address=kube.hypervisor.address if kube.hypervisor else None)
    future = ex.submit(cloudtasks.hostname, {})
    with pytest.raises(ScaleOutFailed, match=r'ErrImagePull: .*failed to pull and unpack image "no-such-image:1"'):
        future.result(timeout=120)
    assert not kube.names()


def test_without_the_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cloud: the provider alone."""
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'htex[kubernetes]'")):
        KubernetesProvider("python:3.11")


@pytest.mark.timeout(300)
def test_the_readme_example(cloud: Cloud, kubeconfig: str, tmp_path: Any,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the Kubernetes API stand-in (no cluster here), pods booted by the hypervisor."""
    scenarios.readme_example_runs("Kubernetes", cloud, {'"~/.kube/config"': repr(kubeconfig)},
                                  tmp_path, monkeypatch, capsys)


@pytest.mark.timeout(200)
def test_pods_whose_command_fails_end_their_block_and_the_executor_gives_up(
        kube: KubeAPI, kubeconfig: str, make_executor: Any) -> None:
    """A pod whose command exits (here worker_init fails) is Failed, with its exit code: the block failed
    before its pool connected; after three, the executor gives up quoting it; the pods are deleted.
    Against the Kubernetes API stand-in (no cluster here), pods booted by the hypervisor."""
    provider = KubernetesProvider("python:3.11", namespace=NS, kube_config=kubeconfig, init_blocks=1, max_blocks=1,
                                  worker_init="exit 3", status_polling_interval=0.2)
    ex = make_executor(provider=provider, address=kube.hypervisor.address if kube.hypervisor else None)
    future = ex.submit(cloudtasks.hostname, {})
    with pytest.raises(ScaleOutFailed, match="exited with 3"):
        future.result(timeout=120)
    assert not kube.names()
