"""A real Kubernetes cluster on this machine, started and stopped by the project.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet on Debian's containerd and
runc, kube-proxy (iptables) and CoreDNS as a pod: the binaries come from ``tools/toolchain.py``
(Kubernetes v1.35.4 from the Go module proxy), the images from ``tools/images.py``.  NetworkPolicies
are enforced by kube-network-policies (SIG Network's agent) as a host process: the bridge CNI enforces
none.  It sends the first packet of each connection to or from a pod that a policy selects to an
nfqueue, judges it against the policies and drops what they deny (fail closed while it runs).

Loopback only: every component listens on 127.0.0.1 (ports picked free at ``up``); the node is named
``127.0.0.1``.  Pods live on a host-only bridge (``pnbr0``, 10.244.0.0/24) with no route off the
machine: forwarding is allowed between pods only, and pods reach the API server through a forwarder
on the bridge's gateway address.  containerd gets a proxy that points nowhere, so an image that was not
loaded is never pulled from a registry.

Host settings the kubelet, kube-proxy and the bridge change (sysctls, iptables chains, the bridge, the
pods' network namespaces and mounts) are recorded at ``up`` and restored at ``down``; every process is
stopped by the pid recorded in ``<state>/cluster.json``, so ``down`` works from any shell and after a
failed ``up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pynomaly.localstack.ports import LOOPBACK, free_port
from pynomaly.localstack.procs import HOST_DAEMON_UMASK, ProcessRecord, log_tail, spawn, stop_process
from tools import toolchain
from tools.cluster import manifests, pki

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = ROOT / ".pynomaly" / "cluster"

NODE_NAME = "127.0.0.1"  # the kubelet refuses a loopback --node-ip, but takes it as its host name
BRIDGE = "pnbr0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
LB_ADDRESS = "10.244.0.250"  # announced for LoadBalancer Services and Ingresses; never bound
FRONT_PROXY_CLIENT = "front-proxy-client"  # the aggregation layer's client certificate CN
NOWHERE_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, so a pull fails at once

# Host settings changed while the cluster runs (by us, the kubelet or kube-proxy): saved and restored.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/ipv4/conf/all/route_localnet",
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
)
# Only forward between pods on the bridge: nothing from a pod may leave the machine.
FORWARD_RULES = (
    ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
    ["-i", BRIDGE, "-j", "DROP"],
    ["-o", BRIDGE, "-j", "DROP"],
)
REQUIRED_COMMANDS = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "iptables": "iptables",
    "socat": "socat",
    "openssl": "openssl",
    "ip": "iproute2",
    "mount": "mount",
}
# The NetworkPolicy agent: its nftables table (removed by `down`, also after a killed cluster, with
# Debian's `nft`), the nfqueue it reads, and the user of its client certificate (RBAC: read-only).
NETPOL_TABLE = "pynomaly-network-policies"
NETPOL_QUEUE = 100
NETPOL_USER = "pynomaly-network-policies"
NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")
CNI_BIN_DIR = Path("/usr/lib/cni")
LOCAL_VOLUMES_PER_NODE = 8
K8S_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")


MACHINE_RECORD = Path("/run/pynomaly/cluster.json")


def _recorded_state_dir() -> str | None:
    text = _read(MACHINE_RECORD)
    return json.loads(text).get("state_dir") if text else None


class ClusterError(RuntimeError):
    """The cluster cannot start or stop; the message is one line saying why and what to do."""


def _say(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


@dataclass
class ClusterState:
    """What ``down`` needs, also from another process: kept in ``<state>/cluster.json``."""

    processes: list[ProcessRecord] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    netns_before: list[str] = field(default_factory=list)
    forward_rules: bool = False
    kube_chains_before: list[str] = field(default_factory=list)
    bridge_created: bool = False
    fake_nodes: list[str] = field(default_factory=list)
    nft_table: str = ""  # the policy agent's, while it may exist

    def to_json(self) -> str:
        data = {**self.__dict__, "processes": [p.to_dict() for p in self.processes]}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        data["processes"] = [ProcessRecord.from_dict(p) for p in data.get("processes", [])]
        return cls(**data)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", name).write_text(value + "\n")


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, env=env, check=False
    )
    if check and result.returncode != 0:
        raise ClusterError(f"`{' '.join(argv[:4])}` failed: {(result.stderr or result.stdout).strip()[-800:]}")
    return result


def _effective_caps() -> int:
    for line in (_read(Path("/proc/self/status")) or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


class LocalCluster:
    """The cluster in ``state_dir`` (default ``.pynomaly/cluster``); images persist in the machine cache."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, *, die_with_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.die_with_parent = die_with_parent
        self.pki_dir = self.state_dir / "pki"
        self.logs = self.state_dir / "logs"
        self.run_dir = self.state_dir / "run"
        self.kubeconfig = self.state_dir / "kubeconfig"
        # containerd's content and snapshots outlive a cluster: loaded images are kept between runs.
        self.containerd_root = toolchain.cache_dir() / "containerd"
        self.containerd_sock = self.run_dir / "containerd.sock"
        self.state = self._load_state() or ClusterState()
        self.bins: dict[str, Path] = {}
        self.pause_image = self.dns_image = ""

    # -- state ------------------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def _load_state(self) -> ClusterState | None:
        text = _read(self._state_file)
        return ClusterState.from_json(text) if text else None

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(self.state.to_json())
        # A copy for the machine, outside the state folder (which a test run may delete): the next `up`
        # finds a cluster that was killed without `down` and restores the host first.  /run is cleared at
        # boot, like the host settings it describes.
        if self.state.processes or self.state.bridge_created or self.state.forward_rules:
            MACHINE_RECORD.parent.mkdir(parents=True, exist_ok=True)
            MACHINE_RECORD.write_text(
                json.dumps({"state_dir": str(self.state_dir), "state": json.loads(self.state.to_json())})
            )
        elif _recorded_state_dir() == str(self.state_dir):
            MACHINE_RECORD.unlink(missing_ok=True)

    def running(self) -> bool:
        return any(p.alive() for p in self.state.processes)

    # -- kubectl ----------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        kubectl = self.bins.get("kubectl") or toolchain.ensure("kubectl")
        return _run(
            [str(kubectl), "--kubeconfig", str(self.kubeconfig), *args], check=check, timeout=timeout, input=input
        )

    def apply(self, objects: Iterable[dict[str, Any]], *, server_side: bool = True) -> None:
        text = yaml.safe_dump_all(list(objects), sort_keys=False)
        args = ["apply", "--server-side", "--force-conflicts", "-f", "-"] if server_side else ["apply", "-f", "-"]
        self.kubectl(*args, input=text)

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _run(
            ["ctr", "--address", str(self.containerd_sock), "--namespace", "k8s.io", *args],
            check=check,
            timeout=timeout,
        )

    # -- up ---------------------------------------------------------------------------------------

    def preflight(self, network_policies: bool = True) -> None:
        if os.geteuid() != 0:
            raise ClusterError("the local cluster needs root (it runs a kubelet, containerd and iptables)")
        required = {**REQUIRED_COMMANDS, **({"nft": "nftables"} if network_policies else {})}
        missing = sorted({pkg for cmd, pkg in required.items() if shutil.which(cmd) is None})
        if missing:
            raise ClusterError(f"missing Debian packages: {' '.join(missing)} (apt-get install {' '.join(missing)})")
        if not (CNI_BIN_DIR / "bridge").is_file():
            raise ClusterError("missing CNI plugins in /usr/lib/cni: apt-get install containernetworking-plugins")
        caps = _effective_caps()
        for bit, name in ((21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN")):
            if not caps & (1 << bit):
                raise ClusterError(f"this process lacks {name}: the kubelet and the pod network need it")
        if not Path("/sys/fs/cgroup/memory").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
            raise ClusterError("no memory cgroup controller is mounted under /sys/fs/cgroup: the kubelet needs it")
        if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            raise ClusterError("bridge netfilter is unavailable (modprobe br_netfilter): Services need it")
        if self.running():
            raise ClusterError(f"a cluster already runs from {self.state_dir}: `./dev cluster down` first")
        self._clean_up_after_a_killed_cluster()
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0 and not self.state.bridge_created:
            raise ClusterError(
                f"network interface {BRIDGE} already exists: another cluster may be running "
                f"(`ip link del {BRIDGE}` if not)"
            )
        if network_policies and _queue_bound(NETPOL_QUEUE):
            raise ClusterError(
                f"nfqueue {NETPOL_QUEUE} is already read by another process (a policy agent?): "
                "the cluster's NetworkPolicy agent needs it"
            )

    def _clean_up_after_a_killed_cluster(self) -> None:
        recorded = _read(MACHINE_RECORD)
        if not recorded:
            return
        record = json.loads(recorded)
        other = LocalCluster(Path(record["state_dir"]))
        other.state = ClusterState.from_json(json.dumps(record["state"]))
        if other.running():
            raise ClusterError(
                f"a cluster already runs from {other.state_dir}: "
                f"`./dev cluster --state-dir {other.state_dir} down` first"
            )
        _say(f"restoring the host after a cluster that was not stopped ({other.state_dir})")
        other.down(quiet=True)
        MACHINE_RECORD.unlink(missing_ok=True)
        if other.state_dir == self.state_dir:
            self.state = other.state

    def up(
        self,
        archives: Sequence[Path],
        *,
        pause_image: str,
        dns_image: str,
        timeout: float = 240,
        network_policies: bool = True,
    ) -> None:
        """Start everything and load ``archives`` (image tarballs, among them the sandbox image
        ``pause_image`` and CoreDNS ``dns_image``); on any failure stop what was started and restore
        the host, then raise.  ``network_policies``: run the agent that enforces them."""
        started = time.monotonic()
        self.pause_image, self.dns_image = pause_image, dns_image
        self.preflight(network_policies)
        self.bins = toolchain.ensure_all((*K8S_TOOLS, *(("kube-network-policies",) if network_policies else ())))
        self._reset_dirs()
        self.state = ClusterState()
        self._save_state()
        try:
            self._host_network()
            self._pki()
            self._control_plane(timeout)
            self._containerd(archives)
            self._node(timeout)
            if network_policies:
                self._network_policy_agent(timeout)
            self._addons(timeout)
        except BaseException:
            _say("start failed; stopping what was started")
            self.down(quiet=True)
            raise
        _say(f"ready in {time.monotonic() - started:.1f} s: KUBECONFIG={self.kubeconfig}")

    def _reset_dirs(self) -> None:
        # A previous run's mounts (secret volumes under the kubelet's folder) must go before its files.
        _unmount_under(self.state_dir)
        for sub in ("pki", "run", "data", "kubelet", "volumes"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("pki", "run", "data", "logs", "volumes"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self.pki_dir.chmod(0o700)

    def _host_network(self) -> None:
        self.state.sysctls = {n: v for n in SYSCTLS if (v := _read(Path("/proc/sys", n))) is not None}
        self.state.netns_before = sorted(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else []
        self.state.kube_chains_before = sorted(_kube_chains())
        self._save_state()
        # The bridge exists before the pods, so the API forwarder can listen on its address.
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        self.state.bridge_created = True
        self._save_state()
        _run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        for rule in reversed(FORWARD_RULES):
            _run(["iptables", "-w", "-I", "FORWARD", "1", *rule])
        self.state.forward_rules = True
        self._save_state()
        _write_sysctl("net/bridge/bridge-nf-call-iptables", "1")  # Service replies between pods need conntrack
        _write_sysctl("net/ipv4/ip_forward", "1")

    def _pki(self) -> None:
        p = self.pki_dir
        pki.make_ca(p)
        pki.make_server_cert(
            p,
            "apiserver",
            "kube-apiserver",
            dns=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            ],
            ips=[LOOPBACK, API_SERVICE_IP, GATEWAY],
        )
        for identity in (
            pki.Identity("admin", "pynomaly-admin", "system:masters"),
            pki.Identity("controller-manager", "system:kube-controller-manager"),
            pki.Identity("scheduler", "system:kube-scheduler"),
            pki.Identity("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            pki.Identity("kube-proxy", "system:kube-proxy"),
            pki.Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
            pki.Identity("network-policies", NETPOL_USER),
        ):
            pki.make_client_cert(p, identity)
        # The aggregation layer (an extension API server such as KEDA's metrics server): the API server
        # proxies to it as this client, vouching for the user in headers that only this CA may sign for.
        pki.make_signing_ca(p, "front-proxy-ca", "pynomaly-local-front-proxy-ca")
        pki.make_client_cert(p, pki.Identity("front-proxy-client", FRONT_PROXY_CLIENT), ca="front-proxy-ca")

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ProcessRecord:
        # The daemons' usual umask: under 077 containerd unpacks image roots a non-root container cannot enter.
        _proc, record = spawn(
            name,
            [str(a) for a in argv],
            self.logs / f"{name}.log",
            env=env,
            die_with_parent=self.die_with_parent,
            umask=HOST_DAEMON_UMASK,
        )
        self.state.processes.append(record)
        self._save_state()
        return record

    def _wait(
        self,
        what: str,
        check: Callable[[], str | None],
        timeout: float,
        record: ProcessRecord | None = None,
        interval: float = 0.3,
    ) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if record is not None and not record.alive():
                raise ClusterError(
                    f"{record.name} exited at start: {log_tail(record.log, 5).strip()[-600:]} (log: {record.log})"
                )
            reason = check()
            if reason is None:
                return
            last = reason
            time.sleep(interval)
        raise ClusterError(f"{what} not ready within {timeout:.0f} s ({last})")

    def _control_plane(self, timeout: float) -> None:
        ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler")}
        self.state.ports.update(ports)
        p, data = self.pki_dir, self.state_dir / "data"
        etcd = self._spawn(
            "etcd",
            [
                self.bins["etcd"],
                "--name",
                "local",
                "--data-dir",
                data / "etcd",
                "--listen-client-urls",
                f"http://{LOOPBACK}:{ports['etcd']}",
                "--advertise-client-urls",
                f"http://{LOOPBACK}:{ports['etcd']}",
                "--listen-peer-urls",
                f"http://{LOOPBACK}:{ports['etcd-peer']}",
                "--initial-advertise-peer-urls",
                f"http://{LOOPBACK}:{ports['etcd-peer']}",
                "--initial-cluster",
                f"local=http://{LOOPBACK}:{ports['etcd-peer']}",
                "--listen-metrics-urls",
                "",
                "--log-level",
                "warn",
                "--quota-backend-bytes",
                str(2 << 30),
            ],
        )
        server = f"https://{LOOPBACK}:{ports['apiserver']}"
        for name in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy", "network-policies"):
            pki.kubeconfig(p, name, server, self.state_dir / f"{name}.kubeconfig")
        shutil.copy2(self.state_dir / "admin.kubeconfig", self.kubeconfig)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                self.bins["kube-apiserver"],
                f"--etcd-servers=http://{LOOPBACK}:{ports['etcd']}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports['apiserver']}",
                # Published as the `kubernetes` Service's endpoint; the forwarder on the bridge serves it to pods.
                f"--advertise-address={GATEWAY}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",  # PodSecurity is on by default
                "--allow-privileged=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--profiling=false",
                "--anonymous-auth=false",
                # The aggregation layer; routing to the endpoint (pod IP, reachable from the host over the bridge)
                # rather than the Service IP, which the host reaches only through kube-proxy's rules.
                f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
                "--enable-aggregator-routing=true",
            ],
        )
        self._wait("etcd", lambda: None if _tcp_open(ports["etcd"]) else "not listening", 30, etcd)
        self._wait("kube-apiserver", self._readyz, timeout, apiserver)
        self._spawn(
            "api-forwarder",
            [
                "socat",
                f"TCP-LISTEN:{ports['apiserver']},bind={GATEWAY},reuseaddr,fork",
                f"TCP:{LOOPBACK}:{ports['apiserver']}",
            ],
        )
        self._spawn(
            "kube-controller-manager",
            [
                self.bins["kube-controller-manager"],
                *self._controller_args("controller-manager", ports["kcm"]),
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                self.bins["kube-scheduler"],
                *self._controller_args("scheduler", ports["scheduler"]),
            ],
        )

    def _controller_args(self, identity: str, port: int) -> list[str]:
        """What the controller-manager and the scheduler share: their kubeconfig for everything, a
        loopback port, their own serving certificates, a single instance (no leader election)."""
        conf = self.state_dir / f"{identity}.kubeconfig"
        return [
            f"--kubeconfig={conf}",
            f"--authentication-kubeconfig={conf}",
            f"--authorization-kubeconfig={conf}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'data' / identity}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _readyz(self) -> str | None:
        result = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
        return None if result.stdout.strip() == "ok" else (result.stderr.strip()[-200:] or result.stdout[-200:])

    def _containerd(self, archives: Sequence[Path]) -> None:
        net_dir = self.run_dir / "net.d"
        net_dir.mkdir(parents=True, exist_ok=True)
        (net_dir / "10-pynomaly.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "pynomaly-local",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.run_dir / "ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "containerd.toml"
        config.write_text(
            _containerd_config(
                self.containerd_root, self.run_dir / "containerd-state", self.containerd_sock, net_dir, self.pause_image
            )
        )
        env = dict(os.environ, HTTP_PROXY=NOWHERE_PROXY, HTTPS_PROXY=NOWHERE_PROXY, NO_PROXY="")
        record = self._spawn("containerd", ["containerd", "--config", config], env=env)
        self._wait(
            "containerd",
            lambda: None if self.ctr("version", check=False, timeout=10).returncode == 0 else "socket not answering",
            30,
            record,
        )
        self._remove_containers()
        self.load_images(archives)

    def load_images(self, archives: Sequence[Path]) -> list[str]:
        from tools import images

        return images.load(archives, str(self.containerd_sock))

    def _remove_containers(self) -> None:
        """Containers a killed earlier cluster left in containerd's metadata (none after a clean down)."""
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            self.ctr("tasks", "delete", "-f", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", container, check=False)

    def _node(self, timeout: float) -> None:
        ports = {name: free_port() for name in ("kubelet", "kubelet-healthz", "proxy-healthz", "proxy-metrics")}
        self.state.ports.update(ports)
        kubelet_dir = self.state_dir / "kubelet"
        config = self.run_dir / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": LOOPBACK,
                    "port": ports["kubelet"],
                    "readOnlyPort": 0,
                    "healthzBindAddress": LOOPBACK,
                    "healthzPort": ports["kubelet-healthz"],
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(self.pki_dir / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
                    "podLogsDir": str(self.state_dir / "data" / "pod-logs"),
                    "clusterDomain": CLUSTER_DOMAIN,
                    "clusterDNS": [DNS_SERVICE_IP],
                    "resolvConf": "/etc/resolv.conf",
                    "serializeImagePulls": True,
                    # Loaded images are never garbage-collected: they cannot be pulled again.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                    "registerNode": True,
                    "staticPodPath": "",
                    "shutdownGracePeriod": "0s",
                },
                sort_keys=False,
            )
        )
        kubelet = self._spawn(
            "kubelet",
            [
                self.bins["kubelet"],
                f"--config={config}",
                f"--kubeconfig={self.state_dir / 'kubelet.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                "--node-labels=pynomaly.io/local-node=real",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={kubelet_dir / 'pki'}",
            ],
        )
        self._wait("node", self._node_ready, timeout, kubelet, interval=1.0)
        self._spawn(
            "kube-proxy",
            [
                self.bins["kube-proxy"],
                f"--kubeconfig={self.state_dir / 'kube-proxy.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--cluster-cidr={POD_CIDR}",
                "--proxy-mode=iptables",
                f"--healthz-bind-address={LOOPBACK}:{ports['proxy-healthz']}",
                f"--metrics-bind-address={LOOPBACK}:{ports['proxy-metrics']}",
                # NodePorts only on the bridge's own address; conntrack sysctls left as they are.
                f"--nodeport-addresses={GATEWAY}/32",
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
            ],
        )

    def _network_policy_agent(self, timeout: float) -> None:
        """kube-network-policies on the host, before any pod but CoreDNS: policies hold from the first app pod."""
        self.apply(manifests.network_policy_agent_rbac(NETPOL_USER))
        self.state.nft_table = NETPOL_TABLE  # recorded first: a crash after it made the table still cleans up
        self._save_state()
        record = self._spawn(
            "kube-network-policies",
            [
                self.bins["kube-network-policies"],
                f"--kubeconfig={self.state_dir / 'network-policies.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--nfqueue-id={NETPOL_QUEUE}",
                f"--nftables-table={NETPOL_TABLE}",
            ],
        )

        def ready() -> str | None:
            if _run(["nft", "list", "table", "inet", NETPOL_TABLE], check=False, timeout=10).returncode != 0:
                return "no nftables table yet"
            return None if _queue_bound(NETPOL_QUEUE) else f"nfqueue {NETPOL_QUEUE} not read yet"

        self._wait("the NetworkPolicy agent", ready, min(timeout, 60), record)

    def _node_ready(self) -> str | None:
        result = self.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
            timeout=10,
        )
        return None if result.stdout.strip() == "True" else f"node Ready={result.stdout.strip() or 'absent'}"

    def _addons(self, timeout: float) -> None:
        volumes = [manifests.storage_class()]
        for i in range(LOCAL_VOLUMES_PER_NODE):
            path = self.state_dir / "volumes" / f"vol-{i}"
            path.mkdir(parents=True, exist_ok=True)
            volumes.append(manifests.local_volume(f"local-{i}", NODE_NAME, str(path)))
        self.apply(volumes)
        for crd in toolchain.crd_files():
            self.kubectl("apply", "--server-side", "-f", str(crd))
        self.apply(manifests.coredns(self.dns_image, DNS_SERVICE_IP, CLUSTER_DOMAIN))
        self.kubectl(
            "-n",
            manifests.DNS_NAMESPACE,
            "rollout",
            "status",
            "deployment/coredns",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    # -- fake nodes (kwok) ------------------------------------------------------------------------

    def add_fake_nodes(self, zones: Sequence[str] = ("zone-a", "zone-b", "zone-c"), per_zone: int = 1) -> list[str]:
        """Nodes kwok keeps Ready (pods on them are marked Running, nothing runs): for stacks too big for
        this machine.  Each gets local volumes of its own (never mounted)."""
        if not any(p.name == "kwok" and p.alive() for p in self.state.processes):
            kwok = toolchain.ensure("kwok")
            self._spawn(
                "kwok",
                [
                    kwok,
                    f"--kubeconfig={self.kubeconfig}",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    "--node-lease-duration-seconds=40",
                    f"--server-address={LOOPBACK}:{free_port()}",
                    *(f"--config={stage}" for stage in toolchain.kwok_stage_files()),
                ],
            )
        names = [f"fake-{zone}-{i}" for zone in zones for i in range(per_zone)]
        objects: list[dict[str, Any]] = []
        for name in names:
            zone = name.removeprefix("fake-").rsplit("-", 1)[0]
            objects.append(manifests.fake_node(name, zone))
            # Never mounted: kwok runs nothing.
            objects += [
                manifests.local_volume(f"{name}-vol-{i}", name, f"/nonexistent/{name}/{i}", fake=True)
                for i in range(LOCAL_VOLUMES_PER_NODE)
            ]
        self.apply(objects, server_side=False)
        self.state.fake_nodes = sorted({*self.state.fake_nodes, *names})
        self._save_state()
        self._wait("fake nodes", lambda: self._nodes_ready(names), 60, interval=1.0)
        return names

    def _nodes_ready(self, names: Sequence[str]) -> str | None:
        jsonpath = "{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}"
        out = self.kubectl("get", "nodes", "-o", f"jsonpath={jsonpath}", check=False, timeout=10).stdout
        ready = {line.split("=")[0] for line in out.splitlines() if line.endswith("=True")}
        waiting = [n for n in names if n not in ready]
        return None if not waiting else f"not Ready: {', '.join(waiting)}"

    def remove_fake_nodes(self) -> None:
        for name in self.state.fake_nodes:
            # Pods still bound to a fake node would stay Terminating once kwok no longer answers for it.
            self.kubectl(
                "delete",
                "pods",
                "--all-namespaces",
                f"--field-selector=spec.nodeName={name}",
                "--grace-period=0",
                "--force",
                "--ignore-not-found",
                check=False,
            )
            self.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)
        self.kubectl(
            "delete", "pv", "-l", "pynomaly.io/local-volume=fake", "--ignore-not-found", "--wait=false", check=False
        )
        self.state.fake_nodes = []
        self._save_state()

    def set_real_node_schedulable(self, schedulable: bool) -> None:
        self.kubectl("uncordon" if schedulable else "cordon", NODE_NAME)

    def recycle_volumes(self) -> None:
        """Make released local volumes available again (their claims were deleted with a namespace)."""
        out = self.kubectl("get", "pv", "-o", "json").stdout
        for pv in json.loads(out)["items"]:
            if pv["status"].get("phase") != "Released":
                continue
            path = Path(pv["spec"]["local"]["path"])
            if path.is_relative_to(self.state_dir) and path.is_dir():
                for child in path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            self.kubectl(
                "patch",
                "pv",
                pv["metadata"]["name"],
                "--type=json",
                "-p",
                '[{"op": "remove", "path": "/spec/claimRef"}]',
                check=False,
            )

    @contextlib.contextmanager
    def announced_load_balancers(self, namespace: str, address: str = LB_ADDRESS) -> Iterator[None]:
        """Stand in for a cloud's load-balancer controller (or MetalLB) while the block runs: give every
        LoadBalancer Service and Ingress in ``namespace`` an address in its status, so a deploy that
        waits for one (Pulumi does) can finish.  Nothing listens on the address."""
        stop = threading.Event()

        def announce() -> None:
            patch = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": address}]}}})
            while not stop.wait(1.0):
                for kind in ("service", "ingress"):
                    result = self.kubectl("-n", namespace, "get", kind, "-o", "json", check=False, timeout=20)
                    if result.returncode != 0:
                        continue
                    for item in json.loads(result.stdout)["items"]:
                        if kind == "service" and item["spec"].get("type") != "LoadBalancer":
                            continue
                        if item.get("status", {}).get("loadBalancer", {}).get("ingress"):
                            continue
                        self.kubectl(
                            "-n",
                            namespace,
                            "patch",
                            kind,
                            item["metadata"]["name"],
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            patch,
                            check=False,
                            timeout=20,
                        )

        thread = threading.Thread(target=announce, name="lb-announcer", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)

    # -- down -------------------------------------------------------------------------------------

    def down(self, *, quiet: bool = False) -> bool:
        """Stop everything recorded in the state file and restore the host.  True when anything ran."""
        state = self._load_state() or self.state
        self.state = state
        if not state.processes and not state.bridge_created and not state.forward_rules and not state.nft_table:
            if not quiet:
                _say(f"no cluster recorded in {self.state_dir}")
            return False
        records = {p.name: p for p in state.processes}

        def stop(*names: str, grace: float = 10.0) -> None:
            for name in names:
                if name in records:
                    stop_process(records[name], grace=grace)

        # The agent first: on SIGTERM it removes its nftables table itself.
        stop("kube-network-policies", "kwok", "kube-controller-manager", "kube-scheduler")
        if all(name in records and records[name].alive() for name in ("kubelet", "kube-apiserver")):
            self._drain_pods()
        stop("kubelet", "kube-proxy", grace=15.0)
        if records.get("containerd") and records["containerd"].alive():
            self._remove_containers()
        stop("containerd", grace=15.0)
        _kill_shims(self.containerd_sock)
        stop("api-forwarder", "kube-apiserver", "etcd")
        self._restore_host(state)
        _unmount_under(self.state_dir)
        _remove_kubelet_cgroups()
        state.processes = []
        self._save_state()
        if not quiet:
            _say("stopped; host settings restored")
        return True

    def _drain_pods(self) -> None:
        # The kubelet stops each pod properly (sandbox, CNI teardown, volumes) when its object goes away.
        self.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--grace-period=2", "--wait=false", check=False, timeout=30
        )
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if not self.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split():
                return
            time.sleep(1)

    def _restore_host(self, state: ClusterState) -> None:
        if shutil.which("iptables"):
            kube_proxy = toolchain.bin_dir() / "kube-proxy"
            if kube_proxy.is_file():
                _run([str(kube_proxy), "--cleanup", "--proxy-mode=iptables"], check=False, timeout=60)
            _remove_kube_chains(keep=set(state.kube_chains_before))
            if state.forward_rules:
                for rule in FORWARD_RULES:
                    while _run(["iptables", "-w", "-D", "FORWARD", *rule], check=False).returncode == 0:
                        pass
                state.forward_rules = False
        if state.nft_table:
            # Left by an agent that was killed (fail closed: its queue rules would drop pods' packets).
            if shutil.which("nft"):
                _run(["nft", "delete", "table", "inet", state.nft_table], check=False)
            state.nft_table = ""
        if Path("/run/netns").is_dir():
            for name in sorted(set(os.listdir("/run/netns")) - set(state.netns_before)):
                if name.startswith("cni-"):
                    path = Path("/run/netns") / name
                    _run(["umount", "-l", str(path)], check=False)
                    path.unlink(missing_ok=True)
        if state.bridge_created:
            _run(["ip", "link", "del", BRIDGE], check=False)
            state.bridge_created = False
        for name, value in state.sysctls.items():
            _write_sysctl(name, value)

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        processes = {p.name: ("running" if p.alive() else "stopped") + f" (pid {p.pid})" for p in self.state.processes}
        info: dict[str, Any] = {"state_dir": str(self.state_dir), "processes": processes}
        if self.running() and self.kubeconfig.is_file():
            info["kubeconfig"] = str(self.kubeconfig)
            info["api"] = "ready" if self._readyz() is None else "not ready"
            nodes = self.kubectl("get", "nodes", "--no-headers", check=False, timeout=10).stdout
            info["nodes"] = [" ".join(line.split()[:2]) for line in nodes.splitlines()]
        return info


def _tcp_open(port: int) -> bool:
    from pynomaly.localstack.ports import can_connect

    return can_connect(port)


def _queue_bound(queue: int) -> bool:
    """Whether a process reads nfqueue ``queue`` (first column of the kernel's queue table)."""
    lines = (_read(NFQUEUE_PROC) or "").splitlines()
    return any(line.split()[:1] == [str(queue)] for line in lines)


def _containerd_config(root: Path, state: Path, sock: Path, net_dir: Path, pause_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{root}"',
            f'state = "{state}"',
            "[grpc]",
            f'  address = "{sock}"',
            "[ttrpc]",
            f'  address = "{sock}.ttrpc"',
            "[debug]",
            '  level = "warn"',
            "[metrics]",
            '  address = ""',
            f"[{cri}]",
            f'  sandbox_image = "{pause_image}"',
            # This machine lacks CAP_SYS_RESOURCE: runc must not raise a container's oom_score_adj.
            "  restrict_oom_score_adj = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{net_dir}"',
            'plugins."io.containerd.internal.v1.opt".path = "' + str(state / "opt") + '"',
            "",
        ]
    )


IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("filter", "nat", "mangle")


def _kube_chains() -> set[str]:
    """``tool/table/chain`` of every KUBE-* chain (the kubelet's and kube-proxy's)."""
    found = set()
    for tool in IPTABLES:
        for table in IPTABLES_TABLES:
            out = _run([tool, "-w", "-t", table, "-S"], check=False).stdout
            found |= {f"{tool}/{table}/{line.split()[1]}" for line in out.splitlines() if line.startswith("-N KUBE-")}
    return found


def _remove_kube_chains(keep: set[str]) -> None:
    """Drop the KUBE-* chains this cluster made (kube-proxy --cleanup leaves the kubelet's) and the jumps
    to them from the built-in chains; chains that existed before ``up`` stay."""
    for entry in sorted(_kube_chains() - keep):
        tool, table, chain = entry.split("/")
        out = _run([tool, "-w", "-t", table, "-S"], check=False).stdout
        for line in out.splitlines():
            parts = shlex.split(line)
            if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and f"-j {chain}" in line:
                _run([tool, "-w", "-t", table, "-D", *parts[1:]], check=False)
        _run([tool, "-w", "-t", table, "-F", chain], check=False)
    for entry in sorted(_kube_chains() - keep):
        tool, table, chain = entry.split("/")
        _run([tool, "-w", "-t", table, "-X", chain], check=False)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root)
    found = []
    for line in (_read(Path("/proc/self/mountinfo")) or "").splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _unmount_under(root: Path) -> None:
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        _run(["umount", "-l", point], check=False)


def _kill_shims(sock: Path) -> None:
    """containerd leaves its shims running by design; ours name our socket on their command line."""
    needle = str(sock).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            stop_process(ProcessRecord("containerd-shim", int(entry.name), 0, ""), grace=5.0)


def _remove_kubelet_cgroups() -> None:
    # Empty cgroups the kubelet made (kubepods/…); rmdir only succeeds on empty ones, deepest first.
    base = Path("/sys/fs/cgroup")
    for controller in base.iterdir() if base.is_dir() else []:
        top = controller / "kubepods"
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
