"""tools/deploy.py without the engine: config assembly, --set parsing, one-line errors, the passphrase."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from infra import mocked
from infra.program import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import deploy


def test_stack_file_becomes_path_keys_and_secret_keys_are_secret() -> None:
    config = deploy.stack_config(
        "cloud",
        overrides=deploy.parse_set(["kafka.heap=768m", "pynomaly:apiKeys=k1,k2", 'labels["team.example/owner"]=ops']),
    )
    assert config["pynomaly:kafka.brokers"].value == "3" and not config["pynomaly:kafka.brokers"].secret
    assert config["pynomaly:kafka.heap"].value == "768m"
    assert config["pynomaly:autoscaling.workers.detection.max"].value == "50"
    assert config["pynomaly:apiKeys"].secret and config["pynomaly:apiKeys"].value == "k1,k2"
    assert config['pynomaly:labels["team.example/owner"]'].value == "ops"
    # Every plain value of the stack file is there, nothing else.
    leaves = dict(kv for key, value in mocked.stack_file("cloud").items() for kv in deploy._flatten(key, value))
    assert {k for k in config if k in leaves} == set(leaves)


def test_an_override_changes_only_the_leaf_it_names() -> None:
    base = deploy.stack_config("dev")
    config = deploy.stack_config("dev", overrides=deploy.parse_set(["kafka.resources.cpu=200m"]))
    assert config["pynomaly:kafka.resources.cpu"].value == "200m"
    assert {k: v.value for k, v in config.items() if k != "pynomaly:kafka.resources.cpu"} == {
        k: v.value for k, v in base.items() if k != "pynomaly:kafka.resources.cpu"
    }


def test_kubeconfig_and_context_land_in_the_stack_config(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    config = deploy.stack_config("dev", kubeconfig=kubeconfig, context="lab")
    assert config["pynomaly:kubernetes.kubeconfig"].value == str(kubeconfig.resolve())
    assert config["pynomaly:kubernetes.context"].value == "lab"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prod"], "no such environment 'prod'"),
        (["dev", "--set", "novalue"], "expected KEY=VALUE"),
        (["dev", "--set", "kafka.brokers=many"], "pynomaly.kafka.brokers: must be int"),
        (["dev", "--set", "nosuch.key=1"], "pynomaly.nosuch: unknown key"),
        (["dev", "--kubeconfig", "/nonexistent/kubeconfig"], "no such file"),
    ],
)
def test_bad_input_fails_in_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_an_unreachable_cluster_fails_before_the_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        "clusters: [{name: lab, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: lab, context: {cluster: lab, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    assert deploy.main(["dev", "--kubeconfig", str(kubeconfig), "--state-dir", str(tmp_path / "s")]) == 2
    assert "cluster unreachable: https://127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing started, nothing written


def test_passphrase_is_generated_once_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    first = deploy.passphrase(tmp_path)
    assert first == deploy.passphrase(tmp_path) and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "passphrase").stat().st_mode) == 0o600
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "given")
    assert deploy.passphrase(tmp_path) == "given"


def test_state_dir_default_is_git_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    assert deploy.DEFAULT_STATE_DIR.relative_to(ROOT).parts[0] + "/" in ignored
