"""The onprem stack on real pods, with faults injected (the on-prem live tier: `./dev test --cluster-chaos`).

One deployment of the onprem stack, its topology as declared (3 KRaft brokers with RF 3 / min ISR 2,
3 Redis + Sentinel pods behind HAProxy, every worker and consumer pool), its resources trimmed
through stack config (tests/cluster/onprem_live.py).  The tests run in order on it: the quorum and
the master form, a job completes, then a broker, the Redis master and a worker are deleted under
load and every event and job is counted.  Figures go to benchmarks/results/cluster-chaos.json.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pynomaly.demo import demo_dataset
from tests.cluster.deploying import (
    POD_SCRIPTS,
    DeployedStack,
    ForwardedApi,
    a_pod,
    deploy_env,
    get_json,
    pod_python,
    wait_for,
    workload_problems,
)
from tests.cluster.onprem_live import LIVE_OVERRIDES
from tools import deploy
from tools.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.timeout(1800)]

TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def onprem(
    local_cluster: LocalCluster,
    built_images: dict,
    tmp_path_factory: pytest.TempPathFactory,
    chaos_figures: dict[str, Any],
    keda: str,
) -> Iterator[DeployedStack]:
    """The stack as in production: KEDA running first, so its ScaledObjects own the pools' replicas."""
    namespace = deploy.stack_file("onprem")["pynomaly:kubernetes"]["namespace"]
    # No ingress controller here: stand in for it, so the deploy's wait for the Ingress ends.
    with local_cluster.announced_load_balancers(namespace):
        deployed = deploy_env(
            local_cluster, "onprem", built_images, tmp_path_factory.mktemp("deploy-onprem"), extra=LIVE_OVERRIDES
        )
    chaos_figures["onprem_up_seconds"] = round(deployed.seconds)
    try:
        yield deployed
    finally:
        deployed.destroy()
        wait_for(lambda: local_cluster.kubectl("get", "namespace", namespace, check=False).returncode == 0, timeout=180)
        local_cluster.recycle_volumes()


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster, onprem: DeployedStack) -> Iterator[ForwardedApi]:
    client = ForwardedApi(local_cluster, onprem)
    try:
        yield client
    finally:
        client.close()


# -- helpers ------------------------------------------------------------------------------------------


def _pods(cluster: LocalCluster, namespace: str, component: str) -> list[dict[str, Any]]:
    return get_json(cluster, "-n", namespace, "pods", "-l", f"app.kubernetes.io/component={component}")["items"]


def _redis_cli(cluster: LocalCluster, namespace: str, pod: str, container: str, *args: str) -> str:
    port = "26379" if container == "sentinel" else "6379"
    result = cluster.kubectl(
        "-n", namespace, "exec", pod, "-c", container, "--", "redis-cli", "-p", port, *args, check=False, timeout=30
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _sentinel_masters(cluster: LocalCluster, namespace: str) -> dict[str, str]:
    """Each Redis pod's sentinel: the master it names (pod name), '' when it does not answer."""
    named = {}
    for pod in _pods(cluster, namespace, "redis-server"):
        name = pod["metadata"]["name"]
        answer = _redis_cli(cluster, namespace, name, "sentinel", "sentinel", "get-master-addr-by-name", "pynomaly")
        named[name] = answer.split(".")[0] if answer else ""
    return named


def _roles(cluster: LocalCluster, namespace: str) -> dict[str, str]:
    roles = {}
    for pod in _pods(cluster, namespace, "redis-server"):
        info = _redis_cli(cluster, namespace, pod["metadata"]["name"], "redis", "info", "replication")
        roles[pod["metadata"]["name"]] = next(
            (line.split(":")[1].strip() for line in info.splitlines() if line.startswith("role:")), ""
        )
    return roles


def _app_restarts(cluster: LocalCluster, namespace: str) -> dict[str, int]:
    """Container restarts of every application pod (API, workers, consumers, beat)."""
    restarts = {}
    for pod in get_json(cluster, "-n", namespace, "pods", "-l", "app.kubernetes.io/name=pynomaly")["items"]:
        if pod["status"].get("phase") == "Running":
            restarts[pod["metadata"]["name"]] = sum(
                c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", [])
            )
    return restarts


def _submit_small_jobs(
    client: ForwardedApi, count: int, seed: int, rows: int = 60, steps: list[str] | None = None
) -> list[str]:
    rng = random.Random(seed)
    data = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(rows)]
    return [client.submit_rows(data, "hbos", steps=steps)["id"] for _ in range(count)]


def _wait_terminal(client: ForwardedApi, job_ids: list[str], timeout: float) -> tuple[dict[str, str], float]:
    """Poll every job until all are terminal (or the timeout); (id -> status, seconds waited).
    A failed poll (the API answering 5xx during a fault) is retried, not counted."""
    started = time.monotonic()
    status: dict[str, str] = {}
    while time.monotonic() - started < timeout:
        for job_id in job_ids:
            if status.get(job_id) not in TERMINAL:
                try:
                    status[job_id] = client.job(job_id)["status"]
                except Exception:  # an outage answer is what the loop waits out
                    time.sleep(1)
        if all(status.get(j) in TERMINAL for j in job_ids):
            break
        time.sleep(2)
    return status, time.monotonic() - started


# -- the stack forms ------------------------------------------------------------------------------


def test_three_brokers_form_a_quorum_and_three_redis_pods_elect_one_master(
    local_cluster: LocalCluster, onprem: DeployedStack, chaos_figures: dict[str, Any]
) -> None:
    ns = onprem.namespace
    problems = wait_for(lambda: workload_problems(local_cluster, ns), timeout=420)
    assert problems == [], problems
    pods = get_json(local_cluster, "-n", ns, "pods")["items"]
    assert all(p["spec"].get("nodeName") == "127.0.0.1" for p in pods)  # real pods, not fake nodes

    worker = a_pod(local_cluster, ns, "worker")
    kafka = pod_python(local_cluster, ns, worker, "kafka_topology.py")
    assert kafka["brokers"] == [0, 1, 2], kafka
    secret = get_json(local_cluster, "-n", ns, "secret", str(onprem.outputs()["kafkaClusterSecretName"]))
    assert base64.b64decode(secret["data"]["cluster-id"]).decode() == kafka["cluster_id"]
    app_topics = {name: t for name, t in kafka["topics"].items() if not name.startswith("chaos")}
    assert len(app_topics) >= 6, sorted(app_topics)
    for name, topic in app_topics.items():
        assert topic["min_insync"] == 2, (name, topic)
        assert all(p["replicas"] == 3 and p["isr"] == 3 for p in topic["partitions"]), (name, topic)

    roles = _roles(local_cluster, ns)
    assert sorted(roles.values()) == ["master", "slave", "slave"], roles
    (master,) = [pod for pod, role in roles.items() if role == "master"]
    assert set(_sentinel_masters(local_cluster, ns).values()) == {master}
    # HAProxy (the app's redis URL) reaches exactly that server.
    through_proxy = pod_python(local_cluster, ns, worker, "redis_role.py")
    direct = _redis_cli(local_cluster, ns, master, "redis", "info", "server")
    assert through_proxy["role"] == "master" and through_proxy["replicas"] == 2, through_proxy
    assert f"run_id:{through_proxy['run_id']}" in direct
    chaos_figures["onprem_pods"] = len(pods)


def test_a_detection_job_completes_end_to_end(
    local_cluster: LocalCluster, onprem: DeployedStack, api: ForwardedApi
) -> None:
    dataset, planted = demo_dataset()
    job_id = api.submit_csv(dataset, "iforest", contamination=0.03, steps=["preprocess", "detect", "report"])["id"]
    job = api.wait(job_id, timeout=300, interval=1)
    assert job["status"] == "completed", job
    found = {i for i, label in enumerate(api.result(job_id)["labels"]) if label}
    assert planted <= found, f"found {sorted(found & planted)} of {sorted(planted)}"


# -- faults -------------------------------------------------------------------------------------


def test_deleting_a_kafka_broker_mid_stream_loses_no_event_and_keeps_key_order(
    local_cluster: LocalCluster, onprem: DeployedStack, chaos_figures: dict[str, Any]
) -> None:
    ns = onprem.namespace
    worker = a_pod(local_cluster, ns, "worker")
    controller = pod_python(local_cluster, ns, worker, "kafka_topology.py")["controller"]
    # Combined broker+controller nodes: broker id = pod ordinal.  The active controller is the hardest hit.
    (victim,) = [
        p["metadata"]["name"]
        for p in _pods(local_cluster, ns, "kafka-broker")
        if p["metadata"]["name"].endswith(f"-{controller}")
    ]
    assert get_json(local_cluster, "-n", ns, "pod", victim)["status"]["phase"] == "Running", victim

    count, seconds = 10_000, 30
    stream = subprocess.Popen(
        [
            str(local_cluster.bins["kubectl"]),
            "--kubeconfig",
            str(local_cluster.kubeconfig),
            "-n",
            ns,
            "exec",
            "-i",
            worker,
            "--",
            "python3",
            "-",
            "chaos_orders",
            str(count),
            str(seconds),
        ],
        stdin=(POD_SCRIPTS / "kafka_chaos.py").open(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8)  # mid-stream: about a quarter produced
    local_cluster.kubectl("-n", ns, "delete", "pod", victim, "--wait=false")
    deleted = time.monotonic()
    out, err = stream.communicate(timeout=600)
    assert stream.returncode == 0, err[-2000:]
    counts = json.loads(out.strip().splitlines()[-1])
    print(f"\n[kafka fault] broker {controller} (the active controller) deleted mid-stream: {counts}")
    assert counts["acked"] == count and counts["error_count"] == 0, counts
    assert counts["received_unique"] == count, counts  # the consumer saw every event
    assert counts["order_violations"] == 0, counts

    def rejoined() -> bool:
        topics = pod_python(local_cluster, ns, worker, "kafka_topology.py")
        return not (
            topics["brokers"] == [0, 1, 2]
            and all(p["isr"] == 3 for p in topics["topics"]["chaos_orders"]["partitions"])
        )

    assert not wait_for(rejoined, timeout=300, interval=3), "the deleted broker did not rejoin every ISR"
    chaos_figures["kafka_broker_delete"] = {
        "events": count,
        "acked": counts["acked"],
        "received_unique": counts["received_unique"],
        "duplicates": counts["duplicates"],
        "order_violations": counts["order_violations"],
        "longest_ack_gap_s": counts["max_ack_gap_s"],
        "longest_consume_gap_s": counts["max_consume_gap_s"],
        "rejoined_all_isr_after_s": round(time.monotonic() - deleted),
    }


def test_deleting_the_redis_master_fails_over_and_loses_no_job(
    local_cluster: LocalCluster, onprem: DeployedStack, api: ForwardedApi, chaos_figures: dict[str, Any]
) -> None:
    ns = onprem.namespace
    roles = _roles(local_cluster, ns)
    (master,) = [pod for pod, role in roles.items() if role == "master"]
    restarts_before = _app_restarts(local_cluster, ns)

    # Three steps each on 1,500 rows, submitted by 8 clients at once: faster than the workers drain them,
    # so most of the 200 still wait when the master goes.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        job_ids = [
            j
            for batch in pool.map(
                lambda seed: _submit_small_jobs(
                    api, 25, seed=seed, rows=1500, steps=["preprocess", "detect", "report"]
                ),
                range(8),
            )
            for j in batch
        ]
    queued = sum(pod_python(local_cluster, ns, _steady_pod(local_cluster, ns), "queue_lengths.py").values())
    assert queued >= 20, f"only {queued} task messages waiting: the fault would hit an idle system"
    local_cluster.kubectl("-n", ns, "delete", "pod", master, "--wait=false")
    deleted = time.monotonic()

    def promoted() -> bool:
        named = {m for pod, m in _sentinel_masters(local_cluster, ns).items() if pod != master and m}
        return not (len(named) == 1 and master not in named)

    assert not wait_for(promoted, timeout=120, interval=0.5), "no replica was promoted"
    failover_s = time.monotonic() - deleted
    status, waited = _wait_terminal(api, job_ids, timeout=600)
    counted = {s: list(status.values()).count(s) for s in set(status.values())}
    print(
        f"\n[redis fault] master {master} deleted with {queued} task messages waiting in the queues: "
        f"promoted in {failover_s:.1f} s, all terminal after {waited:.0f} s: {counted}"
    )
    assert counted == {"completed": 200}, counted

    # The deleted pod came back as a replica of the new master; HAProxy routes to the new master.
    assert not wait_for(
        lambda: sorted(_roles(local_cluster, ns).values()) != ["master", "slave", "slave"], timeout=180, interval=2
    ), _roles(local_cluster, ns)
    assert _roles(local_cluster, ns)[master] == "slave"
    assert pod_python(local_cluster, ns, a_pod(local_cluster, ns, "worker"), "redis_role.py")["role"] == "master"
    # Every component reconnected by itself: no application container restarted.
    restarts_after = _app_restarts(local_cluster, ns)
    restarted = {pod: n for pod, n in restarts_after.items() if n > restarts_before.get(pod, 0)}
    assert restarted == {}, restarted
    chaos_figures["redis_master_delete"] = {
        "jobs": 200,
        "task_messages_waiting_at_delete": queued,
        "completed": counted.get("completed", 0),
        "promoted_after_s": round(failover_s, 1),
        "all_done_after_s": round(waited),
        "app_restarts": len(restarted),
    }


# -- KEDA on real backlog -------------------------------------------------------------------------


def _replicas(cluster: LocalCluster, namespace: str, deployment: str) -> int:
    return int(get_json(cluster, "-n", namespace, "deployment", deployment)["spec"].get("replicas", 1))


def _steady_pod(cluster: LocalCluster, namespace: str) -> str:
    """A running pod of the default worker pool, to run pod scripts from: no test scales or deletes it."""
    for pod in _pods(cluster, namespace, "worker"):
        if pod["metadata"]["name"].startswith("pynomaly-worker-default-") and pod["status"].get("phase") == "Running":
            return str(pod["metadata"]["name"])
    raise AssertionError("no running default worker")


def _write_csv(path: Any, rows: int, columns: int, seed: int) -> Any:
    rng = random.Random(seed)
    lines = [",".join(f"f{i}" for i in range(columns))]
    lines += [",".join(f"{rng.gauss(0, 1):.5f}" for _ in range(columns)) for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


class ReplicaWatch:
    """Samples a Deployment's replicas every 2 s in a thread: the most it ever had, and when it first grew."""

    def __init__(self, cluster: LocalCluster, namespace: str, deployment: str) -> None:
        import threading

        self.cluster, self.namespace, self.deployment = cluster, namespace, deployment
        self.start_replicas = _replicas(cluster, namespace, deployment)
        self.most = self.start_replicas
        self.grew_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2):
            try:
                now = _replicas(self.cluster, self.namespace, self.deployment)
            except Exception:  # an API hiccup under load: sample again
                continue
            if now > self.start_replicas and self.grew_at is None:
                self.grew_at = time.monotonic()
            self.most = max(self.most, now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_low_priority_backlog_scales_its_pool_up_and_back_down_without_killing_a_task(
    local_cluster: LocalCluster,
    onprem: DeployedStack,
    api: ForwardedApi,
    keda: str,
    chaos_figures: dict[str, Any],
    tmp_path: Any,
) -> None:
    ns, deployment = onprem.namespace, "pynomaly-worker-detection"
    scaled = get_json(local_cluster, "-n", ns, "scaledobject", deployment)["spec"]
    low, most = scaled["minReplicaCount"], scaled["maxReplicaCount"]
    assert not wait_for(lambda: _replicas(local_cluster, ns, deployment) != low, timeout=180), "not at its minimum"
    dataset = _write_csv(tmp_path / "wide.csv", 20_000, 8, seed=3)  # ocsvm: seconds per job, so a backlog forms

    watch = ReplicaWatch(local_cluster, ns, deployment)
    submitted = time.monotonic()
    job_ids = [api.submit_csv(dataset, "ocsvm", priority="low", steps=["detect"])["id"] for _ in range(16)]
    worker = _steady_pod(local_cluster, ns)
    lists = pod_python(local_cluster, ns, worker, "queue_lengths.py")
    try:
        grew = not wait_for(lambda: watch.grew_at is None, timeout=240, interval=1)
        assert grew, "the backlog did not scale the pool"
        scale_up_s = watch.grew_at - submitted  # type: ignore[operator]
        # The backlog waited on the lowest-priority list only: the trigger on `:9` is what scaled it.
        detection_lists = {name: n for name, n in lists.items() if name.startswith("anomaly_detection")}
        assert detection_lists.get("anomaly_detection:9", 0) > 0, detection_lists
        assert sum(detection_lists.values()) == detection_lists["anomaly_detection:9"], detection_lists

        # The lists empty while the last jobs still run; after the cooldown the pool goes back to its
        # minimum, and the replicas it removes stop by warm shutdown (grace period > the task's hard
        # limit): no task is cut short, none comes back as a redelivery.
        def backlog() -> int:
            return sum(
                n
                for name, n in pod_python(local_cluster, ns, worker, "queue_lengths.py").items()
                if name.startswith("anomaly_detection")
            )

        assert not wait_for(backlog, timeout=900, interval=3), "the backlog never drained"
        emptied = time.monotonic()
        assert not wait_for(lambda: _replicas(local_cluster, ns, deployment) != low, timeout=300, interval=2)
        scale_down_s = time.monotonic() - emptied
        running_at_scale_down = sum(1 for j in job_ids if api.job(j)["status"] == "running")
        status, drained = _wait_terminal(api, job_ids, timeout=900)
    finally:
        watch.stop()
    assert list(status.values()).count("completed") == len(job_ids), status
    assert low < watch.most <= most, (low, watch.most, most)
    jobs = [api.job(j) for j in job_ids]
    assert [j["attempts"] for j in jobs] == [1] * len(jobs), jobs  # no task failed or was cut short
    # A message a removed replica had reserved but not started goes back to the queue when it stops
    # (kombu restores a closing channel's unacked messages) and counts as a redelivery: reported.
    handed_back = sum(j["redeliveries"] for j in jobs)
    print(
        f"\n[keda] {len(job_ids)} low-priority jobs: {low} -> {watch.most} replicas, first new one "
        f"{scale_up_s:.0f} s after submitting; lists empty -> back to {low} in {scale_down_s:.0f} s with "
        f"{running_at_scale_down} jobs still running; all done {drained:.0f} s after that"
    )
    chaos_figures["keda_worker_backlog"] = {
        "jobs": len(job_ids),
        "priority": "low (list anomaly_detection:9)",
        "min": low,
        "max": most,
        "most_replicas": watch.most,
        "backlog_to_new_replica_s": round(scale_up_s),
        "lists_empty_to_min_s": round(scale_down_s),
        "jobs_running_at_scale_down": running_at_scale_down,
        "cooldown_s": int(LIVE_OVERRIDES["pynomaly:autoscaling.cooldownPeriod"]),
        "attempts_all_1": True,
        "redeliveries": handed_back,
    }


def test_consumer_lag_scales_the_audit_pool_within_its_partitions(
    local_cluster: LocalCluster, onprem: DeployedStack, keda: str, chaos_figures: dict[str, Any]
) -> None:
    ns, deployment = onprem.namespace, "pynomaly-consumer-audit"
    scaled = get_json(local_cluster, "-n", ns, "scaledobject", deployment)["spec"]
    low = scaled["minReplicaCount"]
    worker = _steady_pod(local_cluster, ns)
    partitions = len(pod_python(local_cluster, ns, worker, "kafka_topology.py")["topics"]["audit_events"]["partitions"])
    assert not wait_for(lambda: _replicas(local_cluster, ns, deployment) != low, timeout=180)

    watch = ReplicaWatch(local_cluster, ns, deployment)
    started = time.monotonic()
    try:
        flood = pod_python(local_cluster, ns, worker, "audit_flood.py", "60000", timeout=600)
        assert not wait_for(lambda: watch.grew_at is None, timeout=240, interval=1), "lag did not scale the pool"
        scale_up_s = watch.grew_at - started  # type: ignore[operator]
        assert not wait_for(lambda: _replicas(local_cluster, ns, deployment) != low, timeout=600, interval=3)
    finally:
        watch.stop()
    assert low < watch.most <= partitions, (low, watch.most, partitions)
    print(
        f"\n[keda] {flood['produced']} audit events in {flood['seconds']} s: {low} -> {watch.most} consumers "
        f"(partitions {partitions}), first new one {scale_up_s:.0f} s after the flood began"
    )
    chaos_figures["keda_consumer_lag"] = {
        "events": flood["produced"],
        "partitions": partitions,
        "min": low,
        "most_replicas": watch.most,
        "flood_to_new_replica_s": round(scale_up_s),
    }


# -- workers and upgrades -------------------------------------------------------------------------


def test_deleting_a_worker_pod_mid_job_lets_the_job_finish(
    local_cluster: LocalCluster, onprem: DeployedStack, api: ForwardedApi, chaos_figures: dict[str, Any], tmp_path: Any
) -> None:
    ns = onprem.namespace
    dataset = _write_csv(tmp_path / "long.csv", 40_000, 8, seed=5)
    job_id = api.submit_csv(dataset, "ocsvm", priority="high", steps=["detect"])["id"]
    assert not wait_for(lambda: api.job(job_id)["status"] != "running", timeout=180, interval=0.5)
    time.sleep(3)  # inside the fit
    pods = [
        p["metadata"]["name"]
        for p in _pods(local_cluster, ns, "worker")
        if p["metadata"]["name"].startswith("pynomaly-worker-detection-") and p["status"].get("phase") == "Running"
    ]
    assert pods
    # Every detection worker gets SIGTERM: the one running the job finishes it (warm shutdown within
    # the grace period), the others stop at once; the Deployment starts new ones meanwhile.
    local_cluster.kubectl("-n", ns, "delete", "pod", *pods, "--wait=false")
    deleted = time.monotonic()
    job = api.wait(job_id, timeout=300, interval=1)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    chaos_figures["worker_pod_delete"] = {
        "graceful": True,
        "completed_after_delete_s": round(time.monotonic() - deleted),
        "attempts": job["attempts"],
    }


def test_force_deleting_a_worker_pod_mid_job_runs_the_job_again_elsewhere(
    local_cluster: LocalCluster, onprem: DeployedStack, api: ForwardedApi, chaos_figures: dict[str, Any], tmp_path: Any
) -> None:
    """What an OOM kill or a lost node does: no SIGTERM, no warm shutdown.  The task's message stays
    unacked; another worker sees the dead one's alive key expire and puts it back on its queue."""
    ns = onprem.namespace
    dataset = _write_csv(tmp_path / "long.csv", 30_000, 8, seed=6)
    job_id = api.submit_csv(dataset, "ocsvm", priority="high", steps=["detect"])["id"]
    assert not wait_for(lambda: api.job(job_id)["status"] != "running", timeout=180, interval=0.5)
    time.sleep(2)
    pods = [
        p["metadata"]["name"]
        for p in _pods(local_cluster, ns, "worker")
        if p["metadata"]["name"].startswith("pynomaly-worker-detection-") and p["status"].get("phase") == "Running"
    ]
    local_cluster.kubectl("-n", ns, "delete", "pod", *pods, "--grace-period=0", "--force", "--wait=false")
    killed = time.monotonic()
    job = api.wait(job_id, timeout=600, interval=1)
    done_s = time.monotonic() - killed
    assert job["status"] == "completed", job
    assert job["redeliveries"] == 1, job
    print(
        f"\n[worker fault] {len(pods)} detection pods force-deleted mid-job: completed {done_s:.0f} s later, "
        f"redeliveries {job['redeliveries']}"
    )
    chaos_figures["worker_pod_force_delete"] = {
        "completed_after_kill_s": round(done_s),
        "redeliveries": job["redeliveries"],
    }


def test_upgrading_the_app_rolls_every_pool_without_losing_a_job_and_leaves_replicas_to_keda(
    local_cluster: LocalCluster, onprem: DeployedStack, api: ForwardedApi, keda: str, chaos_figures: dict[str, Any]
) -> None:
    import threading

    ns = onprem.namespace
    old_ref = str(onprem.outputs()["imageRef"])
    repository, old_tag = old_ref.rsplit(":", 1)
    new_tag = f"{old_tag}-next"
    # The "next release": the same bits under a new tag (a new tag is what rolls every pod).
    local_cluster.ctr("images", "tag", "--force", f"docker.io/{old_ref}", f"docker.io/{repository}:{new_tag}")

    job_ids: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        seed = 100
        while not stop.is_set():
            try:
                job_ids.extend(_submit_small_jobs(api, 1, seed=seed))
            except Exception as exc:  # not accepted (the client got no id): counted, not a lost job
                refused.append(repr(exc)[:200])
            seed += 1
            stop.wait(1.0)

    submitter = threading.Thread(target=keep_submitting, daemon=True)
    submitter.start()
    try:
        onprem.reopen(local_cluster, {"pynomaly:image.tag": new_tag})
        started = time.monotonic()
        counts = onprem.up()
        rolled_s = time.monotonic() - started
    finally:
        stop.set()
        submitter.join(timeout=30)
    assert counts.get("update", 0) >= 5, counts  # the API, beat, every worker and consumer Deployment
    status, _ = _wait_terminal(api, job_ids, timeout=600)
    counted = {s: list(status.values()).count(s) for s in set(status.values())}
    assert counted == {"completed": len(job_ids)} and len(job_ids) >= 10, counted

    app_pods = get_json(local_cluster, "-n", ns, "pods", "-l", "app.kubernetes.io/name=pynomaly")["items"]
    images_running = {
        c["image"] for p in app_pods if p["status"].get("phase") == "Running" for c in p["spec"]["containers"]
    }
    assert images_running == {f"{repository}:{new_tag}"}, images_running
    # No replica fight: the program and chart leave replicas alone, KEDA's HPAs keep setting them,
    # and a second preview finds nothing to change.
    for hpa in get_json(local_cluster, "-n", ns, "hpa")["items"]:
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert hpa["metadata"]["name"].startswith("keda-hpa-"), hpa["metadata"]["name"]
        desired = hpa["status"].get("desiredReplicas")
        assert desired is None or _replicas(local_cluster, ns, target) == desired, (target, desired)
    assert set(onprem.preview()) == {"same"}
    print(
        f"\n[upgrade] {len(job_ids)} jobs accepted during the rollout, all completed; {len(refused)} "
        f"submits refused: {refused[:3]}"
    )
    chaos_figures["upgrade"] = {
        "jobs_during_rollout": len(job_ids),
        "completed": counted.get("completed", 0),
        "submits_refused": len(refused),
        "up_seconds": round(rolled_s),
        "updated": counts.get("update", 0),
    }
