"""The cluster's certificates and kubeconfigs, made with the openssl command line.

One CA signs everything: the API server's serving certificate and a client certificate per
identity (admin, controller-manager, scheduler, kubelet, kube-proxy, the API server's kubelet
client).  EC P-256 keys: quick to make and accepted by every component.  Nothing here leaves the
cluster's state folder (mode 0700).
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

DAYS = "365"


class PkiError(RuntimeError):
    pass


@dataclass(frozen=True)
class Identity:
    """A client certificate: file stem, common name (the user) and organisation (the group)."""

    name: str
    cn: str
    org: str | None = None


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path.name, cwd=path.parent)
    path.chmod(0o600)


def make_ca(pki: Path) -> None:
    make_signing_ca(pki, "ca", "pynomaly-local-ca")
    # Service-account tokens are signed with their own key pair.
    _key(pki / "sa.key")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def make_signing_ca(pki: Path, name: str, cn: str) -> None:
    """A CA of its own (``<name>.crt``/``.key``): e.g. the aggregation layer's front proxy, whose
    client certificates must not be trusted as ordinary users."""
    pki.mkdir(parents=True, exist_ok=True)
    _key(pki / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{name}.key",
        "-subj",
        f"/CN={cn}",
        "-days",
        DAYS,
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def _sign(pki: Path, name: str, subject: str, extensions: str, ca: str = "ca") -> None:
    _key(pki / f"{name}.key")
    (pki / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        DAYS,
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def make_server_cert(
    pki: Path, name: str, cn: str, dns: list[str], ips: list[str], *, ca: str = "ca", client_auth: bool = False
) -> None:
    """``client_auth``: the same certificate also authenticates as a client (mutual TLS between peers)."""
    sans = ",".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)])
    usage = "serverAuth,clientAuth" if client_auth else "serverAuth"
    _sign(
        pki,
        name,
        f"/CN={cn}",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\nsubjectAltName={sans}\n",
        ca,
    )


def make_client_cert(pki: Path, identity: Identity, ca: str = "ca") -> None:
    subject = f"/O={identity.org}/CN={identity.cn}" if identity.org else f"/CN={identity.cn}"
    _sign(
        pki,
        identity.name,
        subject,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        ca,
    )


def kubeconfig(pki: Path, identity: str, server: str, path: Path, cluster: str = "pynomaly-local") -> Path:
    """A kubeconfig with the certificates embedded, so it works from any folder."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [
            {
                "name": identity,
                "user": {"client-certificate-data": b64(f"{identity}.crt"), "client-key-data": b64(f"{identity}.key")},
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": identity}}],
        "current-context": cluster,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path
