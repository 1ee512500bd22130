"""Small shared building blocks: labels, the restricted pod/container security settings, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

PART_OF = "pynomaly"
APP_NAME = "pynomaly"  # the chart's app.kubernetes.io/name: the application's pods
MANAGED_BY = "pulumi"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def script(name: str) -> str:
    """A file of ``infra/scripts/`` as the ConfigMaps ship it (tests/infra/test_scripts.py runs shellcheck)."""
    path = SCRIPTS / name
    if not path.is_file():
        raise FileNotFoundError(f"infra/scripts/{name} does not exist")
    return path.read_text()


def selector_labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": PART_OF,
        "app.kubernetes.io/component": component,
    }


def labels(name: str, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **(extra or {}),
        **selector_labels(name, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def meta(
    name: str, namespace: pulumi.Input[str], lbls: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=name, namespace=namespace, labels=dict(lbls), annotations=dict(annotations) if annotations else None
    )


def pod_security(uid: int) -> k8s.core.v1.PodSecurityContextArgs:
    """Pod-level half of the 'restricted' Pod Security Standard, with the volume group set to ``uid``."""
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=uid,
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def container_security() -> k8s.core.v1.SecurityContextArgs:
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        privileged=False,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def resources(spec: Mapping[str, Mapping[str, str]]) -> k8s.core.v1.ResourceRequirementsArgs:
    return k8s.core.v1.ResourceRequirementsArgs(requests=dict(spec["requests"]), limits=dict(spec["limits"]))


def spread(selector: Mapping[str, str], *, zones_required: bool) -> list[k8s.core.v1.TopologySpreadConstraintArgs]:
    """Spread replicas over zones (hard when asked, else best effort) and over nodes (best effort)."""
    match = k8s.meta.v1.LabelSelectorArgs(match_labels=dict(selector))
    return [
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1,
            topology_key=ZONE_LABEL,
            when_unsatisfiable="DoNotSchedule" if zones_required else "ScheduleAnyway",
            label_selector=match,
        ),
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1, topology_key=HOSTNAME_LABEL, when_unsatisfiable="ScheduleAnyway", label_selector=match
        ),
    ]


def anti_affinity(selector: Mapping[str, str]) -> k8s.core.v1.AffinityArgs:
    return k8s.core.v1.AffinityArgs(
        pod_anti_affinity=k8s.core.v1.PodAntiAffinityArgs(
            preferred_during_scheduling_ignored_during_execution=[
                k8s.core.v1.WeightedPodAffinityTermArgs(
                    weight=100,
                    pod_affinity_term=k8s.core.v1.PodAffinityTermArgs(
                        topology_key=HOSTNAME_LABEL,
                        label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(selector)),
                    ),
                )
            ]
        )
    )


def empty_dir(name: str, size: str = "64Mi", memory: bool = False) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=size, medium="Memory" if memory else None)
    )


def pvc_template(
    name: str, size: str, storage_class: str | None, lbls: Mapping[str, str]
) -> k8s.core.v1.PersistentVolumeClaimArgs:
    # `kind`/`apiVersion` make the embedded template a complete object for schema validation too.
    return k8s.core.v1.PersistentVolumeClaimArgs(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, labels=dict(lbls)),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            storage_class_name=storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size}),
        ),
    )


def child(parent: pulumi.Resource, **extra: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **extra)


def app_or_own_pods(own_name: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    """NetworkPolicy peer: the application's pods and the component's own, in the policy's namespace."""
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(
            match_expressions=[
                k8s.meta.v1.LabelSelectorRequirementArgs(
                    key="app.kubernetes.io/name", operator="In", values=[APP_NAME, own_name]
                )
            ]
        )
    )


def namespace_peer(namespace: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    """NetworkPolicy peer: every pod of another namespace (e.g. KEDA's operator)."""
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": namespace})
    )
