"""The chart documents itself from values.yaml: README (helm-docs) and schema descriptions and defaults
are regenerated and compared, every value is documented, Kubernetes structures are typed by
Kubernetes' own definitions (tools/chart_docs.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.chartlib import MINIMAL_VALUES, deep_merge
from tools import chart_docs, toolchain
from tools.helm import CHART, KUBE_VERSION, HelmError, run_helm

pytestmark = pytest.mark.helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
K8S = "#/definitions/io.k8s."

# Keys whose contents are data rather than settings: pools by name (described by their parent's
# comment and the schema's pool definitions), label maps, and resources (one documented block each).
WHOLE = re.compile(r"(^(workers|consumers)\.pools|\.labels|Selector|\.resources)$")


@pytest.fixture(scope="module")
def docs() -> dict[str, str]:
    try:
        return chart_docs.descriptions()
    except (chart_docs.ChartDocsError, toolchain.ToolchainError) as exc:  # a broken toolchain fails
        pytest.fail(str(exc))


def value_keys(node: Any, path: str = "") -> Iterator[str]:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        yield where
        if not WHOLE.search(where):
            yield from value_keys(value, where)


def schema_properties(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Properties reachable from the root by name (not through $ref or pools' additionalProperties)."""
    for key, sub in node.get("properties", {}).items():
        where = f"{path}.{key}" if path else key
        yield where, sub
        yield from schema_properties(sub, where)


def test_helm_docs_is_the_pinned_build() -> None:
    assert "helm-docs" in toolchain.tier_tools("ci")  # CI builds it with the other tools
    out = subprocess.run(
        [str(toolchain.ensure("helm-docs")), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == f"helm-docs version {toolchain.HELM_DOCS_VERSION.removeprefix('v')}"


def test_readme_and_schema_are_what_generate_writes() -> None:
    """The CI drift check: `python tools/chart_docs.py generate` would change nothing."""
    assert chart_docs.stale() == []
    assert chart_docs.main(["check"]) == 0


def test_a_changed_comment_makes_both_stale(tmp_path: Path) -> None:
    chart = tmp_path / "pynomaly"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    old = "# -- Port of the Redis master."
    assert values.read_text().count(old) == 1
    values.write_text(values.read_text().replace(old, "# -- The port Redis listens on."))
    assert chart_docs.stale(chart) == [str(chart / "README.md"), str(chart / "values.schema.json")]
    assert chart_docs.generate(chart) == [str(chart / "values.schema.json"), str(chart / "README.md")]
    assert chart_docs.stale(chart) == []
    assert "| `redis.port` | int | `6379` | The port Redis listens on. |" in (chart / "README.md").read_text()
    schema = json.loads((chart / "values.schema.json").read_text())
    assert schema["properties"]["redis"]["properties"]["port"]["description"] == "The port Redis listens on."


def test_the_hand_written_sections_come_from_the_template() -> None:
    readme = (CHART / "README.md").read_text()
    template = (CHART / "README.md.gotmpl").read_text()
    hand_written = template.split("| Key | Type | Default | Description |")[0]
    assert readme.startswith(hand_written)
    assert "## Render-time guards" in hand_written
    assert "README.md.gotmpl" in (CHART / ".helmignore").read_text()  # not shipped in the package


def test_every_value_is_documented(docs: dict[str, str]) -> None:
    keys = list(value_keys(VALUES))
    assert len(keys) > 150
    assert [key for key in keys if key not in docs] == []


def test_every_schema_property_has_a_description_and_default(docs: dict[str, str]) -> None:
    missing = [
        f"{where}: {field}"
        for where, sub in schema_properties(SCHEMA)
        for field in ("description", "default")
        if field not in sub
    ]
    assert missing == []
    # the project's own definitions (pools, allowTo, ...) describe their fields too
    for name, definition in SCHEMA["definitions"].items():
        if not name.startswith("io.k8s."):
            undescribed = [w for w, sub in schema_properties(definition) if "description" not in sub]
            assert undescribed == [], name


def test_schema_descriptions_and_defaults_are_values_yaml(docs: dict[str, str]) -> None:
    def value_at(where: str) -> Any:
        node: Any = VALUES
        for part in where.split("."):
            node = node[part]
        return node

    checked = 0
    for where, sub in schema_properties(SCHEMA):
        if where == "global":  # helm's, not in values.yaml
            assert sub["default"] == {}
            continue
        assert sub["default"] == value_at(where), where
        assert sub["description"] == docs[where], where
        checked += 1
    assert checked > 150


@pytest.mark.parametrize(
    ("where", "ref"),
    [
        (("scheduling", "affinity"), "api.core.v1.Affinity"),
        (("api", "affinity"), "api.core.v1.Affinity"),
        (("beat", "affinity"), "api.core.v1.Affinity"),
        (("scheduling", "tolerations", "items"), "api.core.v1.Toleration"),
        (("api", "tolerations", "items"), "api.core.v1.Toleration"),
        (("beat", "tolerations", "items"), "api.core.v1.Toleration"),
        (("scheduling", "topologySpreadConstraints", "items"), "api.core.v1.TopologySpreadConstraint"),
        (("api", "topologySpreadConstraints", "items"), "api.core.v1.TopologySpreadConstraint"),
        (("networkPolicy", "apiIngressFrom", "items"), "api.networking.v1.NetworkPolicyPeer"),
        (("networkPolicy", "metricsFrom", "items"), "api.networking.v1.NetworkPolicyPeer"),
    ],
)
def test_kubernetes_structures_reference_kubernetes_definitions(where: tuple[str, ...], ref: str) -> None:
    node = SCHEMA
    for part in where:
        node = node["items"] if part == "items" else node["properties"][part]
    assert node["$ref"] == K8S + ref


def test_resources_are_kubernetes_resource_requirements_with_the_projects_rule() -> None:
    resources = SCHEMA["definitions"]["resources"]["allOf"]
    assert resources[0] == {"$ref": K8S + "api.core.v1.ResourceRequirements"}
    assert resources[1]["required"] == ["requests", "limits"]
    egress = SCHEMA["definitions"]["networkPolicyEgressRule"]["allOf"]
    assert egress[0] == {"$ref": K8S + "api.networking.v1.NetworkPolicyEgressRule"}


def test_embedded_definitions_are_the_kubernetes_openapi_of_the_built_release() -> None:
    openapi = chart_docs.kubernetes_openapi(toolchain.KUBERNETES_VERSION)
    embedded = {k: v for k, v in SCHEMA["definitions"].items() if k.startswith("io.k8s.")}
    roots = {r for r in chart_docs._refs({k: v for k, v in SCHEMA.items() if k != "definitions"})}
    roots |= chart_docs._refs({k: v for k, v in SCHEMA["definitions"].items() if not k.startswith("io.k8s.")})
    assert embedded == chart_docs.kubernetes_definitions({r for r in roots if r.startswith("io.k8s.")}, openapi)
    # strict as the rest of the schema: closed objects, Kubernetes' wire forms of Quantity/IntOrString
    affinity_term = embedded["io.k8s.api.core.v1.PodAffinityTerm"]
    assert affinity_term["additionalProperties"] is False
    assert affinity_term["required"] == openapi["definitions"]["io.k8s.api.core.v1.PodAffinityTerm"]["required"]
    assert embedded["io.k8s.apimachinery.pkg.api.resource.Quantity"]["oneOf"] == [
        {"type": "string"},
        {"type": "number"},
    ]
    assert not re.search(r'"x-kubernetes-', json.dumps(embedded))


def test_a_reference_kubernetes_does_not_define_is_a_clear_error() -> None:
    with pytest.raises(chart_docs.ChartDocsError, match=r"io\.k8s\.api\.core\.v1\.Affinty, which Kubernetes"):
        chart_docs.kubernetes_definitions({"io.k8s.api.core.v1.Affinty"}, chart_docs.kubernetes_openapi())


@pytest.mark.parametrize(
    ("override", "where", "what"),
    [
        (
            {"api": {"tolerations": [{"key": "dedicated", "operatr": "Exists"}]}},
            "/api/tolerations/0",
            "additional properties 'operatr'",
        ),
        (
            {"scheduling": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}}},
            "/scheduling/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            "missing property 'nodeSelectorTerms'",
        ),
        (
            {
                "beat": {
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {"weight": "high", "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
                            ]
                        }
                    }
                }
            },
            "/beat/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/weight",
            "want integer",
        ),
        (
            {"api": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}},
            "/api/topologySpreadConstraints/0",
            "missing property 'whenUnsatisfiable'",
        ),
        (
            {"networkPolicy": {"apiIngressFrom": [{"ipBlock": {"cidr": "10.0.0.0/8", "expect": []}}]}},
            "/networkPolicy/apiIngressFrom/0/ipBlock",
            "additional properties 'expect'",
        ),
        (
            {
                "api": {
                    "resources": {
                        "requests": {"cpu": "1", "memory": "1Gi"},
                        "limits": {"memory": "1Gi"},
                        "claims": [{}],
                    }
                }
            },
            "/api/resources",
            "missing property 'name'",
        ),
        (
            {"workers": {"pools": {"detection": {"extraEgress": [{"ports": [{"port": 443, "protocol": "HTTP"}]}]}}}},
            "/workers/pools/detection/extraEgress/0",
            "value must be one of 'TCP', 'UDP', 'SCTP'",
        ),
    ],
)
def test_helm_refuses_a_malformed_kubernetes_structure(
    render: Any, override: dict[str, Any], where: str, what: str
) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, override))
    message = str(info.value)
    assert "values don't meet the specifications of the schema" in message
    assert where in message and what in message, message


def test_well_formed_kubernetes_structures_render(render: Any) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "pynomaly", "effect": "NoSchedule"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["batch"]}]}]
            }
        }
    }
    objects = render(
        values=deep_merge(MINIMAL_VALUES, {"scheduling": {"tolerations": [toleration], "affinity": affinity}})
    )
    api = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-api"))
    assert api["spec"]["template"]["spec"]["tolerations"] == [toleration]
    assert api["spec"]["template"]["spec"]["affinity"] == affinity


def test_the_packaged_chart_validates_without_its_folder_or_the_network(helm: Path, tmp_path: Path) -> None:
    """Why the definitions are embedded: helm resolves file $refs from `/`, a .tgz has no folder."""
    packaged = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert packaged.returncode == 0, packaged.stderr
    (tgz,) = tmp_path.glob("pynomaly-*.tgz")
    values = tmp_path / "bad.json"
    values.write_text(json.dumps(deep_merge(MINIMAL_VALUES, {"api": {"tolerations": [{"efect": "NoSchedule"}]}})))
    result = run_helm("template", "p", str(tgz), "--kube-version", KUBE_VERSION, "--values", str(values))
    assert result.returncode != 0
    assert "at '/api/tolerations/0': additional properties 'efect' not allowed" in result.stderr
    assert "failing loading" not in result.stderr
