"""Checks for Kubernetes objects, shared by the chart tests and the infra (Pulumi mock) tests.

Stable API (other test suites import it):

- ``validate_object(obj) -> list[str]``: schema findings for one object, empty when valid.
  Core kinds are checked with ``kubernetes-validate`` in strict mode (unknown fields fail) against
  the pinned :data:`KUBERNETES_VERSION`.  KEDA (``keda.sh``) and Prometheus Operator
  (``monitoring.coreos.com``) kinds are checked against the schema subsets in ``keda_schemas/``,
  which the project wrote from the published CRD fields.  A few semantic rules the schemas cannot
  express are added (min <= max replicas, scalingModifiers formulas naming real triggers, ...).
- ``baseline_violations(obj) -> list[str]``: the security and operability baseline for anything
  that runs pods (non-root, read-only root filesystem, no privilege escalation, capabilities
  dropped, seccomp RuntimeDefault, requests and limits, probes on long-running containers, pinned
  image tags).  Objects without pods give no findings.
- ``load_yaml_documents(text) -> list[dict]``: the non-empty YAML documents of a stream; ``List``
  objects are flattened into their items.
- ``count_kinds(objects) -> dict[str, int]`` and ``format_kind_counts(counts_by_env)``: inventory
  helpers for "what would this environment create" reports.

Every finding is a string that starts with ``Kind/name``, so a failing assertion reads well.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import referencing.jsonschema
import yaml
from kubernetes_validate import utils as kv_utils

# The Kubernetes API version objects are validated against: the newest schema set the pinned
# kubernetes-validate ships.  Pinned on purpose, so a library upgrade does not silently move it.
KUBERNETES_VERSION = "1.37.0"

SCHEMA_DIR = Path(__file__).parent / "keda_schemas"

# (apiVersion, kind) -> schema file in SCHEMA_DIR
CRD_SCHEMAS: dict[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_ScaledObject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_TriggerAuthentication.json",
    ("keda.sh/v1alpha1", "ClusterTriggerAuthentication"): "keda.sh_v1alpha1_TriggerAuthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_PrometheusRule.json",
}
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")

# Kinds whose objects run pods, and where their pod template lives.
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
# Pods of these kinds run to completion: no liveness/readiness probes expected.
RUN_TO_COMPLETION = frozenset({"Job", "CronJob"})


# -- loading ----------------------------------------------------------------------------------


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    """The objects in a multi-document YAML stream (empty documents dropped, Lists flattened)."""
    objects: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"a YAML document is a {type(doc).__name__}, not a mapping: {str(doc)[:80]!r}")
        if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
            objects.extend(item for item in doc["items"] if item)
        else:
            objects.append(doc)
    return objects


def describe(obj: Mapping[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name", "<unnamed>")
    return f"{obj.get('kind', '<no kind>')}/{name}"


# -- schema validation ------------------------------------------------------------------------


@cache
def _crd_registry() -> referencing.Registry:
    registry: referencing.Registry = referencing.Registry()
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text())
        resource = referencing.Resource.from_contents(
            contents, default_specification=referencing.jsonschema.DRAFT202012
        )
        registry = registry.with_resource(contents["$id"], resource)
    return registry.crawl()


@cache
def _crd_validator(filename: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / filename).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_crd_registry())


@cache
def _k8s_definitions() -> referencing.Resource:
    return referencing.Resource.from_contents(
        kv_utils.schema_contents(f"kubernetes-json-schema/{_k8s_schema_dir()}/_definitions.json", KUBERNETES_VERSION)
    )


@cache
def _k8s_schema_dir() -> str:
    wanted = kv_utils.major_minor(KUBERNETES_VERSION)
    versions = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == wanted]
    if not versions:
        raise RuntimeError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes {wanted}"
        )
    return f"v{versions[-1]}-local-strict"


@cache
def _k8s_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    # Same file naming as kubernetes_validate.validate: rbac.authorization.k8s.io/v1 -> rbac-v1
    short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv_utils.schema_contents(
            f"kubernetes-json-schema/{_k8s_schema_dir()}/{kind.lower()}-{short}.json", KUBERNETES_VERSION
        )
    except FileNotFoundError:
        return None
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = _k8s_definitions() @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_findings(validator: jsonschema.Draft202012Validator, obj: Mapping[str, Any]) -> list[str]:
    findings = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        findings.append(f"{describe(obj)}: {where}: {error.message}")
    return findings


def validate_object(obj: Mapping[str, Any]) -> list[str]:
    """Schema and semantic findings for one object; an empty list means it is valid."""
    if not isinstance(obj, Mapping):
        return [f"not an object: {obj!r:.80}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"{describe(obj)}: apiVersion and kind are required strings"]
    findings: list[str] = []
    if api_version.startswith(CRD_GROUPS):
        filename = CRD_SCHEMAS.get((api_version, kind))
        if filename is None:
            return [f"{describe(obj)}: no schema for {kind} in {api_version} (known: {sorted(CRD_SCHEMAS)})"]
        findings += _schema_findings(_crd_validator(filename), obj)
    else:
        validator = _k8s_validator(api_version, kind)
        if validator is None:
            return [f"{describe(obj)}: Kubernetes {KUBERNETES_VERSION} has no kind {kind} in {api_version}"]
        findings += _schema_findings(validator, obj)
    if not findings:  # semantic rules assume the shape is right
        findings += _semantic_findings(obj)
    return findings


_FORMULA_WORDS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# expr-lang words a scalingModifiers formula may use besides trigger names
_FORMULA_BUILTINS = frozenset(
    {
        "and",
        "or",
        "not",
        "in",
        "true",
        "false",
        "nil",
        "min",
        "max",
        "abs",
        "ceil",
        "floor",
        "round",
        "len",
        "float",
        "int",
    }
)


def _semantic_findings(obj: Mapping[str, Any]) -> list[str]:
    kind, spec, me = obj["kind"], obj.get("spec") or {}, describe(obj)
    out: list[str] = []
    if kind == "ScaledObject":
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if lo > hi:
            out.append(f"{me}: minReplicaCount {lo} > maxReplicaCount {hi}")
        idle = spec.get("idleReplicaCount")
        if idle is not None and idle >= lo:
            out.append(f"{me}: idleReplicaCount {idle} must be below minReplicaCount {lo}")
        triggers = spec["triggers"]
        names = [t.get("name") for t in triggers if t.get("name")]
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            out.append(f"{me}: duplicate trigger names {dupes}")
        modifiers = (spec.get("advanced") or {}).get("scalingModifiers")
        if modifiers:
            if "formula" in modifiers and "target" not in modifiers:
                out.append(f"{me}: scalingModifiers.formula needs scalingModifiers.target")
            if len(names) != len(triggers):
                out.append(f"{me}: scalingModifiers needs every trigger to have a name")
            used = set(_FORMULA_WORDS.findall(modifiers.get("formula", ""))) - _FORMULA_BUILTINS
            unknown = sorted(used - set(names))
            if unknown:
                out.append(f"{me}: scalingModifiers.formula names unknown triggers {unknown}")
            unused = sorted(set(names) - used)
            if unused:
                out.append(f"{me}: triggers {unused} are not used in scalingModifiers.formula")
        for i, trigger in enumerate(triggers):
            out += [f"{me}: triggers[{i}] ({trigger['type']}): {m}" for m in _trigger_findings(trigger)]
    elif kind == "HorizontalPodAutoscaler":
        lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
        if lo > hi:
            out.append(f"{me}: minReplicas {lo} > maxReplicas {hi}")
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        mismatched = sorted(k for k, v in wanted.items() if labels.get(k) != v)
        if mismatched:
            out.append(f"{me}: selector.matchLabels {mismatched} do not match the pod template labels")
    elif kind == "PodDisruptionBudget" and ("minAvailable" in spec) == ("maxUnavailable" in spec):
        out.append(f"{me}: set exactly one of minAvailable and maxUnavailable")
    return out


def _trigger_findings(trigger: Mapping[str, Any]) -> list[str]:
    meta = trigger["metadata"]
    out = []
    if trigger["type"] == "redis":
        if "listName" not in meta:
            out.append("metadata.listName is required")
        if "listLength" in meta and not meta["listLength"].isdigit():
            out.append(f"metadata.listLength must be an integer string, got {meta['listLength']!r}")
        if not ({"address", "addressFromEnv"} & meta.keys() or {"host", "port"} <= meta.keys()):
            out.append("metadata needs address, addressFromEnv or host and port")
    elif trigger["type"] == "kafka":
        for key in ("bootstrapServers", "consumerGroup"):
            if key not in meta and f"{key}FromEnv" not in meta:
                out.append(f"metadata.{key} is required")
        if "lagThreshold" in meta and not meta["lagThreshold"].isdigit():
            out.append(f"metadata.lagThreshold must be an integer string, got {meta['lagThreshold']!r}")
    return out


# -- security / operability baseline ----------------------------------------------------------


def _pod_template(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    path = POD_TEMPLATE_PATHS.get(obj.get("kind", ""))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = (node or {}).get(key)
    return node or {}


def _image_finding(image: Any) -> str | None:
    if not isinstance(image, str) or not image:
        return "has no image"
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the 'latest' tag"
    return None


def baseline_violations(obj: Mapping[str, Any]) -> list[str]:
    """Security baseline findings for an object that runs pods; [] for everything else."""
    template = _pod_template(obj)
    if template is None:
        return []
    me = describe(obj)
    pod = template.get("spec") or {}
    pod_sc = pod.get("securityContext") or {}
    out: list[str] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{me}: {flag} is on")
    if pod_sc.get("runAsUser") == 0:
        out.append(f"{me}: pod runs as uid 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")

    long_running = obj["kind"] not in RUN_TO_COMPLETION
    containers = [(c, long_running) for c in pod.get("containers") or []]
    # Native sidecars (init containers with restartPolicy Always) run as long as the pod.
    containers += [(c, long_running and c.get("restartPolicy") == "Always") for c in pod.get("initContainers") or []]
    if not pod.get("containers"):
        out.append(f"{me}: pod has no containers")
    for container, needs_probes in containers:
        who = f"{me} container {container.get('name', '?')}"
        sc = container.get("securityContext") or {}
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            out.append(f"{who}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            out.append(f"{who}: runs as uid 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{who}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{who}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"{who}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{who}: capabilities.drop does not include ALL")
        added = sorted(set(caps.get("add") or []) - {"NET_BIND_SERVICE"})
        if added:
            out.append(f"{who}: adds capabilities {added}")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp != "RuntimeDefault":
            out.append(f"{who}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        resources = container.get("resources") or {}
        for section, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            missing = [k for k in keys if k not in (resources.get(section) or {})]
            if missing:
                out.append(f"{who}: resources.{section} misses {', '.join(missing)}")
        image = _image_finding(container.get("image"))
        if image:
            out.append(f"{who}: {image}")
        if needs_probes:
            for probe in ("livenessProbe", "readinessProbe"):
                if not container.get(probe):
                    out.append(f"{who}: no {probe}")
    return out


# -- inventory --------------------------------------------------------------------------------


def count_kinds(objects: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Objects per kind, sorted by kind."""
    counts = Counter(str(o.get("kind")) for o in objects)
    return dict(sorted(counts.items()))


def format_kind_counts(counts_by_env: Mapping[str, Mapping[str, int]]) -> str:
    """A plain-text table: one row per kind, one column per environment, and a total row."""
    envs = list(counts_by_env)
    kinds = sorted({k for counts in counts_by_env.values() for k in counts})
    width = max([len("kind"), len("total"), *map(len, kinds)])
    cols = [max(len(e), 5) for e in envs]
    lines = ["  ".join(["kind".ljust(width), *(e.rjust(w) for e, w in zip(envs, cols, strict=True))])]
    for kind in kinds:
        cells = (str(counts_by_env[e].get(kind, 0)).rjust(w) for e, w in zip(envs, cols, strict=True))
        lines.append("  ".join([kind.ljust(width), *cells]))
    totals = (str(sum(counts_by_env[e].values())).rjust(w) for e, w in zip(envs, cols, strict=True))
    lines.append("  ".join(["total".ljust(width), *totals]))
    return "\n".join(lines)
