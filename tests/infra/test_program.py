"""The infra program under Pulumi mocks, per environment: inventory, schema, baseline and properties."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infra import generated, mocked
from infra import kafka_cluster as kafka_mod
from infra.config import ENVIRONMENTS
from infra.program import app_version
from pynomaly.topology import TOPOLOGY
from tests.infra.conftest import chart_objects, kinds, named, run_env
from tests.support.k8s import baseline_violations, count_kinds, format_kind_counts, load_yaml_documents, validate_object
from tools.helm import template_chart

# What each environment declares (the chart's other objects come on top; see tests/charts).  The pools'
# autoscalers are the chart's too, declared through a helm v3 Chart that these mocks expand.
EXPECTED_COUNTS = {
    "dev": {
        "ConfigMap": 2,
        "HorizontalPodAutoscaler": 7,
        "Job": 1,
        "Namespace": 1,
        "NetworkPolicy": 2,
        "PodDisruptionBudget": 1,
        "Secret": 4,
        "Service": 4,
        "ServiceAccount": 1,
        "StatefulSet": 2,
    },
    "onprem": {
        "ConfigMap": 3,
        "Deployment": 1,
        "Job": 1,
        "Namespace": 1,
        "NetworkPolicy": 2,
        "PodDisruptionBudget": 3,
        "ScaledObject": 7,
        "Secret": 4,
        "Service": 5,
        "ServiceAccount": 1,
        "StatefulSet": 2,
        "TriggerAuthentication": 2,
    },
    "cloud": {
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "ConfigMap": 3,
        "Deployment": 1,
        "Job": 1,
        "Namespace": 1,
        "NetworkPolicy": 2,
        "PodDisruptionBudget": 4,
        "ScaledObject": 7,
        "Secret": 4,
        "Service": 5,
        "ServiceAccount": 2,
        "StatefulSet": 3,
        "TriggerAuthentication": 2,
    },
}
AUTOSCALER_KINDS = ("ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler")
POOL_DEPLOYMENTS = {f"pynomaly-worker-{p.name}" for p in TOPOLOGY.worker_pools} | {
    f"pynomaly-consumer-{g.pool}" for g in TOPOLOGY.consumer_groups
}


def test_inventory_per_environment(capsys: pytest.CaptureFixture[str]) -> None:
    counts = {env: count_kinds(run_env(env).objects()) for env in ENVIRONMENTS}
    with capsys.disabled():
        print("\nKubernetes objects the Pulumi program declares, per environment (plus the chart's):")
        print(format_kind_counts(counts))
    assert counts == EXPECTED_COUNTS


def test_every_object_is_schema_valid_and_meets_the_baseline(env_run: mocked.MockedRun) -> None:
    findings = []
    for obj in env_run.objects():
        findings += validate_object(obj) + baseline_violations(obj)
    assert findings == []


def test_every_child_has_its_component_as_parent(env_run: mocked.MockedRun) -> None:
    by_urn = {r.urn: r for r in env_run.registrations}
    components = {r.urn for r in env_run.registrations if r.type.startswith("pynomaly:infra:")}
    assert {by_urn[u].type for u in components} == {
        "pynomaly:infra:Redis",
        "pynomaly:infra:Kafka",
        "pynomaly:infra:Application",
    }
    top_level = {"pulumi:providers:kubernetes", "kubernetes:core/v1:Namespace", *(by_urn[u].type for u in components)}
    # The autoscalers' helm v3 Chart is the Application's child; its objects are the chart's children.
    charts = {
        r.urn for r in env_run.registrations if r.type == "kubernetes:helm.sh/v3:Chart" and r.parent in components
    }
    for reg in env_run.registrations:
        if reg.type == "pulumi:pulumi:Stack":
            continue
        if reg.parent in charts:
            assert reg.type in (
                "kubernetes:keda.sh/v1alpha1:ScaledObject",
                "kubernetes:keda.sh/v1alpha1:TriggerAuthentication",
                "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
            ), reg.urn
            continue
        parent = by_urn.get(reg.parent)
        if reg.type in top_level:
            assert parent is None or parent.type == "pulumi:pulumi:Stack", reg.urn
        else:
            assert reg.parent in components, f"{reg.urn} is not parented to a component"


def test_provider_uses_server_side_apply_and_the_stack_namespace(env_run: mocked.MockedRun) -> None:
    (provider,) = env_run.by_type("pulumi:providers:kubernetes")
    assert provider.inputs["enableServerSideApply"] in (True, "true")
    assert provider.inputs["namespace"] == env_run.deployment.config.kubernetes.namespace
    namespaces = kinds(env_run, "Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == [env_run.deployment.config.kubernetes.namespace]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_secrets_are_secret_and_generated_not_configured(env_run: mocked.MockedRun) -> None:
    for reg in env_run.registrations:
        if reg.type == "kubernetes:core/v1:Secret":
            assert mocked.is_secret_input(reg.inputs["stringData"]), f"{reg.name}: stringData is not a secret"
    assert {"apiKey"} <= env_run.secret_outputs
    generated_secrets = env_run.by_type(generated.TYPE)
    passwords = {r.name for r in generated_secrets if r.inputs["kind"] == "password"}
    assert {
        "redis-password",
        "kafka-app-password",
        "kafka-admin-password",
        "app-api-key",
        "app-webhook-secret",
    } <= passwords
    assert env_run.deployment.redis.password is not None
    for output in (env_run.deployment.redis.url, env_run.deployment.kafka.password):
        assert _is_secret(output)


def _is_secret(output: object) -> bool:
    from pulumi.runtime.sync_await import _sync_await

    return bool(_sync_await(output.is_secret()))  # type: ignore[attr-defined]


def test_image_is_the_app_version_and_pinned(env_run: mocked.MockedRun) -> None:
    values = _chart_values(env_run)
    assert values["image"]["tag"] == app_version() != "latest"
    assert env_run.outputs["imageRef"].endswith(":" + app_version())


def _chart_values(run: mocked.MockedRun) -> dict:
    (chart,) = run.by_type("kubernetes:helm.sh/v4:Chart")
    return mocked.manifest(chart)["values"]


# -- Kafka ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "rf", "min_isr", "brokers"), [("dev", 1, 1, 1), ("onprem", 3, 2, 3), ("cloud", 3, 2, 3)]
)
def test_kafka_replication_follows_the_broker_count(env: str, rf: int, min_isr: int, brokers: int) -> None:
    run = run_env(env)
    broker = named(run, "StatefulSet", "pynomaly-kafka")
    assert broker["spec"]["replicas"] == brokers
    fmt = next(c for c in broker["spec"]["template"]["spec"]["initContainers"] if c["name"] == "format")
    env_vars = {e["name"]: e.get("value") for e in fmt["env"]}
    assert (env_vars["REPLICATION_FACTOR"], env_vars["MIN_INSYNC_REPLICAS"]) == (str(rf), str(min_isr))
    plan = named(run, "ConfigMap", "pynomaly-kafka-scripts")["data"]["topics.plan"]
    for topic in TOPOLOGY.topics:
        assert re.search(
            rf"^{re.escape(topic.name)} {topic.partitions} {rf} {min_isr} {topic.retention_ms}$", plan, re.M
        ), topic.name
        assert f"{topic.dead_letter} 1 {rf} {min_isr} " in plan
    values = _chart_values(run)["kafka"]
    assert (values["replicationFactor"], values["minInsyncReplicas"]) == (rf, min_isr)


def test_kafka_cluster_shape(env_run: mocked.MockedRun) -> None:
    cfg = env_run.deployment.config.kafka
    headless = named(env_run, "Service", "pynomaly-kafka-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    statefulsets = [s for s in kinds(env_run, "StatefulSet") if s["metadata"]["name"].startswith("pynomaly-kafka")]
    assert len(statefulsets) == (2 if cfg.controllers else 1)
    for sts in statefulsets:
        name = sts["metadata"]["name"]
        assert sts["spec"]["serviceName"] == "pynomaly-kafka-headless"
        pdb = named(env_run, "PodDisruptionBudget", name)
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": sts["spec"]["selector"]}
        pod = sts["spec"]["template"]["spec"]
        zone = next(c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone")
        assert zone["whenUnsatisfiable"] == ("DoNotSchedule" if cfg.zone_spread else "ScheduleAnyway")
        pvc = sts["spec"]["volumeClaimTemplates"][0]["spec"]
        assert pvc.get("storageClassName") == cfg.storage_class
        env = {e["name"]: e for e in next(c for c in pod["initContainers"] if c["name"] == "format")["env"]}
        assert env["CLUSTER_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "pynomaly-kafka-cluster",
            "key": kafka_mod.KEY_CLUSTER_ID,
        }
    cluster = named(env_run, "Secret", "pynomaly-kafka-cluster")["stringData"]
    voters = cfg.controllers or cfg.brokers
    dir_ids = [cluster[f"controller-{i}-directory-id"] for i in range(voters)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", v) for v in [*dir_ids, cluster["cluster-id"]])
    voter_sts = named(env_run, "StatefulSet", "pynomaly-kafka-controller" if cfg.controllers else "pynomaly-kafka")
    fmt = next(c for c in voter_sts["spec"]["template"]["spec"]["initContainers"] if c["name"] == "format")
    initial = next(e["value"] for e in fmt["env"] if e["name"] == "INITIAL_CONTROLLERS")
    assert [v.rsplit(":", 1)[1] for v in initial.split(",")] == dir_ids
    script = named(env_run, "ConfigMap", "pynomaly-kafka-scripts")["data"]["kafka-format.sh"]
    assert "meta.properties" in script and "advertised.listeners=$ADVERTISED" in script
    assert "$SCRAM_MECHANISM=[name=$APP_USER" in script  # what it writes: tests/infra/test_scripts.py
    assert {"SASL": "yes", "SCRAM_MECHANISM": "SCRAM-SHA-512", "APP_USER": "pynomaly"}.items() <= {
        e["name"]: e.get("value") for e in fmt["env"]
    }.items()


def test_cloud_brokers_take_their_rack_from_the_zone() -> None:
    run = run_env("cloud")
    pod = named(run, "StatefulSet", "pynomaly-kafka")["spec"]["template"]["spec"]
    rack = next(c for c in pod["initContainers"] if c["name"] == "rack")
    assert rack["command"] == ["/bin/sh", "/scripts/kafka-rack.sh"]
    scripts = named(run, "ConfigMap", "pynomaly-kafka-scripts")["data"]
    assert "topology\\.kubernetes\\.io/zone" in scripts["kafka-rack.sh"]
    assert pod["serviceAccountName"] == "pynomaly-kafka-rack" and pod["automountServiceAccountToken"] is False
    (role,) = kinds(run, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    assert "broker.rack=$RACK" in scripts["kafka-format.sh"]


# -- Redis ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "mode"), [("dev", "standalone"), ("onprem", "sentinel"), ("cloud", "sentinel")])
def test_redis_mode_and_broker_safety(env: str, mode: str) -> None:
    run = run_env(env)
    assert run.deployment.config.redis.mode == mode
    server = "pynomaly-redis" if mode == "standalone" else "pynomaly-redis-server"
    conf = named(run, "ConfigMap", f"{server}-config")["data"]["redis.conf"]
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert line in conf.splitlines()
    sts = named(run, "StatefulSet", server)
    containers = {c["name"] for c in sts["spec"]["template"]["spec"]["containers"]}
    assert containers == ({"redis"} if mode == "standalone" else {"redis", "sentinel"})
    assert named(run, "Service", f"{server}-headless")["spec"]["publishNotReadyAddresses"] is True
    # The app always reaches the master through the Service named pynomaly-redis.
    assert named(run, "Service", "pynomaly-redis")["spec"]["ports"][0]["port"] == 6379
    if mode == "sentinel":
        assert sts["spec"]["replicas"] == 3
        assert named(run, "PodDisruptionBudget", server)["spec"]["maxUnavailable"] == 1
        proxy = named(run, "ConfigMap", "pynomaly-redis-proxy")["data"]["haproxy.cfg"]
        assert "role:master" in proxy and proxy.count(" server redis") == 3
        assert sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]


@pytest.mark.parametrize(("env", "keda"), [("dev", False), ("onprem", True), ("cloud", True)])
def test_redis_answers_only_the_app_its_own_pods_and_keda(env: str, keda: bool) -> None:
    run = run_env(env)
    policy = named(run, "NetworkPolicy", "pynomaly-redis")["spec"]
    selected = policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
    # Every Redis pod (servers, Sentinels, HAProxy) carries the name the policy selects.
    for kind in ("StatefulSet", "Deployment"):
        for obj in kinds(run, kind):
            if obj["metadata"]["name"].startswith("pynomaly-redis"):
                assert obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == selected
    assert policy["policyTypes"] == ["Ingress"]
    peers, *scaler = policy["ingress"]
    (expression,) = peers["from"][0]["podSelector"]["matchExpressions"]
    assert expression["operator"] == "In" and set(expression["values"]) == {"pynomaly", "pynomaly-redis"}
    assert {p["port"] for p in peers["ports"]} == {6379, 26379}
    if keda:
        assert scaler[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
        assert [p["port"] for p in scaler[0]["ports"]] == [6379]
    else:
        assert scaler == []


@pytest.mark.parametrize(("env", "keda"), [("dev", False), ("onprem", True), ("cloud", True)])
def test_kafka_clients_are_the_app_its_own_pods_and_keda(env: str, keda: bool) -> None:
    policy = named(run_env(env), "NetworkPolicy", "pynomaly-kafka")["spec"]
    brokers, clients = policy["ingress"]
    assert {p["port"] for p in brokers["ports"]} == {9092, 9093}  # controllers: Kafka pods only
    assert brokers["from"] == [{"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}]
    assert [p["port"] for p in clients["ports"]] == [9092]
    own_and_app, *scaler = clients["from"]
    (expression,) = own_and_app["podSelector"]["matchExpressions"]
    assert expression["operator"] == "In" and set(expression["values"]) == {"pynomaly", "pynomaly-kafka"}
    assert all(
        "namespaceSelector" not in peer or peer["namespaceSelector"].get("matchLabels") for peer in clients["from"]
    )  # never "every namespace"
    assert scaler == ([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}] if keda else [])


# -- autoscaling ------------------------------------------------------------------------------------


def _chart_kind(env: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in chart_objects(env) if o["kind"] == kind}


@pytest.mark.helm
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_hpa_xor_keda_per_target(env: str) -> None:
    run = run_env(env)
    keda = run.deployment.config.autoscaling.keda
    # The chart is the only implementation: the program declares exactly the autoscalers it renders.
    declared = sorted((o["kind"], o["metadata"]["name"]) for o in run.objects() if o["kind"] in AUTOSCALER_KINDS)
    assert declared == sorted(
        (o["kind"], o["metadata"]["name"])
        for o in chart_objects(env)
        if o["kind"] in AUTOSCALER_KINDS and o["spec"].get("scaleTargetRef", {}).get("name") != "pynomaly-api"
    )
    scaled = [o["spec"]["scaleTargetRef"]["name"] for o in _chart_kind(env, "ScaledObject").values()]
    hpas = [o["spec"]["scaleTargetRef"]["name"] for o in _chart_kind(env, "HorizontalPodAutoscaler").values()]
    assert set(scaled).isdisjoint(hpas)
    assert sorted(scaled if keda else hpas) == sorted(POOL_DEPLOYMENTS)
    assert not (hpas if keda else scaled)
    assert run.outputs["autoscaling"] == ("keda" if keda else "hpa")
    kind = "ScaledObject" if keda else "HorizontalPodAutoscaler"
    assert run.outputs["scaledTargets"] == {name: f"{kind}/{name}" for name in sorted(POOL_DEPLOYMENTS)}


@pytest.mark.helm
@pytest.mark.parametrize("env", ["onprem", "cloud"])
def test_keda_worker_formula_sums_every_priority_list(env: str) -> None:
    run = run_env(env)
    scaling = run.deployment.config.autoscaling
    for pool in TOPOLOGY.worker_pools:
        obj = _chart_kind(env, "ScaledObject")[f"pynomaly-worker-{pool.name}"]
        lists = [lst for q in pool.queues for lst in TOPOLOGY.queue(q).redis_lists()]
        triggers = obj["spec"]["triggers"]
        assert [t["metadata"]["listName"] for t in triggers] == lists
        assert all(t["type"] == "redis" and t["authenticationRef"]["name"] == "pynomaly-redis" for t in triggers)
        assert {t["metadata"]["listLength"] for t in triggers} == {str(scaling.workers[pool.name].target)}
        modifiers = obj["spec"]["advanced"]["scalingModifiers"]
        assert sorted(modifiers["formula"].split(" + ")) == sorted(t["name"] for t in triggers)
        scale_to_zero = pool.batch and scaling.scale_to_zero_batch
        assert (obj["spec"]["minReplicaCount"] == 0) == scale_to_zero
        # Scale-down waits the cooldown below max too (the HPA's window), not the HPA's default 300 s.
        behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == scaling.cooldown_period


@pytest.mark.helm
@pytest.mark.parametrize("env", ["onprem", "cloud"])
def test_keda_consumers_on_lag_capped_at_partitions(env: str) -> None:
    run = run_env(env)
    for group in TOPOLOGY.consumer_groups:
        obj = _chart_kind(env, "ScaledObject")[f"pynomaly-consumer-{group.pool}"]
        (trigger,) = obj["spec"]["triggers"]  # the group's whole lag: every topic it reads, summed
        assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == group.name
        assert "topic" not in trigger["metadata"]
        assert trigger["metadata"]["version"] == run.deployment.config.kafka.version
        assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "disable"
        assert obj["spec"]["maxReplicaCount"] <= TOPOLOGY.max_partitions(group)
    auth = _chart_kind(env, "TriggerAuthentication")["pynomaly-kafka"]["spec"]
    assert auth["secretTargetRef"] == [{"parameter": "password", "name": "pynomaly-app", "key": "kafka-sasl-password"}]
    assert auth["env"] == [{"parameter": "username", "name": "PYNOMALY_KAFKA_SASL_USERNAME"}]


@pytest.mark.helm
def test_keda_trusts_the_kafka_ca_of_a_tls_listener(tmp_path: Path) -> None:
    config = mocked.stack_file("onprem")
    config["pynomaly:kafka"] = {**config["pynomaly:kafka"], "tlsSecret": "pynomaly-kafka-tls"}
    values = mocked.run("onprem", config=config).chart_values()
    assert values["autoscaling"]["keda"]["kafkaCaSecret"] == "pynomaly-kafka-tls"
    (tmp_path / "values.json").write_text(json.dumps(values))
    objects = load_yaml_documents(template_chart([tmp_path / "values.json"]))
    (auth,) = [o for o in objects if o["kind"] == "TriggerAuthentication" and o["metadata"]["name"] == "pynomaly-kafka"]
    assert {"parameter": "ca", "name": "pynomaly-kafka-tls", "key": "ca.crt"} in auth["spec"]["secretTargetRef"]
    lag = [
        o["spec"]["triggers"][0]["metadata"]
        for o in objects
        if o["kind"] == "ScaledObject" and o["metadata"]["name"].startswith("pynomaly-consumer-")
    ]
    assert lag and {m["tls"] for m in lag} == {"enable"}


@pytest.mark.helm
def test_hpa_max_is_capped_at_partitions_too() -> None:
    for group in TOPOLOGY.consumer_groups:
        hpa = _chart_kind("dev", "HorizontalPodAutoscaler")[f"pynomaly-consumer-{group.pool}"]
        assert hpa["spec"]["maxReplicas"] <= TOPOLOGY.max_partitions(group)
        assert hpa["spec"]["minReplicas"] >= 1
        cpu = run_env("dev").deployment.config.autoscaling.cpu_utilization
        assert [m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]] == [cpu]


def test_outputs_tell_a_user_how_to_reach_things(env_run: mocked.MockedRun) -> None:
    out = env_run.outputs
    for key in (
        "namespace",
        "apiUrl",
        "apiAccess",
        "appSecretName",
        "redisEndpoint",
        "redisSecretName",
        "kafkaBootstrapServers",
        "kafkaSecretName",
    ):
        assert out[key], key
    mode = env_run.deployment.config.expose.mode
    if mode == "portForward":
        assert out["apiAccess"].startswith("kubectl -n ") and "port-forward svc/pynomaly-api" in out["apiAccess"]
    if mode == "ingress":
        assert out["apiUrl"].startswith("http") and env_run.deployment.config.expose.host in out["apiUrl"]


def test_chart_transform_leaves_pool_replicas_to_the_autoscaler() -> None:
    import pulumi

    app = run_env("onprem").deployment.application

    def transform(kind: str, name: str) -> pulumi.ResourceTransformResult | None:
        return app._leave_replicas(
            pulumi.ResourceTransformArgs(
                custom=True,
                type_=kind,
                name=f"app-chart:pynomaly/{name}",
                props={"metadata": {"name": name}},
                opts=pulumi.ResourceOptions(),
            )
        )

    result = transform("kubernetes:apps/v1:Deployment", "pynomaly-worker-detection")
    assert result is not None and result.opts.ignore_changes == ["spec.replicas"]
    assert transform("kubernetes:apps/v1:Deployment", "pynomaly-api") is None  # the API keeps its replicas
    assert transform("kubernetes:core/v1:Service", "pynomaly-worker-detection") is None
