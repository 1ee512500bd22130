"""KEDA's objects for the local cluster (tools/cluster/keda.py) and its opt-in image, without a cluster."""

from __future__ import annotations

import base64

from tools import images
from tools.cluster import keda

CERTS = {"ca.crt": "CA PEM", "tls.crt": "CERT PEM", "tls.key": "KEY PEM"}


def test_keda_pods_meet_restricted_pod_security_on_the_real_node() -> None:
    deployments = [o for o in keda.manifests("pynomaly/keda:2.21.0", CERTS) if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {keda.OPERATOR, keda.METRICS_SERVER}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pynomaly.io/local-node": "real"}
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container["imagePullPolicy"] == "Never"
        assert container["resources"]["requests"]["cpu"] == "20m"  # a 2-core machine
        # Certificates from the Secret install() writes, not KEDA's own rotation.
        assert "--enable-cert-rotation=false" in container["command"] or container["command"][0] == "/keda-adapter"
        assert {"name": "certificates", "secret": {"secretName": keda.CERT_SECRET}} in pod["volumes"]


def test_the_apiservice_trusts_kedas_own_ca() -> None:
    (apiservice,) = [o for o in keda.manifests("img", CERTS) if o["kind"] == "APIService"]
    assert apiservice["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    assert base64.b64decode(apiservice["spec"]["caBundle"]).decode() == "CA PEM"
    assert "insecureSkipTLSVerify" not in apiservice["spec"]


def test_the_keda_image_is_opt_in() -> None:
    assert "keda" in images.recipes()
    assert "keda" not in images.default_names()  # `build()` (CI) never pays for KEDA's Go build
