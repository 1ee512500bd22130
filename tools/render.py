#!/usr/bin/env python3
"""Show what a Pulumi stack would create, without a cluster or the Pulumi CLI.

    ./dev render dev                 every Kubernetes object the program declares, as YAML
    ./dev render cloud --summary     objects per kind (all environments with --summary and no ENV)
    ./dev render onprem --values     the values the program passes to charts/pynomaly; pipe them into
                                     helm to see the application's objects too:
        ./dev render onprem --values | ~/.cache/pynomaly/bin/helm template pynomaly charts/pynomaly -n pynomaly -f -

The program runs under Pulumi mocks with environments/Pulumi.<ENV>.yaml as its config.  Secret
values are shown as <secret>: generated passwords only exist after a real `pulumi up`; a secret the
operator must give (cloud's encryptionKey) gets a fixed stand-in (infra.mocked.operator_secrets).  The chart is
a Helm v4 Chart resource, which mocks do not expand; use --values with `helm template` for it (the pools'
autoscalers come from the same chart through a helm v3 Chart, which mocks do expand: they are listed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra import mocked  # noqa: E402
from infra.config import ENVIRONMENTS, ConfigError  # noqa: E402

HELM_CHART = "kubernetes:helm.sh/v4:Chart"


def _mask(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("kind") == "Secret":
        for key in ("stringData", "data"):
            if obj.get(key):
                obj[key] = dict.fromkeys(obj[key], "<secret>")
    return obj


def _summary(envs: list[str]) -> str:
    counts = {}
    for env in envs:
        run = mocked.run(env, secrets=mocked.operator_secrets(env))
        by_kind: dict[str, int] = {}
        for obj in run.objects():
            by_kind[obj["kind"]] = by_kind.get(obj["kind"], 0) + 1
        counts[env] = dict(sorted(by_kind.items()))
    kinds = sorted({k for c in counts.values() for k in c})
    width = max(len("total"), *map(len, kinds))
    lines = ["kind".ljust(width) + "".join(e.rjust(9) for e in envs)]
    lines += [k.ljust(width) + "".join(str(counts[e].get(k, 0)).rjust(9) for e in envs) for k in kinds]
    lines.append("total".ljust(width) + "".join(str(sum(counts[e].values())).rjust(9) for e in envs))
    return "\n".join(lines) + "\n(plus the objects of charts/pynomaly: see --values)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("env", nargs="?", choices=ENVIRONMENTS, help="stack / environment name")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--summary", action="store_true", help="print object counts per kind")
    mode.add_argument("--values", action="store_true", help="print the chart values as YAML")
    args = parser.parse_args(argv)
    if not args.env and not args.summary:
        parser.error("ENV is required (except with --summary)")
    try:
        if args.summary:
            sys.stdout.write(_summary([args.env] if args.env else list(ENVIRONMENTS)))
            return 0
        run = mocked.run(args.env, secrets=mocked.operator_secrets(args.env))
    except ConfigError as exc:
        print(f"environments/Pulumi.{args.env}.yaml: {exc}", file=sys.stderr)
        return 2
    if args.values:
        sys.stdout.write(yaml.safe_dump(run.chart_values(), sort_keys=True))
        return 0
    docs = [_mask(obj) for obj in run.objects()]
    sys.stdout.write(f"# Objects the '{args.env}' stack declares (Pulumi mocks; secrets masked).\n")
    sys.stdout.write("# Plus the application chart: tools/render.py " + args.env + " --values | helm template ...\n")
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
