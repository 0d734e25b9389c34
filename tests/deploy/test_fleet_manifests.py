"""deploy/relay/: static checks of the fleet manifests (nothing here is applied or built).

No container runtime, cluster or EMQX exists in CI, so these tests check structure and
the security properties we rely on; deploy/relay/README.md says the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

RELAY = Path(__file__).resolve().parents[2] / "deploy" / "relay"
K8S = RELAY / "k8s"
YAML_FILES = sorted(K8S.glob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_docs() -> list[dict[str, Any]]:
    return [d for path in YAML_FILES for d in docs(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in all_docs() if d["kind"] == kind]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_the_expected_files_exist() -> None:
    names = {p.name for p in YAML_FILES}
    assert {
        "namespace.yaml",
        "relay-deployment.yaml",
        "postgres-statefulset.yaml",
        "secrets.example.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_document_parses_and_is_named(path: Path) -> None:
    found = docs(path)
    assert found, f"{path.name} is empty"
    for doc in found:
        assert doc.get("apiVersion"), path.name
        assert doc.get("kind"), path.name
        assert doc.get("metadata", {}).get("name"), path.name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "edge-slm", doc["metadata"]["name"]


def test_relay_deployment() -> None:
    (deploy,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "cloud-relay"]
    assert deploy["spec"]["replicas"] >= 2
    spec = pod_spec(deploy)
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CLOUD_RELAY_LLM__API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "relay-secrets"
    assert env["CLOUD_RELAY_DB"]["valueFrom"]["secretKeyRef"]["name"] == "relay-secrets"
    assert env["CLOUD_RELAY_MQTT__BROKER"]["value"].startswith("mqtts://")
    # mTLS: the client certificate Secret is mounted where the env points.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    tls_dir = mounts["mqtt-tls"]["mountPath"]
    assert mounts["mqtt-tls"]["readOnly"] is True
    assert volumes["mqtt-tls"]["secret"]["secretName"] == "relay-mqtt-tls"
    for key in ("CA_FILE", "CERT_FILE", "KEY_FILE"):
        assert env[f"CLOUD_RELAY_MQTT__{key}"]["value"].startswith(tls_dir + "/")


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_containers_are_limited_and_locked_down(kind: str) -> None:
    workloads = of_kind(kind)
    assert workloads
    for obj in workloads:
        for c in pod_spec(obj)["containers"]:
            limits = c["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), c["name"]
            assert c["resources"]["requests"], c["name"]
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_postgres_has_a_service_and_persistent_storage() -> None:
    (sts,) = of_kind("StatefulSet")
    (svc,) = [s for s in of_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert svc["spec"]["ports"][0]["port"] == 5432
    claims = sts["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"]
    mounted = {m["name"] for m in pod_spec(sts)["containers"][0]["volumeMounts"]}
    assert claims[0]["metadata"]["name"] in mounted


def _secret_refs(node: object) -> set[tuple[str, str | None]]:
    """(secret name, key or None) for every secretKeyRef and secret volume below ``node``."""
    found: set[tuple[str, str | None]] = set()
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            found.add((ref["name"], ref["key"]))
        if "secret" in node and isinstance(node["secret"], dict):
            found.add((node["secret"]["secretName"], None))
        for value in node.values():
            found |= _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _secret_refs(item)
    return found


def test_referenced_secrets_exist_in_the_example() -> None:
    examples = {
        d["metadata"]["name"]: d
        for d in docs(K8S / "secrets.example.yaml")
        if d["kind"] == "Secret"
    }
    refs = set()
    for path in YAML_FILES:
        if path.name != "secrets.example.yaml":
            refs |= _secret_refs(docs(path))
    assert refs
    for name, key in refs:
        assert name in examples, name
        if key is not None:
            assert key in examples[name].get("stringData", {}), (name, key)
    # The TLS files the relay reads are in the example.
    assert {"ca.crt", "tls.crt", "tls.key"} <= set(examples["relay-mqtt-tls"]["stringData"])


def test_containerfile() -> None:
    text = (RELAY / "Containerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms
    assert all(f.startswith("python:3.11-slim") for f in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["cloud-relay", ?"run"\]\s*$', text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    assert "edge-slm[relay]" in text
    assert "torch" not in text


def test_emqx_config() -> None:
    conf = (RELAY / "emqx" / "emqx.conf").read_text()
    assert conf.strip()
    # Loose HOCON: strip comments, check braces balance and the key settings.
    body = "\n".join(line.split("##")[0] for line in conf.splitlines())
    assert body.count("{") == body.count("}")
    assert re.search(r"peer_cert_as_username\s*=\s*cn\b", body)
    assert re.search(r"listeners\.ssl\.default\s*\{", body)
    assert re.search(r"verify\s*=\s*verify_peer", body)
    assert re.search(r"fail_if_no_peer_cert\s*=\s*true", body)
    assert re.search(r"listeners\.tcp\.default\.enable\s*=\s*false", body)
    assert re.search(r"no_match\s*=\s*deny", body)
    assert re.search(r'path\s*=\s*"etc/acl\.conf"', body)


def test_emqx_acl_mirrors_the_mosquitto_acl() -> None:
    lines = [
        line.strip()
        for line in (RELAY / "emqx" / "acl.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("%%")
    ]
    assert all(line.endswith(".") for line in lines)
    rules = "\n".join(lines)
    device_pub = re.search(r"\{allow, all, publish, \[(.*)\]\}\.", rules)
    device_sub = re.search(r"\{allow, all, subscribe, \[(.*)\]\}\.", rules)
    assert device_pub
    assert '"slm/${cert_common_name}/escalation"' in device_pub.group(1)
    assert device_sub
    assert device_sub.group(1) == (
        '"slm/${cert_common_name}/cloud", "slm/${cert_common_name}/config", '
        '"slm/${cert_common_name}/model", {eq, "slm/_relays/+/status"}, '
        '"slm/_skills/+/head/+"'  # by pattern: the device subscribes to its encoder's
    )
    relay_sub = re.search(r'\{allow, \{username, \{re, "\^relay-"\}\}, subscribe, (.*)\}\.', rules)
    assert relay_sub
    assert '"$share/relays/slm/+/escalation"' in relay_sub.group(1)
    assert re.search(
        r'\{allow, \{username, \{re, "\^relay-"\}\}, publish, '
        r'\["slm/\+/cloud", "slm/\+/config", "slm/\+/model", "slm/_relays/\+/status", '
        r'"slm/_skills/\+/head/\+"\]',
        rules,
    )
    # Relay rules come before the device rules (first match wins); deny-all is last.
    assert rules.index("relay-") < rules.index("${cert_common_name}")
    assert lines[-1] == "{deny, all}."
    # Devices never get a wildcard over other devices' topics.
    assert "slm/+/" not in (device_pub.group(1) + device_sub.group(1))
