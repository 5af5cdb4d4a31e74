"""The Kubernetes manifests (k8s/) and the container build files (docker/).

Every overlay is rendered with `kubectl kustomize` (the kubectl on PATH, and Debian's 1.20 one
when BUNDLEREC_KUBECTL_DEBIAN names it: .ci/run fetches it, since the manifests must render with
the old kustomize it embeds too) and every rendered object is validated, strictly, against the
schemas of a current Kubernetes release (kubernetes-validate). The other tests check what no
schema can: that probes, Services, PDBs, HPAs and NetworkPolicies agree with the pods they are
about, and with the services' settings.

Without kubectl these tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
try:  # the dev extra
    import kubernetes_validate
    import yaml
except ImportError:
    if IN_CI:
        raise
    pytest.skip("kubernetes-validate is not installed (the dev extra)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
# the newest release kubernetes-validate 1.37 has schemas for
KUBERNETES_VERSION = "1.37.0"

# service -> (gRPC port, metrics port), the services' defaults (bundlerec serve SERVICE --help)
SERVICES = {"gateway": (50050, 9100), "profile": (50051, 9101), "candidate": (50052, 9102), "ranker": (50053, 9103)}
BACKENDS = ("profile", "candidate", "ranker")  # called by the gateway only
CONSOLE = "console"  # the operator console (k8s/console/): an HTTP process, on in the dev overlay only
# SERVING while the process runs (bundlerec.runtime.server.LIVENESS_SERVICE); readiness is ""
LIVENESS_SERVICE = "bundlerec.liveness"
# Created by the prod operator, never committed: docs/deploy.md gives the command for each.
OPERATOR_SECRETS = {
    "bundlerec-database",
    "bundlerec-profile",
    "bundlerec-ca",
    "profile-tls",
    "candidate-tls",
    "ranker-tls",
    "gateway-tls",
    "gateway-client-tls",
    "ranker-client-tls",
    "candidate-client-tls",
    "retrain-client-tls",
    "gateway-token",
    "bundlerec-redis",
}
OPERATOR_CONFIGMAPS = {"bundlerec-auth"}
# who may call each backend in prod: the gateway; the ranker also calls the candidate service
# (GetTextVectors), and the candidate service the profile service (ReadBehaviour)
# (ReadBehaviour); the nightly retrain calls both (ListItems, ListBundles; ExportTrainingEvents)
CALLERS = {"candidate": {"gateway", "ranker", "retrain"}, "profile": {"gateway", "candidate", "retrain"}}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
# kustomize's generated-name suffix (a hash spelt in these characters)
HASH_SUFFIX = re.compile(r"-[245679bcdfghkmt8]{10}$")


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why} (required under CI: .ci/run installs it)")
    pytest.skip(why)


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        _unavailable("kubectl is not installed")
    return str(found)


def _render(kubectl: str, overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{kubectl} kustomize {overlay} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    return {overlay: _render(kubectl, overlay) for overlay in OVERLAYS}


# ---- helpers over rendered objects -------------------------------------------------------------


def _of(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _generated(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    """A ConfigMap or Secret by the name the manifests give it (kustomize may add a hash)."""
    for d in docs:
        if d["kind"] == kind and HASH_SUFFIX.sub("", d["metadata"]["name"]) == name:
            return d
    return None


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    template = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    return template["template"]["metadata"]["labels"]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    assert "matchExpressions" not in selector, "the checks below only read matchLabels"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as set by value or from ConfigMaps (secret values as '<secret>')."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        configmap = _named(docs, "ConfigMap", ref)
        env.update(configmap.get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<secret>")
    return env


def _deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The four services' Deployments (the console, an HTTP process, has tests of its own)."""
    return {d["metadata"]["name"]: d for d in _of(docs, "Deployment") if d["metadata"]["name"] != CONSOLE}


def _service_of(container: dict[str, Any]) -> str:
    return container["args"][-1]


def _normalized(docs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """Objects by kind and name, generated names without kustomize's hash and Secret values decoded
    (both are spelt differently by different kustomize versions)."""
    text = json.dumps(docs)
    for d in _of(docs, "ConfigMap", "Secret"):
        name = d["metadata"]["name"]
        text = text.replace(f'"{name}"', f'"{HASH_SUFFIX.sub("", name)}"')
    objects = {(d["kind"], d["metadata"]["name"]): d for d in json.loads(text)}
    for (kind, _), d in objects.items():  # kustomize versions wrap base64 differently
        if kind == "Secret":
            d["data"] = {k: base64.b64decode("".join(v.split())) for k, v in d.get("data", {}).items()}
    return objects


# ---- rendering and schema validation -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_the_same_with_debians_kubectl(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    old = os.environ.get("BUNDLEREC_KUBECTL_DEBIAN", "")
    if not old or not Path(old).is_file():
        _unavailable("BUNDLEREC_KUBECTL_DEBIAN does not name Debian's kubectl (kubernetes-client 1.20)")
    assert _normalized(_render(old, overlay)) == _normalized(rendered[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_strict_validation(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    problems = []
    for doc in rendered[overlay]:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)
    assert len(rendered[overlay]) > 20


def test_the_liveness_service_is_the_servers() -> None:
    server = pytest.importorskip("bundlerec.runtime.server")
    assert server.LIVENESS_SERVICE == LIVENESS_SERVICE


def test_the_strict_validation_rejects_an_unknown_field() -> None:
    """The check above can fail: strict validation refuses a misspelt field."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "x"}]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    pod["spec"]["containers"][0]["readinessProbe"] = {"grpc": {"port": 1}, "periodSecond": 5}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


# ---- what a schema cannot check ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_deployment_per_service(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployments = _deployments(rendered[overlay])
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        (container,) = _pod_spec(deployment)["containers"]
        assert container["args"] == ["serve", name]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (ports["grpc"], ports["metrics"]) == SERVICES[name]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_native_grpc_on_a_port_the_service_listens_on(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    for deployment in _deployments(docs).values():
        for container in _containers(deployment):
            service = _service_of(container).upper()
            env = _container_env(docs, container)
            ports = {p["containerPort"] for p in container["ports"]}
            grpc_port = int(env[f"BUNDLEREC_{service}_PORT"])
            health_port = int(env.get(f"BUNDLEREC_{service}_HEALTH_PORT", grpc_port))
            tls = bool(env.get(f"BUNDLEREC_{service}_TLS_CERT_FILE"))
            assert grpc_port in ports and health_port in ports, (container["name"], ports)
            assert env[f"BUNDLEREC_{service}_HOST"] == "0.0.0.0", f"{service}: listens on loopback only"
            probes = ["readinessProbe", "livenessProbe"] + (["startupProbe"] if service == "RANKER" else [])
            for kind in probes:
                assert kind in container, f"{container['name']} has no {kind}"
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                if kind not in container:
                    continue
                probe = container[kind]
                assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, (container["name"], kind)
                port = probe["grpc"]["port"]
                service_name = probe["grpc"].get("service", "")
                wanted = LIVENESS_SERVICE if kind == "livenessProbe" else ""
                assert service_name == wanted, f"{container['name']} {kind} asks for {service_name!r}"
                assert isinstance(port, int), f"{container['name']} {kind}: port {port!r} is not a number"
                # the kubelet's gRPC probe speaks plaintext: with TLS it must use the health port
                assert port == (health_port if tls else grpc_port), (container["name"], kind, port)
                if tls:
                    assert health_port != grpc_port, f"{container['name']}: TLS on, but no plaintext health port"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_have_requests_and_limits_and_gpus_only_in_limits(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for workload in _of(rendered[overlay], *WORKLOAD_KINDS):
        for container in _containers(workload):
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (container["name"], part)
            assert not any("gpu" in r for r in resources["requests"]), f"{container['name']}: GPU in requests"
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert _quantity(request) <= _quantity(limit), (container["name"], resource)


def _quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_the_ranker_runs_on_gpu_nodes_in_prod_and_on_cpu_in_dev(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod = (_named(rendered[o], "Deployment", "ranker") for o in ("dev", "prod"))
    (dev_container,) = _pod_spec(dev)["containers"]
    (prod_container,) = _pod_spec(prod)["containers"]
    assert "nvidia.com/gpu" not in json.dumps(dev), "dev: the ranker asks for no GPU"
    assert _container_env(rendered["dev"], dev_container)["BUNDLEREC_RANKER_PROVIDERS"] == "cpu"
    assert "-gpu" not in dev_container["image"]

    assert str(prod_container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert "nvidia.com/gpu" not in prod_container["resources"]["requests"]
    assert prod_container["image"].rpartition(":")[0].endswith("/bundlerec-ranker-gpu")
    assert _container_env(rendered["prod"], prod_container)["BUNDLEREC_RANKER_PROVIDERS"] == "auto"
    spec = _pod_spec(prod)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    others = [d for d in _of(rendered["prod"], *WORKLOAD_KINDS) if d["metadata"]["name"] not in ("ranker", "retrain")]
    assert not any("nvidia.com/gpu" in json.dumps(d) for d in others), "only the ranker and the retrain use GPUs"


def test_the_retrain_runs_nightly_alone_writing_the_models_the_services_read(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    settings = pytest.importorskip("bundlerec.commands.retrain").RetrainSettings
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        cronjob = _named(docs, "CronJob", "retrain")
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid", "one writer of the models directory"
        pod = _pod_spec(cronjob)
        (container,) = pod["containers"]
        assert container["args"] == ["retrain"] and pod["restartPolicy"] == "Never"
        env = _container_env(docs, container)
        for var in env:
            assert var.startswith("BUNDLEREC_RETRAIN_") and var.removeprefix("BUNDLEREC_RETRAIN_").lower() in (
                settings.model_fields
            ), f"{overlay}: {var} sets no setting of bundlerec retrain"
        artifacts = next(m for m in container["volumeMounts"] if m["name"] == "artifacts")
        assert not artifacts.get("readOnly") and env["BUNDLEREC_RETRAIN_MODELS_DIR"].startswith(artifacts["mountPath"])
        for service in ("ranker", "candidate"):
            deployment = _named(docs, "Deployment", service)
            (served,) = _pod_spec(deployment)["containers"]
            models = _container_env(docs, served)[f"BUNDLEREC_{service.upper()}_MODELS_DIR"]
            assert models == env["BUNDLEREC_RETRAIN_MODELS_DIR"], f"{overlay}: {service} follows another directory"
        for address, port in (("PROFILE_ADDRESS", 50051), ("CANDIDATE_ADDRESS", 50052)):
            assert env[f"BUNDLEREC_RETRAIN_{address}"].endswith(f":{port}")
        image = container["image"].rpartition(":")[0]
        if overlay == "prod":
            assert (
                image.endswith("/bundlerec-trainer-gpu")
                and str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
            )
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert env["BUNDLEREC_RETRAIN_CLIENT_TLS_CERT_FILE"].startswith("/etc/bundlerec/tls/")
        else:
            assert image == "bundlerec-trainer" and "nvidia.com/gpu" not in json.dumps(cronjob)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for workload in _of(rendered[overlay], *WORKLOAD_KINDS):
        name = workload["metadata"]["name"]
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        for container in _containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context.get("privileged", False) is False, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert not context["capabilities"].get("add"), (name, container["name"])
            assert context.get("runAsUser", 1) > 0, (name, container["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_drain(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    for deployment in _deployments(docs).values():
        (container,) = _pod_spec(deployment)["containers"]
        env = _container_env(docs, container)
        drain = float(env[f"BUNDLEREC_{_service_of(container).upper()}_GRACE_SECONDS"])
        pause = 0.0
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if command[:1] == ["sleep"]:
            pause = float(command[1])
        assert _pod_spec(deployment)["terminationGracePeriodSeconds"] > pause + drain, deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_matching_pdb_and_hpa(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    deployments = _deployments(docs)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _matches(deployment["spec"]["selector"], labels), f"{name}: its selector misses its own pods"
        pdbs = [p for p in _of(docs, "PodDisruptionBudget") if _matches(p["spec"]["selector"], labels)]
        assert len(pdbs) == 1, f"{name}: {len(pdbs)} PodDisruptionBudgets select its pods"
        for other, other_deployment in deployments.items():
            if other != name:
                other_labels = other_deployment["spec"]["template"]["metadata"]["labels"]
                assert not _matches(pdbs[0]["spec"]["selector"], other_labels), f"PDB of {name} selects {other}"
        hpas = [h for h in _of(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
        assert len(hpas) == 1, f"{name}: {len(hpas)} HorizontalPodAutoscalers"
        target = hpas[0]["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        assert 1 <= hpas[0]["spec"]["minReplicas"] <= hpas[0]["spec"]["maxReplicas"]
        if overlay == "dev":
            assert deployment["spec"]["replicas"] == 1 and hpas[0]["spec"]["maxReplicas"] == 1, name
        else:
            assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replicas"
            assert hpas[0]["spec"]["minReplicas"] >= 2, f"{name}: one pod cannot drain while another serves"
            assert pdbs[0]["spec"].get("maxUnavailable", 0) < hpas[0]["spec"]["minReplicas"]
    for pdb in _of(docs, "PodDisruptionBudget"):
        assert pdb["metadata"]["name"] in deployments, f"PDB {pdb['metadata']['name']} without a Deployment"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_existing_pods_on_their_ports(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    workloads = _of(docs, *WORKLOAD_KINDS)
    for service in _of(docs, "Service"):
        name = service["metadata"]["name"]
        selected = [w for w in workloads if _matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(w))]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports = [p for c in _pod_spec(selected[0])["containers"] for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), f"Service {name}: {target}"
        if name in SERVICES:
            numbers = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            assert (numbers["grpc"], numbers["metrics"]) == SERVICES[name]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_addresses_the_services(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    (gateway,) = _pod_spec(_named(docs, "Deployment", "gateway"))["containers"]
    env = _container_env(docs, gateway)
    for backend in BACKENDS:
        host, _, port = env[f"BUNDLEREC_GATEWAY_{backend.upper()}_ADDRESS"].rpartition(":")
        service = _named(docs, "Service", host)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, backend
        assert int(port) == SERVICES[backend][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_referenced_objects_exist_or_are_created_by_the_operator(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    external: set[tuple[str, str]] = set()
    for workload in _of(docs, *WORKLOAD_KINDS):
        pod = _pod_spec(workload)
        refs: list[tuple[str, str]] = []
        if "serviceAccountName" in pod:
            refs.append(("ServiceAccount", pod["serviceAccountName"]))
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
            if "persistentVolumeClaim" in volume:
                refs.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
            for source in volume.get("projected", {}).get("sources", []):
                for kind in ("configMap", "secret"):
                    if kind in source:
                        refs.append((kind[0].upper() + kind[1:], source[kind]["name"]))
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                refs.append(("ConfigMap", source["configMapRef"]["name"]))
            for var in container.get("env", []):
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in var.get("valueFrom", {}):
                        refs.append((kind, var["valueFrom"][key]["name"]))
        for kind, name in refs:
            if not any(d["kind"] == kind and d["metadata"]["name"] == name for d in docs):
                external.add((kind, name))
    if overlay == "dev":
        assert not external, f"dev refers to objects it does not create: {sorted(external)}"
        return
    assert not _of(docs, "Secret"), "prod commits no Secret: the operator creates them"
    expected = {("Secret", n) for n in OPERATOR_SECRETS} | {("ConfigMap", n) for n in OPERATOR_CONFIGMAPS}
    assert external == expected
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for kind, name in sorted(external):
        command = f"kubectl -n bundlerec create {'secret' if kind == 'Secret' else 'configmap'}"
        assert re.search(rf"{re.escape(command)} [a-z-]* *{re.escape(name)}\b", guide), (
            f"docs/deploy.md does not show how to create the {kind} {name}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_files_and_folders_of_the_settings_are_mounted(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """With a read-only root filesystem, every file or folder a setting names must be on a volume
    (writable where the service writes), and a ConfigMap or Secret mounted there must hold it."""
    docs = rendered[overlay]
    for deployment in _of(docs, "Deployment"):
        (container,) = _pod_spec(deployment)["containers"]
        volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
        env = _container_env(docs, container)
        for var, value in env.items():
            if not var.endswith(("_FILE", "_DIR")) or not value:
                continue
            mounts = [
                m
                for m in container["volumeMounts"]
                if value == m["mountPath"] or value.startswith(m["mountPath"].rstrip("/") + "/")
            ]
            assert mounts, f"{container['name']}: {var}={value} is on no volume"
            mount = max(mounts, key=lambda m: len(m["mountPath"]))
            if var.endswith("INDEX_DIR"):
                assert not mount.get("readOnly"), f"{var} must be writable"
            relative = value[len(mount["mountPath"].rstrip("/")) + 1 :]
            volume = volumes[mount["name"]]
            if relative and ("configMap" in volume or "projected" in volume):
                assert relative in _keys_of(docs, volume), (
                    f"{container['name']}: {var}: no {relative} in {mount['name']}"
                )


def _keys_of(docs: list[dict[str, Any]], volume: dict[str, Any]) -> set[str]:
    """The file names a ConfigMap or projected volume shows (operator-made objects: their items)."""
    sources = volume["projected"]["sources"] if "projected" in volume else [{"configMap": volume["configMap"]}]
    names: set[str] = set()
    for source in sources:
        ((kind, ref),) = source.items()
        if ref.get("items"):
            names |= {item["path"] for item in ref["items"]}
        else:
            found = _named(docs, "ConfigMap" if kind == "configMap" else "Secret", ref["name"])
            names |= set(found.get("data", {}))
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_variables_are_settings_of_the_service(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """A misspelt BUNDLEREC_* variable would be ignored silently: each must be a field of the service."""
    settings = {
        "profile": pytest.importorskip("bundlerec.profile.settings").ProfileSettings,
        "candidate": pytest.importorskip("bundlerec.candidate.settings").CandidateSettings,
        "ranker": pytest.importorskip("bundlerec.ranker.settings").RankerSettings,
        "gateway": pytest.importorskip("bundlerec.gateway.settings").GatewaySettings,
        CONSOLE: pytest.importorskip("bundlerec.console.settings").ConsoleSettings,
    }
    docs = rendered[overlay]
    for deployment in _of(docs, "Deployment"):
        (container,) = _pod_spec(deployment)["containers"]
        service = _service_of(container)
        prefix = f"BUNDLEREC_{service.upper()}_"
        for var in _container_env(docs, container):
            assert var.startswith(prefix), f"{service}: {var} is not one of its settings' variables"
            field = var.removeprefix(prefix).lower()
            assert field in settings[service].model_fields, f"{service}: {var} sets no setting"


def test_only_their_callers_reach_the_services_in_prod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["prod"]
    policies = _of(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and "Ingress" in deny[0]["spec"]["policyTypes"], "no default-deny ingress policy"
    deployments = {d["metadata"]["name"]: d for d in _of(docs, "Deployment", "CronJob")}
    for backend in BACKENDS:
        labels = _pod_labels(deployments[backend])
        port = SERVICES[backend][0]
        allowed_from: list[dict[str, Any]] = []
        for policy in policies:
            if not _matches(policy["spec"]["podSelector"], labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                rule_ports = {p["port"] for p in rule.get("ports", [])}
                if rule_ports and port not in rule_ports:
                    continue
                assert rule.get("from"), f"{policy['metadata']['name']} opens {backend}:{port} to everyone"
                allowed_from.extend(rule["from"])
        assert allowed_from, f"nothing may call {backend}"
        callers = CALLERS.get(backend, {"gateway"})
        for peer in allowed_from:
            assert set(peer) == {"podSelector"}, f"{backend}: a peer other than pods of this namespace: {peer}"
            matched = {n for n, d in deployments.items() if _matches(peer["podSelector"], _pod_labels(d))}
            assert matched and matched <= callers, f"{backend}: {sorted(matched - callers) or 'no pod'} may call it"
        for caller in callers:
            labels = _pod_labels(deployments[caller])
            assert any(_matches(p["podSelector"], labels) for p in allowed_from), f"{caller} may not call {backend}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_replicas_share_their_impressions(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """In memory, impression counts split between gateway replicas and a ForgetUser reaches only
    one: more than one replica needs the shared store (Redis), its URL and HMAC key from a Secret."""
    docs = rendered[overlay]
    gateway = _named(docs, "Deployment", "gateway")
    (container,) = _pod_spec(gateway)["containers"]
    env = _container_env(docs, container)
    hpa = _named(docs, "HorizontalPodAutoscaler", "gateway")
    replicas = max(hpa["spec"]["maxReplicas"], gateway["spec"].get("replicas", 1))
    from_secrets = {
        var["name"]: var["valueFrom"]["secretKeyRef"]["name"]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    for var in ("BUNDLEREC_GATEWAY_IMPRESSIONS_URL", "BUNDLEREC_GATEWAY_IMPRESSIONS_KEY_SECRET"):
        # the URL may carry a password, the key names requesters: neither in a ConfigMap or a value
        assert var in from_secrets or not env.get(var), f"{overlay}: {var} is not read from a Secret"
    if replicas > 1:
        assert "BUNDLEREC_GATEWAY_IMPRESSIONS_URL" in from_secrets, (
            f"{overlay}: {replicas} gateway replicas count impressions in memory"
        )
        assert "BUNDLEREC_GATEWAY_IMPRESSIONS_KEY_SECRET" in from_secrets, f"{overlay}: Redis without an HMAC key"
    if overlay == "prod":
        assert replicas > 1
        assert HASH_SUFFIX.sub("", from_secrets["BUNDLEREC_GATEWAY_IMPRESSIONS_URL"]) == "bundlerec-redis"
        images = [c["image"] for w in _of(docs, *WORKLOAD_KINDS) for c in _containers(w)]
        assert not [i for i in images if "redis" in i], "prod's Redis is outside the cluster"


def test_dev_runs_postgresql_and_prod_uses_an_external_one(rendered: dict[str, list[dict[str, Any]]]) -> None:
    postgres = _named(rendered["dev"], "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"], "dev PostgreSQL keeps its data on a volume"
    mounts = {m["name"]: m["mountPath"] for m in _pod_spec(postgres)["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/var/lib/postgresql/data"
    database = _generated(rendered["dev"], "Secret", "bundlerec-database")
    assert database is not None
    assert not _of(rendered["prod"], "StatefulSet"), "prod has no database of its own"
    for overlay in OVERLAYS:
        (profile,) = _pod_spec(_named(rendered[overlay], "Deployment", "profile"))["containers"]
        url = next(v for v in profile["env"] if v["name"] == "BUNDLEREC_PROFILE_DATABASE_URL")
        assert HASH_SUFFIX.sub("", url["valueFrom"]["secretKeyRef"]["name"]) == "bundlerec-database"


def test_prod_images_name_a_registry_and_a_version(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in _of(rendered["prod"], "Deployment"):
        for container in _containers(deployment):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert "/" in repository and tag and tag != "latest", image
            assert repository.rpartition("/")[2].startswith("bundlerec-" + _service_of(container)), image


def test_the_gateway_rules_configmap_is_valid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rules = pytest.importorskip("bundlerec.gateway.rules")
    for overlay in OVERLAYS:
        configmap = _named(rendered[overlay], "ConfigMap", "gateway-rules")
        text = configmap["data"]["rules.toml"]
        tomllib.loads(text)
        rules.parse_rules(text.encode(), "gateway-rules")


# ---- container build files ---------------------------------------------------------------------

DOCKERFILES = {  # file -> its targets
    "Dockerfile": (*SERVICES, CONSOLE),
    "Dockerfile.ranker-gpu": ("ranker-gpu",),
    "Dockerfile.trainer": ("trainer",),
}
DEV_TOOLS = re.compile(r"grpcio-tools|pytest|ruff|\[dev|build-essential|\bgcc\b|\bgit\b")


def _stages(dockerfile: Path) -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (what it is FROM, its instructions), ARG defaults substituted in FROM."""
    args: dict[str, str] = {}
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif instruction.upper() == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"{dockerfile.name}: name every stage: {line}"
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            current = []
            stages[words[2]] = (image, current)
        elif current is not None:
            current.append(line)
    return stages


def _chain(stages: dict[str, tuple[str, list[str]]], target: str) -> list[str]:
    """The instructions that make the target's image, from its first base stage down."""
    base, instructions = stages[target]
    return (_chain(stages, base) if base in stages else []) + instructions


def test_the_container_build_files_are_there() -> None:
    assert sorted(p.name for p in (ROOT / "docker").glob("Dockerfile*")) == sorted(DOCKERFILES)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "bundlerec/v1/*_pb2*.py*"} <= set(ignored), "the build regenerates the gRPC code"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_are_multi_stage_pinned_non_root_and_without_build_tools(name: str) -> None:
    stages = _stages(ROOT / "docker" / name)
    assert "build" in stages, f"{name}: no build stage"
    for stage, (image, _) in stages.items():
        if image not in stages:
            repository, _, tag = image.rpartition(":")
            assert repository and re.search(r"\d+\.\d+", tag), f"{name}: {stage} is FROM {image}, no pinned version"
    assert "--constraint" in " ".join(stages["build"][1]) or any("PIP_CONSTRAINT=" in i for i in stages["build"][1]), (
        f"{name}: the build installs unpinned versions"
    )
    for target in DOCKERFILES[name]:
        chain = _chain(stages, target)
        assert stages[target][0] != "build", f"{name}: {target} is built on the build stage"
        assert any(i.startswith("COPY --from=build ") for i in chain), f"{name}: {target} copies nothing built"
        users = [i.split()[1] for i in chain if i.upper().startswith("USER ")]
        assert users, f"{name}: {target} runs as root"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"{name}: {target} runs as {users[-1]} (numeric, for runAsNonRoot)"
        runs = " ".join(i for i in chain if i.upper().startswith("RUN "))
        assert "pip install" not in runs, f"{name}: {target} installs packages itself"
        assert not DEV_TOOLS.search(runs), f"{name}: {target}: {DEV_TOOLS.search(runs)}"
        assert any(i.startswith("ENTRYPOINT") for i in chain) and any(i.startswith("CMD") for i in chain)


def test_each_service_target_serves_that_service() -> None:
    for name, targets in DOCKERFILES.items():
        stages = _stages(ROOT / "docker" / name)
        for target in targets:
            service = target.removesuffix("-gpu")
            chain = _chain(stages, target)
            if target == "trainer":
                assert [i for i in chain if i.startswith("CMD")][-1] == 'CMD ["retrain"]'
                continue
            if target == CONSOLE:
                assert [i for i in chain if i.startswith("CMD")][-1] == 'CMD ["console"]'
                assert "EXPOSE 8090" in chain
                continue
            assert [i for i in chain if i.startswith("CMD")][-1] == f'CMD ["serve", "{service}"]', target
            assert f"EXPOSE {SERVICES[service][0]} {SERVICES[service][1]}" in chain, target


def test_the_images_user_is_the_pods_user(rendered: dict[str, list[dict[str, Any]]]) -> None:
    uids = set()
    for name, targets in DOCKERFILES.items():
        stages = _stages(ROOT / "docker" / name)
        for target in targets:
            users = [i.split()[1] for i in _chain(stages, target) if i.upper().startswith("USER ")]
            uids.add(int(users[-1].split(":")[0]))
    pods = {_pod_spec(d)["securityContext"]["runAsUser"] for o in OVERLAYS for d in _of(rendered[o], "Deployment")}
    assert uids == pods


def _labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_the_console_is_off_by_default_on_in_dev_and_only_for_operators_in_the_auth_file(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    base = (K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8")
    assert "console" not in base, "the base turns the console on"
    assert not [d for d in _of(rendered["prod"], "Deployment") if d["metadata"]["name"] == CONSOLE]
    docs = rendered["dev"]
    deployment = _named(docs, "Deployment", CONSOLE)
    (container,) = _pod_spec(deployment)["containers"]
    assert container["args"] == ["console"]
    env = _container_env(docs, container)
    port = int(env["BUNDLEREC_CONSOLE_PORT"])
    assert {p["containerPort"] for p in container["ports"]} == {port}
    for kind in ("readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["path"] == "/healthz"  # the one path open without a token
    # it listens on the pod's address, which `bundlerec console` refuses without an auth file: the
    # overlay's must load, and name operators by token digests
    assert env["BUNDLEREC_CONSOLE_HOST"] == "0.0.0.0" and env["BUNDLEREC_CONSOLE_AUTH_FILE"]
    mount = next(m for m in container["volumeMounts"] if env["BUNDLEREC_CONSOLE_AUTH_FILE"].startswith(m["mountPath"]))
    volume = next(v for v in _pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    text = _named(docs, "ConfigMap", volume["configMap"]["name"])["data"]["auth.toml"]
    (tmp_path / "auth.toml").write_text(text)
    from bundlerec.console.access import Access

    access = Access.from_file(str(tmp_path / "auth.toml"))
    operator = access.operator("bundlerec-dev-console")  # the development token docs/console.md gives
    assert operator is not None and operator.may_change_models
    assert access.operator("") is None and access.operator("bundlerec-dev") is None
    assert env["BUNDLEREC_CONSOLE_GATEWAY_ADDRESS"] == f"gateway:{SERVICES['gateway'][0]}"
