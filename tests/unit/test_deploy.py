"""The deployment artefacts, validated offline: Kubernetes manifests (kustomize), the
Prometheus rules, the Grafana dashboard and the Dockerfile.

* Every kustomization is rendered with ``kubectl kustomize``; core resources are validated
  against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown fields fail);
  KEDA and Prometheus Operator resources against models generated from their CRDs
  (``cloudcoil-models-*``, unknown fields fail too); Strimzi ``KafkaTopic`` structurally.
* The manifests must agree with the code: every environment variable is a ``Settings`` field,
  topics match ``streams.adapters.kafka.topic_specs``, probes hit the worker's HTTP port, the CLI
  subcommands exist, metric names exist in ``streams.metrics``.
* ``promtool`` checks and unit-tests the rules (Debian package ``prometheus``).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from streams import metrics
from streams.adapters.kafka import topic_specs
from streams.cli import main as cli
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "touchpoints-dashboard.json"
KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")
KUBERNETES_VERSION = "1.30.0"  # oldest Kubernetes minor the manifests must be valid for

OVERLAYS = sorted(
    str(p.relative_to(K8S))
    for p in (K8S / "overlays").iterdir()
    if (p / "kustomization.yaml").exists()
)
TARGETS = ["base", *OVERLAYS]
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
SECRET_ENV = {
    name.upper() for name, field in Settings.model_fields.items() if field.annotation is SecretStr
}
CRD_KINDS = {
    "KafkaTopic",
    "ScaledObject",
    "TriggerAuthentication",
    "ServiceMonitor",
    "PrometheusRule",
}
NAMESPACED_KINDS = {
    "ServiceAccount", "ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "Job",
    "NetworkPolicy", *CRD_KINDS,
}  # fmt: skip
WORKLOAD_KINDS = {"StatefulSet", "Job"}

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed (apt-get install kubectl): it renders kustomize",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)


# --- helpers ---------------------------------------------------------------------------------


@functools.cache
def _rendered(target: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(target: str) -> list[dict[str, Any]]:
    """The resources of one kustomization (a deep copy: tests may mutate it)."""
    return copy.deepcopy(list(_rendered(target)))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker container of the StatefulSet."""
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "worker"]
    return container


def config_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """Every environment variable a container gets: name -> literal value (None if a secret)."""
    env: dict[str, str | None] = {}
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(docs, "ConfigMap")}
    for source in container.get("envFrom", []):
        assert set(source) <= {"configMapRef"}, f"unexpected envFrom {source}: secrets go by key"
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def settings_from(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a worker of this rendering would build from its environment."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in container_env(docs, worker(docs)).items():
        monkeypatch.setenv(name, value if value is not None else "from-a-secret")
    return Settings()


Deployed = tuple[list[dict[str, Any]], Settings]


@pytest.fixture(params=TARGETS)
def deployed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Deployed:
    """A target's rendered documents, and the Settings its worker builds from their
    configuration (raises if a value does not validate)."""
    docs = render(request.param)
    return docs, settings_from(docs, monkeypatch)


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in WORKLOAD_KINDS
    ]


_QUANTITY = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "m": 1e-3,
}


def quantity(value: str | int | float) -> float:
    text = str(value)
    for suffix in sorted(_QUANTITY, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _QUANTITY[suffix]
    return float(text)


def metric_names() -> set[str]:
    """Every sample name streams.metrics can expose."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def rules_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return data


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_targets(datasource_type: str) -> list[dict[str, Any]]:
    return [
        t
        for p in dashboard()["panels"]
        for t in p.get("targets", [])
        if t.get("datasource", p.get("datasource", {})).get("type") == datasource_type
    ]


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables with values Prometheus accepts."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("$consumergroup", "touchpoints")
    )


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


# --- Kubernetes: rendering and schemas -------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_kustomization_renders_the_whole_application(target: str) -> None:
    kinds = {d["kind"] for d in render(target)}
    expected = {
        "ServiceAccount", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "Job",
        "NetworkPolicy", "KafkaTopic", "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip
    assert expected <= kinds, f"{target} lacks {expected - kinds}"
    jobs = {
        j["spec"]["template"]["spec"]["containers"][0]["args"][0]
        for j in of_kind(render(target), "Job")
    }
    assert jobs == {"migrate", "topics"}


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"overlays/dev", "overlays/prod"} <= set(OVERLAYS)


@needs_kubectl
def test_base_is_namespace_agnostic_and_overlays_set_one_namespace() -> None:
    assert [d["metadata"]["name"] for d in render("base") if "namespace" in d["metadata"]] == []
    for overlay in OVERLAYS:
        namespaces = {d["metadata"].get("namespace") for d in render(overlay)}
        assert len(namespaces) == 1 and None not in namespaces, f"{overlay}: {namespaces}"
        assert {d["kind"] for d in render(overlay)} <= NAMESPACED_KINDS


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_core_resources_are_valid_kubernetes_objects(target: str) -> None:
    import kubernetes_validate

    checked = 0
    for doc in render(target):
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{target}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
        checked += 1
    assert checked >= 9


@needs_kubectl
def test_the_schema_validation_does_catch_mistakes() -> None:
    """Guards the test above: a misspelt field and a wrong type must be rejected."""
    import kubernetes_validate

    statefulset = one(render("base"), "StatefulSet")
    typo = copy.deepcopy(statefulset)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(statefulset)
    wrong_type["spec"]["replicas"] = "three"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _crd_model(kind: str) -> Any:
    models: dict[str, Any] = {}
    try:
        from cloudcoil.models.keda import v1alpha1 as keda
        from cloudcoil.models.prometheus_operator import v1 as monitoring
    except ImportError:  # pragma: no cover - dev extras missing
        pytest.skip("cloudcoil-models-keda / cloudcoil-models-prometheus-operator not installed")
    models = {
        "ScaledObject": keda.ScaledObject,
        "TriggerAuthentication": keda.TriggerAuthentication,
        "ServiceMonitor": monitoring.ServiceMonitor,
        "PrometheusRule": monitoring.PrometheusRule,
    }
    return models[kind]


def _crd_problems(doc: dict[str, Any]) -> list[str]:
    """Validate against the model generated from the CRD; unknown fields count as errors."""
    import pydantic

    model = _crd_model(doc["kind"])
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as exc:
        return [str(exc)]
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return [] if dumped == doc else [f"unknown or altered fields: {_diff(doc, dumped)}"]


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path or "."]


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_keda_and_prometheus_operator_resources_match_their_crds(target: str) -> None:
    docs = [d for d in render(target) if d["kind"] in CRD_KINDS - {"KafkaTopic"}]
    assert docs
    problems = {f"{d['kind']}/{d['metadata']['name']}": _crd_problems(d) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


@needs_kubectl
def test_the_crd_validation_does_catch_mistakes() -> None:
    docs = render("overlays/prod")
    scaled = one(docs, "ScaledObject")
    scaled["spec"]["maxReplicaCounts"] = 3  # misspelt
    monitor = one(docs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"  # not a duration
    assert _crd_problems(scaled) and _crd_problems(monitor)


# --- Kubernetes: the manifests agree with the code --------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_environment_variable_is_a_settings_field(target: str) -> None:
    docs = render(target)
    names: set[str] = set()
    for config in of_kind(docs, "ConfigMap"):
        names |= set(config["data"])
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            names |= set(container_env(docs, container))
    for scaled in of_kind(docs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            names |= {v for k, v in trigger["metadata"].items() if k.endswith("FromEnv")}
    for auth in of_kind(docs, "TriggerAuthentication"):
        names |= {e["name"] for e in auth["spec"].get("env", [])}
    assert names, "no environment at all?"
    assert sorted(names - SETTINGS_ENV) == []


@needs_kubectl
def test_the_configuration_is_valid_for_settings(deployed: Deployed) -> None:
    docs, settings = deployed
    # The embedded engine is for local runs: on Kubernetes the sink writes to a server.
    assert settings.clickhouse_url.startswith(("http://", "https://"))
    assert settings.sink_enabled
    assert settings.table_store in {"memory://", "rocksdb://"}
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            env = container_env(docs, container)
            assert set(env) >= {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL"}, name


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_jobs_and_the_worker_run_real_cli_subcommands(target: str) -> None:
    docs = render(target)
    assert worker(docs)["args"] == ["worker"]
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            command = container["args"][0]
            assert command in cli.commands, f"{name}: touchpoints {command} does not exist"
            assert "command" not in container, f"{name}: the image's ENTRYPOINT is touchpoints"


@needs_kubectl
def test_probes_hit_healthz_and_readyz_on_the_web_port(deployed: Deployed) -> None:
    docs, settings = deployed
    container = worker(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": settings.web_port}
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == settings.web_port
    # Both Services reach the same named port; the metrics one is what Prometheus scrapes.
    for service in of_kind(docs, "Service"):
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http-metrics"]
        assert (
            service["spec"]["selector"].items()
            <= one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"].items()
        )


@needs_kubectl
def test_topics_match_the_topic_specs_of_the_code(deployed: Deployed) -> None:
    """topics.yaml (Strimzi) and `touchpoints topics` (the Job, the worker) create the same."""
    docs, settings = deployed
    declared = {}
    for topic in of_kind(docs, "KafkaTopic"):
        assert topic["apiVersion"] in {"kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"}
        assert topic["metadata"]["labels"].get("strimzi.io/cluster"), (
            "Strimzi needs the cluster label"
        )
        spec = topic["spec"]
        assert isinstance(spec["partitions"], int) and isinstance(spec["replicas"], int)
        assert all(isinstance(v, str | int | float | bool) for v in spec["config"].values())
        declared[spec["topicName"]] = (
            spec["partitions"],
            spec["replicas"],
            {k: str(v) for k, v in spec["config"].items()},
        )
    expected = {
        s.name: (s.partitions, s.replication_factor, s.config) for s in topic_specs(settings)
    }
    missing = sorted(set(expected) - set(declared))
    assert not missing, f"add these topics to deploy/k8s/base/topics.yaml: {missing}"
    assert declared == expected


@needs_kubectl
def test_autoscaling_follows_the_partitions_and_the_consumer_groups(deployed: Deployed) -> None:
    docs, settings = deployed
    scaled_objects = of_kind(docs, "ScaledObject")
    statefulset = one(docs, "StatefulSet")
    if not scaled_objects:  # a fixed number of workers (dev)
        assert 1 <= statefulset["spec"]["replicas"] <= settings.topic_partitions
        return
    env = container_env(docs, worker(docs))
    (scaled,) = scaled_objects
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target_ref = spec["scaleTargetRef"]
    assert (target_ref["kind"], target_ref["name"]) == (
        "StatefulSet",
        statefulset["metadata"]["name"],
    )
    assert target_ref.get("envSourceContainerName", "worker") == "worker"
    assert spec["minReplicaCount"] == statefulset["spec"]["replicas"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.topic_partitions
    groups = {}
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        for key, value in meta.items():
            if key.endswith("FromEnv"):
                assert value in env, f"KEDA reads {value}, which the worker does not have"
        bootstrap = (
            env[meta["bootstrapServersFromEnv"]]
            if "bootstrapServersFromEnv" in meta
            else meta["bootstrapServers"]
        )
        assert bootstrap == settings.kafka_bootstrap_servers
        group = (
            env[meta["consumerGroupFromEnv"]]
            if "consumerGroupFromEnv" in meta
            else meta["consumerGroup"]
        )
        groups[group] = meta["topic"]
        assert int(meta["lagThreshold"]) > 0
        assert meta.get("allowIdleConsumers", "false") == "false"
        assert meta["offsetResetPolicy"] == "earliest"  # as the workers' consumers
        uses_sasl = settings.kafka_security_protocol.value.startswith("SASL")
        assert ("sasl" in meta) == uses_sasl
        if uses_sasl:
            assert meta["sasl"] == settings.kafka_sasl_mechanism.lower().replace("-", "_").replace(
                "scram_sha_", "scram_sha"
            )
            assert meta["tls"] == (
                "enable" if "SSL" in settings.kafka_security_protocol.value else "disable"
            )
            auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            params = {e["parameter"] for e in auth["spec"].get("env", [])}
            params |= {s["parameter"] for s in auth["spec"].get("secretTargetRef", [])}
            assert {"username", "password"} <= params
    assert groups == {
        settings.app_id: settings.topics.raw,
        settings.sink_group_id: settings.topics.resolved,
    }


@needs_kubectl
def test_pods_run_locked_down_with_resources(deployed: Deployed) -> None:
    docs, settings = deployed
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] > 0, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                request, limit = resources["requests"][kind], resources["limits"][kind]
                assert 0 < quantity(request) <= quantity(limit), f"{name} {kind}"
    # The worker's DATA_DIR (tables) is on its persistent volume, not the read-only root.
    statefulset = one(docs, "StatefulSet")
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = worker(docs)["volumeMounts"]
    data_mount = [m for m in mounts if Path(settings.data_dir).is_relative_to(m["mountPath"])]
    assert [m["name"] for m in data_mount] == ["data"] and "data" in claims


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_statefulset_has_stable_identity_and_a_disruption_budget(target: str) -> None:
    docs = render(target)
    statefulset = one(docs, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    governing = one(docs, "Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


@needs_kubectl
def test_network_policy_allows_exactly_what_the_settings_need(deployed: Deployed) -> None:
    docs, settings = deployed
    spec = one(docs, "NetworkPolicy")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [settings.web_port]
    sources = ingress["from"]
    assert {"podSelector": {}} in sources
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in sources
    egress_ports = {
        (p.get("protocol", "TCP"), p["port"]) for rule in spec["egress"] for p in rule["ports"]
    }
    assert ("UDP", 53) in egress_ports
    for server in settings.kafka_bootstrap_servers.split(","):
        assert ("TCP", int(server.rsplit(":", 1)[1])) in egress_ports, f"Kafka {server}"
    url = urlsplit(settings.clickhouse_url)
    port = url.port or (8443 if url.scheme == "https" else 8123)
    assert ("TCP", port) in egress_ports, f"ClickHouse {settings.clickhouse_url}"
    assert all(rule.get("ports") for rule in spec["egress"]), "every egress rule names its ports"


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_value_is_inline(target: str) -> None:
    docs = render(target)
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            env = {v["name"]: v for v in container.get("env", [])}
            for secret in SECRET_ENV:
                assert secret in env, f"{name} does not get {secret}"
                assert "value" not in env[secret], f"{name}: {secret} inline"
                ref = env[secret]["valueFrom"]["secretKeyRef"]
                assert ref["key"] == secret
                assert ref["name"].startswith("touchpoints-secrets")
    for config in of_kind(docs, "ConfigMap"):
        leaked = set(config["data"]) & SECRET_ENV
        assert not leaked, f"secrets in a ConfigMap: {leaked}"
        assert not any(re.search(r"://[^/@]*:[^/@]+@", v) for v in config["data"].values()), (
            "credentials in a URL"
        )
    if target == "base":
        assert of_kind(docs, "Secret") == []
    for secret in of_kind(docs, "Secret"):  # only a generated one with empty values (dev)
        assert all(v == "" for v in secret.get("data", {}).values()), secret["metadata"]["name"]


def test_the_example_secret_is_complete_and_not_deployed() -> None:
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "touchpoints-secrets"
    assert set(example["stringData"]) == SECRET_ENV
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        listed = [*kustomization.get("resources", []), *kustomization.get("components", [])]
        listed += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
        assert not any("secret.example" in entry for entry in listed), path


@needs_kubectl
def test_dev_overlay_is_one_small_in_memory_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("overlays/dev")
    settings = settings_from(docs, monkeypatch)
    assert one(docs, "StatefulSet")["spec"]["replicas"] == 1
    assert of_kind(docs, "ScaledObject") == []
    assert settings.table_store == "memory://"
    assert settings.sink_enabled
    prod = worker(render("overlays/prod"))["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(worker(docs)["resources"]["limits"][kind]) < quantity(prod["limits"][kind])


@needs_kubectl
def test_prod_overlay_is_replicated_persistent_spread_and_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render("overlays/prod")
    settings = settings_from(docs, monkeypatch)
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 3 <= settings.topic_partitions
    assert settings.topic_replication_factor == 3
    assert {t["spec"]["replicas"] for t in of_kind(docs, "KafkaTopic")} == {3}
    assert settings.table_store == "rocksdb://"
    assert settings.sink_enabled and settings.clickhouse_url.startswith("https://")
    assert settings.kafka_security_protocol.value == "SASL_SSL"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    base_claim = one(render("base"), "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    size = quantity(claim["spec"]["resources"]["requests"]["storage"])
    assert size > quantity(base_claim["spec"]["resources"]["requests"]["storage"])
    pod = statefulset["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert pod["affinity"]["podAntiAffinity"]
    # The CA file the settings name is mounted from a Secret.
    mounts = {m["mountPath"] for m in worker(docs)["volumeMounts"]}
    assert str(Path(settings.kafka_ssl_cafile).parent) in mounts
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            image = container["image"]
            assert "@sha256:" in image or re.fullmatch(r".+:\d+\.\d+\.\d+", image), (
                f"{name}: {image}"
            )


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_operator_scrapes_the_metrics_service_as_job_touchpoints(target: str) -> None:
    docs = render(target)
    monitor = one(docs, "ServiceMonitor")
    selected = [
        s
        for s in of_kind(docs, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["touchpoints-metrics"]
    (service,) = selected
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    jobs_in_rules = set(re.findall(r'job="([^"]+)"', (PROMETHEUS / "rules.yml").read_text()))
    assert jobs_in_rules == {job}


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_prometheusrule_carries_the_rules_file(target: str) -> None:
    rule = one(render(target), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == rules_file()["groups"], (
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/rules.yml "
        "(refresh it: see deploy/README.md)"
    )


# --- Prometheus ------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_rules_and_the_example_config() -> None:
    for args in (("check", "rules", "rules.yml"), ("check", "config", "prometheus.yml")):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "rules.test.yml").read_text()))
    assert len(tested) >= 2
    result = _promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rules_cover_the_required_alerts_with_severity_and_summary() -> None:
    alerts = {r["alert"]: r for g in rules_file()["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "TouchpointsWorkerDown",
        "TouchpointsConsumerLagHigh",
        "TouchpointsConsumerLagGrowing",
        "TouchpointsDeadLetterRateHigh",
        "TouchpointsClickHouseInsertFailures",
        "TouchpointsNoEventsIngested",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert "touchpoints_dead_letters_total" in str(rules_file())
    assert (
        "touchpoints_clickhouse_insert_failures_total"
        in alerts["TouchpointsClickHouseInsertFailures"]["expr"]
    )


def test_rules_and_dashboard_use_only_metrics_the_worker_exports() -> None:
    known = metric_names()
    used = set(re.findall(r"\btouchpoints_[a-z_]+", json.dumps(rules_file())))
    used |= set(re.findall(r"\btouchpoints_[a-z_]+", json.dumps(dashboard_targets("prometheus"))))
    assert used, "no touchpoints metric referenced?"
    assert sorted(used - known) == []


@needs_promtool
def test_every_dashboard_promql_query_parses(tmp_path: Path) -> None:
    exprs = [grafana_to_promql(t["expr"]) for t in dashboard_targets("prometheus")]
    assert len(exprs) >= 8
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard_with_the_required_panels() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        uid = panel["datasource"]["uid"]
        match = re.fullmatch(r"\$\{(\w+)\}", uid)
        assert match and variables[match[1]]["type"] == "datasource", panel["title"]
        assert variables[match[1]]["query"] == panel["datasource"]["type"], panel["title"]
    prom = " ".join(t["expr"] for t in dashboard_targets("prometheus"))
    assert "sum by (channel) (rate(touchpoints_valid_events_total" in prom
    assert "sum by (reason) (rate(touchpoints_dead_letters_total" in prom
    assert "touchpoints_clickhouse_rows_written_total" in prom
    assert "touchpoints_clickhouse_insert_seconds_bucket" in prom
    assert "kafka_consumergroup_lag" in prom


def test_dashboard_clickhouse_panel_counts_events_per_minute_by_channel() -> None:
    (target,) = dashboard_targets("grafana-clickhouse-datasource")
    sql = target["rawSql"]
    assert "FROM touchpoints.touchpoints_v" in sql
    assert "$__timeFilter(occurred_at)" in sql
    assert re.search(r"toStartOfMinute\(occurred_at\)", sql)
    assert re.search(r"GROUP BY .*channel", sql)
    assert target["editorType"] == "sql"
    schema = "\n".join(
        p.read_text() for p in (REPO / "streams" / "adapters" / "migrations").glob("*.sql")
    )
    assert re.search(r"VIEW IF NOT EXISTS \{db\}\.touchpoints_v", schema)
    for column in ("occurred_at", "channel"):
        assert re.search(rf"^\s+{column}\s", schema, re.M), column


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    out = []
    for line in lines:
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def _env_pairs(args: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", args))


def test_dockerfile_is_multistage_on_a_pinned_slim_python_311() -> None:
    steps = _dockerfile()
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    images = [a.split()[0] for i, a in steps if i == "FROM"]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image) for image in images]
    assert len(resolved) >= 2, "multi-stage build"
    external = [image for image in resolved if ":" in image]
    assert external
    for image in external:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    assert re.search(r"COPY --from=\w+", " ".join(f"{i} {a}" for i, a in steps))


def test_dockerfile_runs_touchpoints_worker_as_a_non_root_user() -> None:
    steps = _dockerfile()
    final = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    users = [a for i, a in final if i == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "numeric non-root uid (runAsNonRoot can verify it)"
    entrypoint = json.loads(next(a for i, a in final if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in final if i == "CMD"))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["touchpoints"] and "touchpoints" in scripts
    assert cmd == ["worker"] and cmd[0] in cli.commands
    assert [a for i, a in final if i == "EXPOSE"] == [
        str(Settings.model_fields["web_port"].default)
    ]
    healthcheck = next(a for i, a in final if i == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    if KUBECTL:
        pod = one(render("base"), "StatefulSet")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid)


def test_dockerfile_ships_the_schemas_and_points_settings_at_them() -> None:
    steps = _dockerfile()
    final = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    env: dict[str, str] = {}
    for instruction, args in final:
        if instruction == "ENV":
            env.update(_env_pairs(args))
    assert set(env) & SETTINGS_ENV >= {"SCHEMAS_DIR", "DATA_DIR"}
    copies = [a.split() for i, a in final if i == "COPY" and not a.startswith("--from")]
    assert ["schemas/", env["SCHEMAS_DIR"].rstrip("/") + "/"] in copies
    # Every file the build copies from the context exists and is let through .dockerignore.
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction, args in steps:
        if instruction != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            if source.endswith("*"):  # optional (a wildcard may match nothing)
                continue
            assert (REPO / source).exists(), source
            assert f"!{source}" in ignore, f".dockerignore must let {source} through"
    assert ignore[0] == "**", ".dockerignore starts from nothing and lets files in"
