"""Apache Kafka in KRaft mode, or the coordinates of an external managed Kafka.

In-cluster (``pynomaly:kafka.mode: inCluster``):

- StatefulSet(s) of the official ``apache/kafka`` image.  ``controllers: 0`` runs combined
  broker+controller nodes; ``controllers: N`` adds a dedicated controller StatefulSet.  The node id
  is the pod ordinal (brokers of a dedicated layout add :data:`BROKER_ID_OFFSET`).
- One headless Service with ``publishNotReadyAddresses`` gives every pod a stable DNS name before
  it is ready (the quorum must form before anything is ready), used for the per-pod advertised
  listeners; the client Service ``<name>`` is for bootstrap.
- The cluster id and the controllers' directory ids are generated once (``infra.generated``, kept
  in the stack state as secrets) and kept in a Secret.  An init container renders
  ``server.properties`` and formats the storage on first start only (``kafka-storage.sh format``
  with the dynamic quorum's ``--initial-controllers``, whose directory ids must be known up front —
  hence the Secret).
- RF 3 and ``min.insync.replicas`` 2 where there are at least 3 brokers (RF = brokers below that),
  PDB ``maxUnavailable: 1``, topology spread over zones and nodes, ``broker.rack`` from the node's
  zone label (an init container with a token that can only read nodes), SASL/SCRAM-SHA-512 with an
  admin user (inter-broker, topic Job) and an application user; TLS on the client listener when a
  certificate Secret is configured.  The controller listener only accepts Kafka pods.
- A Job applies the app's topic plan (``kafka_admin.topic_plan``: the topology's topics and their
  dead-letter topics) the way the app's ``ensure_topics`` does: create, add missing partitions, leave
  the rest.  The scripts are ``infra/scripts/kafka-*.sh``, shipped in the ``<name>-scripts`` ConfigMap.

External: nothing is deployed; the bootstrap servers, protocol and credentials go to the Secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra import generated
from infra import k8s as kx
from infra.config import KafkaConfig
from pynomaly.messaging import kafka_admin
from pynomaly.messaging.kafka_admin import TopicPlan
from pynomaly.topology import Topology

CLIENT_PORT = 9092
CONTROLLER_PORT = 9093
BROKER_ID_OFFSET = 100
UID = 1000  # appuser of the apache/kafka image
SCRAM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
APP_USER = "pynomaly"

# Keys of the client Secret (the program copies the password into the app's Secret, which the chart reads).
KEY_BOOTSTRAP = "bootstrap-servers"
KEY_PROTOCOL = "security-protocol"
KEY_MECHANISM = "sasl-mechanism"
KEY_USERNAME = "username"
KEY_PASSWORD = "password"
# The format, topics and rack scripts (infra/scripts/), shipped in the scripts ConfigMap under their file names.
SCRIPTS = ("kafka-format.sh", "kafka-topics.sh", "kafka-rack.sh")
# Keys of the cluster Secret.
KEY_CLUSTER_ID = "cluster-id"
KEY_ADMIN_PASSWORD = "admin-password"


@dataclass(frozen=True)
class KafkaArgs:
    config: KafkaConfig
    namespace: pulumi.Input[str]
    topology: Topology
    name: str = "pynomaly-kafka"
    password: pulumi.Input[str] | None = None  # application user's SASL password; generated when None
    admin_password: pulumi.Input[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # KEDA's operator reads consumer lag from there; None: only this namespace's pods are clients.
    scaler_namespace: str | None = None


@dataclass(frozen=True)
class _Role:
    statefulset: str
    component: str
    roles: str  # process.roles
    replicas: int
    id_offset: int


class Kafka(pulumi.ComponentResource):
    """Outputs: ``bootstrap_servers``, ``security_protocol``, ``sasl_mechanism``, ``username``,
    ``password`` (secret), ``secret_name`` (client settings), ``cluster_secret_name``,
    ``replication_factor``, ``min_insync_replicas``, ``version``, ``pod_labels`` (selects every Kafka pod)."""

    bootstrap_servers: pulumi.Output[str]
    security_protocol: str
    sasl_mechanism: str
    username: str
    password: pulumi.Output[str]
    secret_name: pulumi.Output[str]
    cluster_secret_name: pulumi.Output[str] | None
    replication_factor: int
    min_insync_replicas: int
    version: str

    def __init__(self, name: str, args: KafkaArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pynomaly:infra:Kafka", name, None, opts)
        self._args = args
        cfg, ns = args.config, args.namespace
        self.objects: list[pulumi.Resource] = []
        self.version = cfg.version
        self.cluster_secret_name = None
        # Every pod of both StatefulSets: what the app's egress policy selects.
        self.pod_labels = {"app.kubernetes.io/name": args.name, "app.kubernetes.io/instance": kx.PART_OF}
        self.replication_factor = cfg.replication_factor if cfg.in_cluster else 3
        self.min_insync_replicas = cfg.min_insync_replicas if cfg.in_cluster else 2

        if cfg.in_cluster:
            self.security_protocol = _client_protocol(cfg)
            self.sasl_mechanism = SCRAM if cfg.sasl else ""
            self.username = APP_USER if cfg.sasl else ""
            self.password = self._password(f"{name}-app-password", args.password)
            self.admin_password = self._password(f"{name}-admin-password", args.admin_password)
            self.headless = f"{args.name}-headless"
            if cfg.controllers:
                self.roles = [
                    _Role(f"{args.name}-controller", "kafka-controller", "controller", cfg.controllers, 0),
                    _Role(args.name, "kafka-broker", "broker", cfg.brokers, BROKER_ID_OFFSET),
                ]
            else:
                self.roles = [_Role(args.name, "kafka-broker", "broker,controller", cfg.brokers, 0)]
            self.bootstrap_servers = pulumi.Output.from_input(ns).apply(
                lambda n: ",".join(
                    f"{args.name}-{i}.{self.headless}.{n}.svc.cluster.local:{CLIENT_PORT}" for i in range(cfg.brokers)
                )
            )
        else:
            self.security_protocol = cfg.external_security_protocol
            self.sasl_mechanism = cfg.external_sasl_mechanism if self.security_protocol.startswith("SASL") else ""
            self.username = cfg.external_username or ""
            self.password = pulumi.Output.secret(args.password if args.password is not None else "")
            self.bootstrap_servers = pulumi.Output.from_input(cfg.external_bootstrap or "")

        secret = k8s.core.v1.Secret(
            f"{name}-client",
            metadata=kx.meta(f"{args.name}-client", ns, kx.labels(args.name, "kafka", args.labels)),
            type="Opaque",
            string_data={
                KEY_BOOTSTRAP: self.bootstrap_servers,
                KEY_PROTOCOL: self.security_protocol,
                KEY_MECHANISM: self.sasl_mechanism,
                KEY_USERNAME: self.username,
                KEY_PASSWORD: self.password,
            },
            opts=kx.child(self),
        )
        self.secret_name = secret.metadata.name
        self._client_secret = secret
        self.objects.append(secret)

        if cfg.in_cluster:
            self._cluster(name)

        self.register_outputs(
            {
                "bootstrap_servers": self.bootstrap_servers,
                "security_protocol": self.security_protocol,
                "secret_name": self.secret_name,
                "cluster_secret_name": self.cluster_secret_name,
                "password": self.password,
            }
        )

    def _password(self, resource_name: str, configured: pulumi.Input[str] | None) -> pulumi.Output[str]:
        if configured is not None:
            return pulumi.Output.secret(configured)
        return generated.password(resource_name, 32, parent=self)

    # -- in-cluster KRaft ---------------------------------------------------------------------------

    def _cluster(self, name: str) -> None:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        controller_role = self.roles[0]
        # Kafka UUIDs (16 bytes, URL-safe base64 without padding), generated once and kept in the state.
        cluster_id = generated.kafka_id(f"{name}-cluster-id", parent=self)
        dir_ids = [
            generated.kafka_id(f"{name}-controller-{i}-directory-id", parent=self)
            for i in range(controller_role.replicas)
        ]

        cluster_data: dict[str, pulumi.Input[str]] = {
            KEY_CLUSTER_ID: cluster_id,
            KEY_ADMIN_PASSWORD: self.admin_password,
        }
        for i, dir_id in enumerate(dir_ids):
            cluster_data[f"controller-{i}-directory-id"] = dir_id
        cluster_secret = k8s.core.v1.Secret(
            f"{name}-cluster",
            metadata=kx.meta(f"{args.name}-cluster", ns, kx.labels(args.name, "kafka", args.labels)),
            type="Opaque",
            string_data=cluster_data,
            opts=kx.child(self),
        )
        self.cluster_secret_name = cluster_secret.metadata.name

        # Every pod of both StatefulSets shares the headless Service (stable per-pod DNS names).
        all_pods = self.pod_labels
        headless = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=kx.meta(self.headless, ns, kx.labels(args.name, "kafka", args.labels)),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                publish_not_ready_addresses=True,
                selector=all_pods,
                ports=[
                    k8s.core.v1.ServicePortArgs(name="client", port=CLIENT_PORT, target_port=CLIENT_PORT),
                    k8s.core.v1.ServicePortArgs(name="controller", port=CONTROLLER_PORT, target_port=CONTROLLER_PORT),
                ],
            ),
            opts=kx.child(self),
        )
        broker_sel = kx.selector_labels(args.name, "kafka-broker")
        client = k8s.core.v1.Service(
            f"{name}-client",
            metadata=kx.meta(args.name, ns, kx.labels(args.name, "kafka-broker", args.labels)),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=broker_sel,
                ports=[k8s.core.v1.ServicePortArgs(name="client", port=CLIENT_PORT, target_port=CLIENT_PORT)],
            ),
            opts=kx.child(self),
        )
        self.objects += [cluster_secret, headless, client]

        controller_fqdn = pulumi.Output.from_input(ns).apply(
            lambda n: [
                f"{controller_role.statefulset}-{i}.{self.headless}.{n}.svc.cluster.local"
                for i in range(controller_role.replicas)
            ]
        )
        bootstrap_controllers = controller_fqdn.apply(lambda hs: ",".join(f"{h}:{CONTROLLER_PORT}" for h in hs))
        scripts = k8s.core.v1.ConfigMap(
            f"{name}-scripts",
            metadata=kx.meta(f"{args.name}-scripts", ns, kx.labels(args.name, "kafka", args.labels)),
            data={**{s: kx.script(s) for s in SCRIPTS}, "topics.plan": _topics_plan_file(args.topology, cfg)},
            opts=kx.child(self),
        )
        self.objects.append(scripts)

        service_account = None
        if cfg.rack_awareness:
            service_account = self._rack_rbac(name)

        statefulsets = []
        for role in self.roles:
            statefulsets.append(
                self._statefulset(
                    name,
                    role,
                    bootstrap_controllers,
                    controller_fqdn,
                    dir_ids,
                    service_account,
                    cluster_secret,
                    headless,
                    scripts,
                )
            )

        # Controllers talk only to Kafka pods; clients (the app's pods, the topics Job, KEDA's operator)
        # only reach 9092, and no other pod reaches it, SASL password or not.
        clients = [kx.app_or_own_pods(args.name)]
        if args.scaler_namespace:
            clients.append(kx.namespace_peer(args.scaler_namespace))
        self.objects.append(
            k8s.networking.v1.NetworkPolicy(
                f"{name}-ingress",
                metadata=kx.meta(args.name, ns, kx.labels(args.name, "kafka", args.labels)),
                spec=k8s.networking.v1.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=all_pods),
                    policy_types=["Ingress"],
                    ingress=[
                        k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                            from_=[
                                k8s.networking.v1.NetworkPolicyPeerArgs(
                                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=all_pods)
                                )
                            ],
                            ports=[
                                k8s.networking.v1.NetworkPolicyPortArgs(port=p, protocol="TCP")
                                for p in (CLIENT_PORT, CONTROLLER_PORT)
                            ],
                        ),
                        k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                            from_=clients,
                            ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=CLIENT_PORT, protocol="TCP")],
                        ),
                    ],
                ),
                opts=kx.child(self),
            )
        )
        self.objects.append(self._topics_job(name, scripts, [*statefulsets, client]))

    def _rack_rbac(self, name: str) -> pulumi.Output[str]:
        """A ServiceAccount whose token (mounted in the rack init container only) may read nodes."""
        args, ns = self._args, self._args.namespace
        lbls = kx.labels(args.name, "kafka", args.labels)
        sa_name = f"{args.name}-rack"
        sa = k8s.core.v1.ServiceAccount(
            f"{name}-rack",
            metadata=kx.meta(sa_name, ns, lbls),
            automount_service_account_token=False,
            opts=kx.child(self),
        )
        role_name = pulumi.Output.from_input(ns).apply(lambda n: f"{n}-{sa_name}")
        role = k8s.rbac.v1.ClusterRole(
            f"{name}-rack",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=role_name, labels=lbls),
            rules=[k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["nodes"], verbs=["get"])],
            opts=kx.child(self),
        )
        binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-rack",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=role_name, labels=lbls),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role.metadata.name
            ),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=sa.metadata.name, namespace=ns)],
            opts=kx.child(self),
        )
        self.objects += [sa, role, binding]
        return sa.metadata.name

    def _statefulset(
        self,
        name: str,
        role: _Role,
        bootstrap_controllers: pulumi.Output[str],
        controller_fqdn: pulumi.Output[list[str]],
        dir_ids: list[pulumi.Output[str]],
        service_account: pulumi.Output[str] | None,
        cluster_secret: k8s.core.v1.Secret,
        headless: k8s.core.v1.Service,
        scripts: k8s.core.v1.ConfigMap,
    ) -> k8s.apps.v1.StatefulSet:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        sel = kx.selector_labels(args.name, role.component)
        lbls = kx.labels(args.name, role.component, args.labels)
        is_controller = "controller" in role.roles
        is_broker = "broker" in role.roles
        deps = [cluster_secret, self._client_secret, headless, scripts]

        def from_secret(secret: pulumi.Input[str], key: str) -> k8s.core.v1.EnvVarSourceArgs:
            return k8s.core.v1.EnvVarSourceArgs(secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=secret, key=key))

        # "0@host-0:9093:<dir id>,..." for formatting the dynamic quorum's first voters.
        initial_controllers = pulumi.Output.all(controller_fqdn, *dir_ids).apply(
            lambda a: ",".join(
                f"{i}@{h}:{CONTROLLER_PORT}:{d}" for i, (h, d) in enumerate(zip(a[0], a[1:], strict=True))
            )
        )
        cluster_name = cluster_secret.metadata.name
        env = [
            k8s.core.v1.EnvVarArgs(
                name="POD_NAMESPACE",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.namespace")
                ),
            ),
            k8s.core.v1.EnvVarArgs(name="HEADLESS", value=headless.metadata.name),
            k8s.core.v1.EnvVarArgs(name="PROCESS_ROLES", value=role.roles),
            k8s.core.v1.EnvVarArgs(name="NODE_ID_OFFSET", value=str(role.id_offset)),
            k8s.core.v1.EnvVarArgs(name="CONTROLLER_BOOTSTRAP", value=bootstrap_controllers),
            k8s.core.v1.EnvVarArgs(name="INITIAL_CONTROLLERS", value=initial_controllers if is_controller else ""),
            k8s.core.v1.EnvVarArgs(name="CLUSTER_ID", value_from=from_secret(cluster_name, KEY_CLUSTER_ID)),
            k8s.core.v1.EnvVarArgs(name="ADMIN_PASSWORD", value_from=from_secret(cluster_name, KEY_ADMIN_PASSWORD)),
            k8s.core.v1.EnvVarArgs(name="APP_PASSWORD", value_from=from_secret(self.secret_name, KEY_PASSWORD)),
            k8s.core.v1.EnvVarArgs(name="REPLICATION_FACTOR", value=str(cfg.replication_factor)),
            k8s.core.v1.EnvVarArgs(name="MIN_INSYNC_REPLICAS", value=str(cfg.min_insync_replicas)),
            *_script_env(cfg),
        ]
        mounts = [
            k8s.core.v1.VolumeMountArgs(name="data", mount_path="/var/lib/kafka/data"),
            k8s.core.v1.VolumeMountArgs(name="runtime", mount_path="/etc/kafka-runtime"),
            k8s.core.v1.VolumeMountArgs(name="scripts", mount_path="/scripts", read_only=True),
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        ]
        volumes = [
            k8s.core.v1.VolumeArgs(
                name="scripts",
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=scripts.metadata.name, default_mode=0o555),
            ),
            kx.empty_dir("runtime", "4Mi", memory=True),
            kx.empty_dir("tmp", "512Mi"),
        ]
        if cfg.tls_secret:
            mounts.append(k8s.core.v1.VolumeMountArgs(name="tls", mount_path="/etc/kafka-tls", read_only=True))
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name="tls",
                    secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=cfg.tls_secret, default_mode=0o440),
                )
            )
        small = k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "256Mi"}, limits={"memory": "512Mi"}
        )
        init_containers = []
        if cfg.rack_awareness and is_broker:
            volumes += [
                kx.empty_dir("rack", "1Mi", memory=True),
                k8s.core.v1.VolumeArgs(
                    name="rack-token",
                    projected=k8s.core.v1.ProjectedVolumeSourceArgs(
                        default_mode=0o444,
                        sources=[
                            k8s.core.v1.VolumeProjectionArgs(
                                service_account_token=k8s.core.v1.ServiceAccountTokenProjectionArgs(
                                    path="token", expiration_seconds=3600
                                )
                            ),
                            k8s.core.v1.VolumeProjectionArgs(
                                config_map=k8s.core.v1.ConfigMapProjectionArgs(
                                    name="kube-root-ca.crt",
                                    items=[k8s.core.v1.KeyToPathArgs(key="ca.crt", path="ca.crt")],
                                )
                            ),
                            k8s.core.v1.VolumeProjectionArgs(
                                downward_api=k8s.core.v1.DownwardAPIProjectionArgs(
                                    items=[
                                        k8s.core.v1.DownwardAPIVolumeFileArgs(
                                            path="namespace",
                                            field_ref=k8s.core.v1.ObjectFieldSelectorArgs(
                                                field_path="metadata.namespace"
                                            ),
                                        )
                                    ]
                                )
                            ),
                        ],
                    ),
                ),
            ]
            mounts.append(k8s.core.v1.VolumeMountArgs(name="rack", mount_path="/etc/kafka-rack", read_only=True))
            init_containers.append(
                k8s.core.v1.ContainerArgs(
                    name="rack",
                    image=cfg.rack_init_image,
                    command=["/bin/sh", "/scripts/kafka-rack.sh"],
                    env=[
                        k8s.core.v1.EnvVarArgs(
                            name="NODE_NAME",
                            value_from=k8s.core.v1.EnvVarSourceArgs(
                                field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="spec.nodeName")
                            ),
                        )
                    ],
                    resources=k8s.core.v1.ResourceRequirementsArgs(
                        requests={"cpu": "10m", "memory": "32Mi"}, limits={"memory": "64Mi"}
                    ),
                    security_context=kx.container_security(),
                    volume_mounts=[
                        k8s.core.v1.VolumeMountArgs(name="scripts", mount_path="/scripts", read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="rack", mount_path="/etc/kafka-rack"),
                        k8s.core.v1.VolumeMountArgs(
                            name="rack-token",
                            read_only=True,
                            mount_path="/var/run/secrets/kubernetes.io/serviceaccount",
                        ),
                    ],
                )
            )
        init_containers.append(
            k8s.core.v1.ContainerArgs(
                name="format",
                image=cfg.image,
                command=["/bin/sh", "/scripts/kafka-format.sh"],
                env=env,
                resources=small,
                security_context=kx.container_security(),
                volume_mounts=mounts,
            )
        )
        port = CLIENT_PORT if is_broker else CONTROLLER_PORT
        heap = cfg.heap if is_broker else "256m"
        container = k8s.core.v1.ContainerArgs(
            name="kafka",
            image=cfg.image,
            command=["/opt/kafka/bin/kafka-server-start.sh", "/etc/kafka-runtime/server.properties"],
            env=[
                k8s.core.v1.EnvVarArgs(name="KAFKA_HEAP_OPTS", value=f"-Xms{heap} -Xmx{heap}"),
                k8s.core.v1.EnvVarArgs(name="LOG_DIR", value="/tmp/kafka-logs"),
            ],
            ports=[
                *([k8s.core.v1.ContainerPortArgs(name="client", container_port=CLIENT_PORT)] if is_broker else []),
                *(
                    [k8s.core.v1.ContainerPortArgs(name="controller", container_port=CONTROLLER_PORT)]
                    if is_controller
                    else []
                ),
            ],
            resources=kx.resources(cfg.resources.to_k8s())
            if is_broker
            else k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "100m", "memory": "512Mi"}, limits={"memory": "768Mi"}
            ),
            security_context=kx.container_security(),
            startup_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=port), period_seconds=5, failure_threshold=120
            ),
            liveness_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=port),
                period_seconds=15,
                timeout_seconds=5,
                failure_threshold=4,
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=port), period_seconds=5, timeout_seconds=3
            ),
            volume_mounts=[m for m in mounts if m.name != "scripts"],
        )
        sts = k8s.apps.v1.StatefulSet(
            f"{name}-{role.component}",
            metadata=kx.meta(role.statefulset, ns, lbls),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=headless.metadata.name,
                replicas=role.replicas,
                # All voters must start together to form the quorum.
                pod_management_policy="Parallel",
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel),
                update_strategy=k8s.apps.v1.StatefulSetUpdateStrategyArgs(type="RollingUpdate"),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=lbls),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=service_account if (service_account is not None and is_broker) else None,
                        automount_service_account_token=False,
                        security_context=kx.pod_security(UID),
                        termination_grace_period_seconds=120,  # controlled shutdown moves leadership first
                        affinity=kx.anti_affinity(sel),
                        topology_spread_constraints=kx.spread(sel, zones_required=cfg.zone_spread),
                        init_containers=init_containers,
                        containers=[container],
                        volumes=volumes,
                    ),
                ),
                volume_claim_templates=[kx.pvc_template("data", cfg.storage_size, cfg.storage_class, lbls)],
                persistent_volume_claim_retention_policy=k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
                    when_deleted="Retain", when_scaled="Retain"
                ),
            ),
            # The pods of a combined/controller layout only become ready once the quorum formed.
            opts=kx.child(self, depends_on=deps),
        )
        pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-{role.component}",
            metadata=kx.meta(role.statefulset, ns, lbls),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel)
            ),
            opts=kx.child(self),
        )
        self.objects += [sts, pdb]
        return sts

    def _topics_job(self, name: str, scripts: k8s.core.v1.ConfigMap, deps: list[pulumi.Resource]) -> k8s.batch.v1.Job:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        lbls = kx.labels(args.name, "kafka-topics", args.labels)
        mounts = [
            k8s.core.v1.VolumeMountArgs(name="scripts", mount_path="/scripts", read_only=True),
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        ]
        volumes = [
            k8s.core.v1.VolumeArgs(
                name="scripts",
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=scripts.metadata.name, default_mode=0o555),
            ),
            kx.empty_dir("tmp", "256Mi"),
        ]
        if cfg.tls_secret:
            mounts.append(k8s.core.v1.VolumeMountArgs(name="tls", mount_path="/etc/kafka-tls", read_only=True))
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name="tls",
                    secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=cfg.tls_secret, default_mode=0o440),
                )
            )
        return k8s.batch.v1.Job(
            f"{name}-topics",
            metadata=kx.meta(f"{args.name}-topics", ns, lbls),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=6,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=lbls),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="OnFailure",
                        automount_service_account_token=False,
                        security_context=kx.pod_security(UID),
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="topics",
                                image=cfg.image,
                                command=["/bin/sh", "/scripts/kafka-topics.sh"],
                                env=[
                                    k8s.core.v1.EnvVarArgs(name="BOOTSTRAP", value=self.bootstrap_servers),
                                    k8s.core.v1.EnvVarArgs(
                                        name="ADMIN_PASSWORD",
                                        value_from=k8s.core.v1.EnvVarSourceArgs(
                                            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                                                name=self.cluster_secret_name, key=KEY_ADMIN_PASSWORD
                                            )
                                        ),
                                    ),
                                    k8s.core.v1.EnvVarArgs(name="KAFKA_HEAP_OPTS", value="-Xmx192m"),
                                    k8s.core.v1.EnvVarArgs(name="LOG_DIR", value="/tmp/kafka-logs"),
                                    *_script_env(cfg),
                                ],
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "50m", "memory": "256Mi"}, limits={"memory": "384Mi"}
                                ),
                                security_context=kx.container_security(),
                                volume_mounts=mounts,
                            )
                        ],
                        volumes=volumes,
                    ),
                ),
            ),
            opts=kx.child(self, depends_on=deps),
        )


def topic_plan(topology: Topology, cfg: KafkaConfig) -> list[TopicPlan]:
    """The app's own plan (``pynomaly.messaging.kafka_admin.topic_plan``) for this cluster's brokers."""
    return kafka_admin.topic_plan(topology, cfg.replication_factor, cfg.min_insync_replicas)


def _topics_plan_file(topology: Topology, cfg: KafkaConfig) -> str:
    """``topics.plan``: what infra/scripts/kafka-topics.sh applies, one topic per line."""
    return "".join(
        f"{p.name} {p.partitions} {p.replication} {p.min_insync_replicas} {p.retention_ms}\n"
        for p in topic_plan(topology, cfg)
    )


def _script_env(cfg: KafkaConfig) -> list[k8s.core.v1.EnvVarArgs]:
    """What the format and topics scripts need to know of the listener and its users."""
    values = {
        "CLIENT_PROTOCOL": _client_protocol(cfg),
        "SASL": "yes" if cfg.sasl else "no",
        "TLS": "yes" if cfg.tls_secret else "no",
        "SCRAM_MECHANISM": SCRAM,
        "ADMIN_USER": ADMIN_USER,
        "APP_USER": APP_USER,
        "CLIENT_PORT": str(CLIENT_PORT),
        "CONTROLLER_PORT": str(CONTROLLER_PORT),
    }
    return [k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in values.items()]


def _client_protocol(cfg: KafkaConfig) -> str:
    return ("SASL_SSL" if cfg.tls_secret else "SASL_PLAINTEXT") if cfg.sasl else "PLAINTEXT"
