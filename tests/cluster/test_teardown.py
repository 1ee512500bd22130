"""Last in the deploy tier: `down` stops every process the cluster started and puts the host back."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from tools.cluster import LocalCluster
from tools.cluster.local import BRIDGE, NETPOL_QUEUE, NETPOL_TABLE, _kube_chains, _mounts_under, _queue_bound, _run

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def test_down_stops_everything_and_restores_the_host(local_cluster: LocalCluster) -> None:
    state = local_cluster.state
    processes = list(state.processes)
    assert {p.name for p in processes} >= {
        "etcd",
        "kube-apiserver",
        "kubelet",
        "containerd",
        "kube-proxy",
        "kube-network-policies",
    }
    assert _nft_table_exists()
    shims_before = _shims(local_cluster)
    assert shims_before, "no pod was running: the tier ran nothing"
    saved_sysctls = dict(state.sysctls)
    chains_before = set(state.kube_chains_before)
    netns_before = set(state.netns_before)

    assert local_cluster.down(quiet=True)

    assert [p.name for p in processes if p.alive()] == []
    assert _shims(local_cluster) == []
    assert _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0
    assert _kube_chains() <= chains_before
    forward = _run(["iptables", "-w", "-S", "FORWARD"], check=False).stdout
    assert BRIDGE not in forward
    for name, value in saved_sysctls.items():
        assert Path("/proc/sys", name).read_text().strip() == value, name
    assert _mounts_under(local_cluster.state_dir) == []
    netns = set(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else set()
    assert {n for n in netns - netns_before if n.startswith("cni-")} == set()
    assert not _nft_table_exists()
    assert not _queue_bound(NETPOL_QUEUE)


def _nft_table_exists() -> bool:
    return _run(["nft", "list", "table", "inet", NETPOL_TABLE], check=False).returncode == 0


def _shims(cluster: LocalCluster) -> list[int]:
    needle = str(cluster.containerd_sock).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and needle in cmdline:
                found.append(int(entry.name))
    return found


def test_a_cluster_killed_without_down_is_cleaned_up_by_the_next_up(
    local_cluster: LocalCluster, built_images: dict, tmp_path: Path
) -> None:
    """CI ends a run's processes by force; the bridge, iptables rules and sysctls would stay. The next
    `up` finds the machine record (outside the state folder, which may be gone too) and restores first."""
    import shutil
    import signal

    from tools import images

    assert not local_cluster.running()  # the session's cluster is down (test above)
    refs = images.image_refs(built_images)
    minimal = [b.archive for b in built_images.values() if b.role in ("pause", "coredns")]
    killed = LocalCluster(tmp_path / "killed")
    killed.up(minimal, pause_image=refs["pause"], dns_image=refs["coredns"])
    for record in killed.state.processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(p.alive() for p in killed.state.processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(killed.state_dir, ignore_errors=True)
    assert _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0  # left behind
    assert _nft_table_exists()  # so are the killed policy agent's rules (fail closed)

    again = LocalCluster(tmp_path / "again")
    try:
        again.up(minimal, pause_image=refs["pause"], dns_image=refs["coredns"])
        started = list(again.state.processes)
        assert again.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        again.down(quiet=True)
    assert _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0
    assert BRIDGE not in _run(["iptables", "-w", "-S", "FORWARD"], check=False).stdout
    assert not _nft_table_exists()
    assert not [p.name for p in killed.state.processes + started if p.alive()]
