#!/usr/bin/env python3
"""The chart's documentation from one source: the ``# --`` comments in ``charts/pynomaly/values.yaml``.

    python tools/chart_docs.py generate   # rewrite charts/pynomaly/README.md and values.schema.json
    python tools/chart_docs.py check      # exit 1 naming what is stale (tests/charts/test_docs.py runs it)

What it writes:

- ``README.md``: helm-docs (github.com/norwoodj/helm-docs, built from its Go module by
  ``tools/toolchain.py``) renders ``README.md.gotmpl``: the hand-written sections plus the values table
  generated from ``values.yaml``.
- ``values.schema.json``: every property on a fixed path from the root (``api.service.port``, not the
  entries of ``workers.pools``) gets ``description`` = its ``# --`` comment as helm-docs reads it and
  ``default`` = its value in ``values.yaml``.  Properties ``values.yaml`` does not have keep their own.
- ``values.schema.json`` ``definitions/io.k8s.*``: the Kubernetes definitions the schema ``$ref``s
  (``io.k8s.api.core.v1.Affinity`` ...) and everything they reference, converted from the OpenAPI
  document (``api/openapi-spec/swagger.json``) of the Kubernetes release the project builds
  (``toolchain.KUBERNETES_VERSION``, from the ``k8s.io/kubernetes`` module).  Strict like the rest of
  the schema: objects are closed (``additionalProperties: false``), ``Quantity`` is a string or number
  and ``IntOrString`` a string or integer, as Kubernetes reads them.  They are embedded, not referenced
  as a file: helm v3 resolves a relative ``$ref`` against ``file:///values.schema.json`` (the root of
  the file system, not the chart), and a packaged chart must validate without the network.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tools import toolchain  # noqa: E402

CHART = ROOT / "charts" / "pynomaly"
README = CHART / "README.md"
README_TEMPLATE = CHART / "README.md.gotmpl"
SCHEMA = CHART / "values.schema.json"
VALUES = CHART / "values.yaml"
K8S_PREFIX = "io.k8s."
K8S_REF = "#/definitions/"
# Kubernetes types that are not objects on the wire: what the API server accepts for them.
K8S_SCALARS: dict[str, list[dict[str, str]]] = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": [{"type": "string"}, {"type": "number"}],
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": [{"type": "string"}, {"type": "integer"}],
}
# helm-docs' rows as JSON, one object per documented key (a sprig function in its template engine).
ROWS_TEMPLATE = "{{ .Values | toJson }}\n"


class ChartDocsError(RuntimeError):
    """helm-docs or the Kubernetes OpenAPI document cannot be used; the message says why."""


# -- helm-docs ----------------------------------------------------------------------------------


def run_helm_docs(template: Path, chart: Path = CHART) -> str:
    """helm-docs' rendering of ``template`` for ``chart`` (values in file order), without writing."""
    if not template.is_file():  # helm-docs would fall back to its default template without a word
        raise ChartDocsError(f"{template} is missing")
    binary = toolchain.ensure("helm-docs")
    result = subprocess.run(
        [
            str(binary),
            "--chart-search-root",
            str(chart),
            "--template-files",
            str(template),
            "--sort-values-order",
            "file",
            "--dry-run",
            "--log-level",
            "warning",
        ],
        cwd=chart,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # helm-docs skips a chart it cannot parse with a log line and still exits 0
    if result.returncode != 0 or result.stderr.strip():
        raise ChartDocsError(f"helm-docs failed on {chart}:\n{result.stderr.strip()[-3000:]}")
    return result.stdout


def render_readme(chart: Path = CHART) -> str:
    return run_helm_docs(chart / README_TEMPLATE.name, chart)


def value_rows(chart: Path = CHART) -> list[dict[str, Any]]:
    """helm-docs' rows: Key, Type, Default, AutoDefault, Description, AutoDescription ..."""
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "rows.gotmpl"
        template.write_text(ROWS_TEMPLATE)
        rows: list[dict[str, Any]] = json.loads(run_helm_docs(template, chart))
    return rows


def descriptions(chart: Path = CHART) -> dict[str, str]:
    """Key -> description of every key values.yaml documents with ``# --``."""
    out = {}
    for row in value_rows(chart):
        text = (row.get("Description") or row.get("AutoDescription") or "").strip()
        if text:
            out[row["Key"]] = text
    return out


# -- Kubernetes definitions -----------------------------------------------------------------------


@cache
def kubernetes_openapi(version: str = toolchain.KUBERNETES_VERSION) -> dict[str, Any]:
    """The OpenAPI v2 document of Kubernetes ``version``, from its Go module (as the toolchain builds it)."""
    try:
        module = toolchain.module_dir(f"k8s.io/kubernetes@{version}")
    except toolchain.ToolchainError as exc:
        raise ChartDocsError(f"cannot fetch the Kubernetes {version} module for its OpenAPI document: {exc}") from exc
    spec = module / "api" / "openapi-spec" / "swagger.json"
    if not spec.is_file():
        raise ChartDocsError(f"{spec} is missing from the k8s.io/kubernetes@{version} module")
    document: dict[str, Any] = json.loads(spec.read_text())
    return document


def _refs(node: Any) -> set[str]:
    """Names of the ``#/definitions/...`` a schema node references."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(K8S_REF):
            found.add(ref.removeprefix(K8S_REF))
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _strict(node: Any) -> Any:
    """An OpenAPI v2 schema node as strict JSON schema: closed objects, no x-kubernetes-* annotations."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def kubernetes_definitions(roots: set[str], openapi: dict[str, Any]) -> dict[str, Any]:
    """``roots`` and every definition they reference, converted, sorted by name."""
    source = openapi["definitions"]
    wanted, todo = set(), sorted(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        if name not in source:
            raise ChartDocsError(f"values.schema.json references {name}, which Kubernetes' OpenAPI does not define")
        wanted.add(name)
        todo.extend(sorted(_refs(source[name]) - wanted))
    out = {}
    for name in sorted(wanted):
        if name in K8S_SCALARS:
            description = source[name].get("description")
            out[name] = {**({"description": description} if description else {}), "oneOf": K8S_SCALARS[name]}
        else:
            out[name] = _strict(source[name])
    return out


# -- values.schema.json ---------------------------------------------------------------------------


def _document(node: dict[str, Any], values: Any, docs: dict[str, str], path: str) -> None:
    """Set description and default of node's properties that values.yaml has, recursively."""
    for key, sub in list(node.get("properties", {}).items()):
        where = f"{path}.{key}" if path else key
        if not isinstance(values, dict) or key not in values:
            continue
        head: dict[str, Any] = {}
        if where in docs:
            head["description"] = docs[where]
        elif "description" in sub:
            head["description"] = sub["description"]
        head["default"] = values[key]
        rest = {k: v for k, v in sub.items() if k not in ("description", "default")}
        node["properties"][key] = {**head, **rest}
        _document(node["properties"][key], values[key], docs, where)


def synced_schema(
    schema: dict[str, Any], values: dict[str, Any], docs: dict[str, str], openapi: dict[str, Any]
) -> dict[str, Any]:
    """``schema`` with descriptions and defaults from values.yaml and fresh Kubernetes definitions."""
    out = copy.deepcopy(schema)
    own = {k: v for k, v in out.get("definitions", {}).items() if not k.startswith(K8S_PREFIX)}
    out["definitions"] = own
    _document(out, values, docs, "")
    roots = {name for name in _refs(out) if name.startswith(K8S_PREFIX)}
    out["definitions"] = {**own, **kubernetes_definitions(roots, openapi)}
    return out


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def expected_schema(chart: Path = CHART) -> str:
    schema = json.loads((chart / SCHEMA.name).read_text())
    values = yaml.safe_load((chart / VALUES.name).read_text())
    return schema_text(synced_schema(schema, values, descriptions(chart), kubernetes_openapi()))


def stale(chart: Path = CHART) -> list[str]:
    """Files that differ from what ``generate`` writes."""
    out = []
    if (chart / README.name).read_text() != render_readme(chart):
        out.append(str(chart / README.name))
    if (chart / SCHEMA.name).read_text() != expected_schema(chart):
        out.append(str(chart / SCHEMA.name))
    return out


def generate(chart: Path = CHART) -> list[str]:
    """Rewrite README.md and values.schema.json; the files that changed."""
    changed = []
    for path, text in ((chart / SCHEMA.name, expected_schema(chart)), (chart / README.name, render_readme(chart))):
        if path.read_text() != text:
            path.write_text(text)
            changed.append(str(path))
    return changed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tools/chart_docs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("generate", "check"))
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            for path in generate():
                print(f"wrote {path}")
            return 0
        drift = stale()
    except (ChartDocsError, toolchain.ToolchainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in drift:
        print(f"stale: {path} (run `python tools/chart_docs.py generate` and commit the result)", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
