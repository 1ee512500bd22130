"""``python -m tools.cluster up|down|status`` (what ``./dev cluster`` runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.cluster.local import DEFAULT_STATE_DIR, ClusterError, LocalCluster
from tools.images import ImageError
from tools.toolchain import ToolchainError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev cluster", description="The project's local Kubernetes cluster.")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where its certificates, data and logs live (default: .pynomaly/cluster)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build what is missing, start the cluster and load the images, then return")
    up.add_argument("--no-images", action="store_true", help="load no application images (DNS and pause only)")
    up.add_argument(
        "--fake-nodes",
        type=int,
        default=0,
        metavar="N",
        help="also N kwok fake nodes per zone (zone-a..c), for stacks bigger than this machine",
    )
    up.add_argument(
        "--keda",
        action="store_true",
        help="also run KEDA (operator + metrics API server; built from source the first time)",
    )
    up.add_argument(
        "--no-network-policies",
        action="store_true",
        help="do not run the NetworkPolicy agent (kube-network-policies): policies are then not enforced",
    )
    sub.add_parser("down", help="stop every process it started and restore the host settings")
    sub.add_parser("status", help="processes, API readiness and nodes")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir)
    try:
        if args.command == "up":
            from tools import images  # debootstrap and friends: only when starting

            built = images.build(("pause", "coredns") if args.no_images else ())
            refs = images.image_refs(built)
            cluster.up(
                [b.archive for b in built.values()],
                pause_image=refs["pause"],
                dns_image=refs["coredns"],
                network_policies=not args.no_network_policies,
            )
            if args.fake_nodes:
                cluster.add_fake_nodes(per_zone=args.fake_nodes)
            if args.keda:
                from tools.cluster import keda

                image = images.build(["keda"], skip_missing=False)["keda"]
                cluster.load_images([image.archive])
                print(f"cluster: KEDA ready in {keda.install(cluster, image.ref):.0f} s", file=sys.stderr)
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            cluster.down()
        else:
            print(json.dumps(cluster.status(), indent=2))
    except (ClusterError, ToolchainError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
