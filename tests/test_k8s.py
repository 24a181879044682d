"""deploy/k8s: the base and every overlay render with `kubectl kustomize`, pass the Kubernetes
schemas strictly (`kubernetes-validate --strict`, offline), and hold what a platform team relies
on: numeric non-root pods under the restricted profile, probes, resources, budgets, autoscaling,
default-deny network policies, and secrets that come from Secrets only.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
TARGETS = ["base", "overlays/dev", "overlays/production"]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="LOUD: kubectl is not installed (.ci/run installs it with apt: kubectl or kubernetes-client); "
    "the Kubernetes manifests were NOT rendered or validated",
)


def render(target: str) -> list[dict[str, Any]]:
    assert KUBECTL
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    }


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_every_target_passes_the_kubernetes_schemas_strictly(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    target, docs = rendered
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run(
        [str(VALIDATE), "--strict", "--quiet", str(manifest)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"{target}: {out.stdout}{out.stderr}"


def test_the_validator_rejects_what_kubernetes_would(tmp_path: Path) -> None:
    """The check can fail: an unknown field in a container and a wrong type are refused."""
    docs = render("base")
    worker = by_kind(docs, "Deployment")["lockgate-worker"]
    worker["spec"]["template"]["spec"]["containers"][0]["runAsRoot"] = False
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(worker))
    assert subprocess.run([str(VALIDATE), "--strict", "--quiet", str(bad)], capture_output=True).returncode != 0


def pod_problems(name: str, template: dict[str, Any]) -> list[str]:
    """What keeps a pod from running numeric non-root, read-only, without capabilities."""
    problems = []
    spec = template["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or int(psc.get("runAsUser", 0)) < 10000:
        problems.append(f"{name}: pod not numeric non-root")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: no RuntimeDefault seccomp")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: service account token mounted")
    for c in spec["containers"] + spec.get("initContainers", []):
        where = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True or int(sc.get("runAsUser", 0)) < 10000:
            problems.append(f"{where}: not numeric non-root")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: writable root filesystem")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation allowed")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            problems.append(f"{where}: capabilities kept or added")
        resources = c.get("resources", {})
        if not (resources.get("requests", {}).get("memory") and resources.get("limits", {}).get("memory")):
            problems.append(f"{where}: no memory request and limit")
        if c["image"].endswith(":latest") or ":" not in c["image"].rsplit("/", 1)[-1]:
            problems.append(f"{where}: floating image {c['image']}")
        if c.get("args", [None])[0] != "lockgate":
            problems.append(f"{where}: not a lockgate command")
    return problems


def test_pods_run_numeric_non_root_read_only_without_capabilities(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pods = pod_specs(docs)
    assert {
        "Job/lockgate-setup",
        "Deployment/lockgate-worker",
        "Deployment/lockgate-inbox",
        "Deployment/lockgate-codec",
    } <= set(pods)
    assert [p for name, template in pods.items() for p in pod_problems(name, template)] == []


def test_namespaces_enforce_the_restricted_profile(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    target, docs = rendered
    if target == "base":
        return  # the overlays own their namespace
    (ns,) = by_kind(docs, "Namespace").values()
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == ns["metadata"]["name"] for d in docs if d["kind"] != "Namespace")


def test_the_worker_has_probes_a_budget_and_autoscaling(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    worker = by_kind(docs, "Deployment")["lockgate-worker"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["lockgate", "worker"]
    assert container["startupProbe"]["exec"]["command"] == ["python", "-m", "lockgate.health", "worker"]
    # Liveness and readiness from the worker itself (lockgate/probes.py), on its health port only.
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["ports"] == [{"name": "health", "containerPort": 8236, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCKGATE_HEALTH_ADDRESS"] == "0.0.0.0:8236"
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget").values() if matches(p["spec"]["selector"], labels)]
    assert len(pdbs) == 1
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["lockgate-worker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lockgate-worker"}
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert matches(worker["spec"]["selector"], labels)


def test_inbox_and_codec_have_services_and_http_probes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    services = by_kind(docs, "Service")
    for name, port, path in (("lockgate-inbox", 8234, "/healthz"), ("lockgate-codec", 8235, "/health")):
        dep = by_kind(docs, "Deployment")[name]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert str(port) in c["args"], c["args"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": path, "port": "http"}
        svc = services[name]
        assert svc["spec"]["type"] == "ClusterIP"
        assert matches({"matchLabels": svc["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"])
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
    for svc in services.values():
        assert svc["spec"]["type"] == "ClusterIP", "nothing is exposed but through the TLS ingress"


def network_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Where the NetworkPolicies let more in or out than lockgate needs, or too little."""
    problems = []
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies.get("default-deny-all", {}).get("spec", {})
    if deny.get("podSelector") != {} or set(deny.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("no default deny in and out")
    if "ingress" in deny or "egress" in deny:
        problems.append("the default deny allows something")
    for name, template in pod_specs(docs).items():
        labels = template["metadata"]["labels"]
        mine = [
            p["spec"]
            for n, p in policies.items()
            if n != "default-deny-all" and matches(p["spec"]["podSelector"], labels)
        ]
        egress_ports = {port["port"] for p in mine for rule in p.get("egress", []) for port in rule.get("ports", [])}
        ingress = [rule for p in mine for rule in p.get("ingress", [])]
        if any(not rule.get("ports") for p in mine for rule in p.get("egress", [])):
            problems.append(f"{name}: egress to any port")
        if 53 not in egress_ports:
            problems.append(f"{name} cannot resolve names")
        if 8200 not in egress_ports:
            problems.append(f"{name} cannot reach OpenBao")
        component = labels["app.kubernetes.io/component"]
        if component in ("setup", "worker"):
            if ingress:
                problems.append(f"{name} accepts connections")
            if not {7233, 5432} <= egress_ports:
                problems.append(f"{name} cannot reach Temporal and PostgreSQL")
        if component in ("inbox", "codec") and not (ingress and all(rule.get("from") for rule in ingress)):
            problems.append(f"{name}: ingress from anywhere, or none")
        if component == "codec" and egress_ports != {53, 8200}:
            problems.append(f"{name}: the codec server reaches more than OpenBao")
    return problems


def test_network_policies_deny_by_default_and_allow_only_what_is_needed(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    assert network_problems(docs) == []


def test_the_checks_catch_a_weakened_manifest() -> None:
    """The property checks fail on what they guard against: a root container, an added
    capability, a writable root, a policy that opens the workers, a lost default deny."""
    docs = render("base")
    worker = copy.deepcopy(by_kind(docs, "Deployment")["lockgate-worker"]["spec"]["template"])
    worker["spec"]["containers"][0]["securityContext"] |= {
        "runAsUser": 0,
        "readOnlyRootFilesystem": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
    }
    found = pod_problems("worker", worker)
    assert any("not numeric non-root" in p for p in found)
    assert any("writable root" in p for p in found) and any("capabilities" in p for p in found)
    opened = [
        *copy.deepcopy(docs),
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "oops"},
            "spec": {"podSelector": {}, "ingress": [{}], "egress": [{}], "policyTypes": ["Ingress", "Egress"]},
        },
    ]
    found = network_problems(opened)
    assert any("lockgate-worker accepts connections" in p for p in found)
    assert any("egress to any port" in p for p in found)
    no_deny = [d for d in copy.deepcopy(docs) if d["metadata"]["name"] != "default-deny-all"]
    assert "no default deny in and out" in network_problems(no_deny)


def test_secrets_come_from_secrets_documented_in_the_runbook(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert not by_kind(docs, "Secret"), "no secret material in the manifests"
    runbook = (ROOT / "deploy" / "README.md").read_text()
    created: dict[str, set[str]] = {}
    for m in re.finditer(r"kubectl (?:-n \S+ )?create secret (generic|tls) (\S+)((?:[^\n]*\\\n)*[^\n]*)", runbook):
        keys = set(re.findall(r"--from-(?:literal|file)=([A-Za-z0-9._-]+)=", m[3]))
        if m[1] == "tls":
            keys |= {"tls.crt", "tls.key"}
        created.setdefault(m[2], set()).update(keys)  # a Secret may be named again (rotation)
    assert len(created) >= 6, created
    for name, template in pod_specs(docs).items():
        spec = template["spec"]
        for c in spec["containers"]:
            for env in c.get("env", []):
                assert "value" not in env or not re.search(r"PASSWORD|SECRET_ID$|TOKEN$|_URL$", env["name"]), (
                    name,
                    env,
                )
                assert "secretKeyRef" not in env.get("valueFrom", {}), f"{name}: secrets as files, not env"
        for vol in spec["volumes"]:
            for source in vol.get("projected", {}).get("sources", []):
                if "secret" in source:
                    secret = source["secret"]
                    assert secret["name"] in created, (
                        f"{name}: Secret {secret['name']} is not created in deploy/README.md"
                    )
                    for item in secret["items"]:
                        assert item["key"] in created[secret["name"]], (
                            f"{secret['name']}: key {item['key']} not created"
                        )


def test_the_setup_job_runs_once_per_apply(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    job = by_kind(docs, "Job")["lockgate-setup"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and spec["containers"][0]["args"] == ["lockgate", "setup"]
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["ttlSecondsAfterFinished"] > 0
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["LOCKGATE_LEDGER_URL_FILE"].endswith("ledger-migrate-url"), "the set-up migrates as the migration role"


def test_production_serves_people_over_tls_and_pins_its_registry() -> None:
    docs = render("overlays/production")
    (ingress,) = by_kind(docs, "Ingress").values()
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts <= {h for t in ingress["spec"]["tls"] for h in t["hosts"]}, "every host has TLS"
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"lockgate-inbox", "lockgate-codec"}
    for template in pod_specs(docs).values():
        for c in template["spec"]["containers"]:
            assert c["image"].startswith("registry.example.com/"), c["image"]
    worker = by_kind(docs, "Deployment")["lockgate-worker"]["spec"]["template"]["spec"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "lockgate-archive" for v in worker["volumes"])
