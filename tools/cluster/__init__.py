"""The project's own Kubernetes cluster on this machine (``./dev cluster up|down|status``).

See :mod:`tools.cluster.local` for what runs and how the host is restored.
"""

from tools.cluster.local import ClusterError, LocalCluster

__all__ = ["ClusterError", "LocalCluster"]
