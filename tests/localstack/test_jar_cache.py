"""The Kafka jar cache: manifest, corruption detection and re-fetch, a failed download.

These run Maven offline (``-o``) on a one-dependency pom, from Maven's local repository that the
real fetch filled: no network in tests, and a few seconds each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.kafka_jars import MANIFEST, KafkaJars, packaged_pom
from pynomaly.localstack.progress import CallbackProgress
from tests.conftest import KAFKA_LIBS

pytestmark = pytest.mark.services

POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.pynomaly.test</groupId>
  <artifactId>cache-test</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version></dependency>
  </dependencies>
</project>
"""


@pytest.fixture(scope="module")
def real_cache() -> KafkaJars:
    # The project's own cache, fetched once (this also fills Maven's local repository for the offline runs).
    jars = KafkaJars(KAFKA_LIBS)
    jars.ensure()
    return jars


def small_pom(real_cache: KafkaJars) -> bytes:
    slf4j = next(p for p in real_cache.jars() if p.name.startswith("slf4j-api-"))
    version = slf4j.name.removeprefix("slf4j-api-").removesuffix(".jar")
    return POM.format(group="org.slf4j", artifact="slf4j-api", version=version).encode()


def test_project_cache_is_complete(real_cache: KafkaJars) -> None:
    assert real_cache.problem() is None
    names = {p.name for p in real_cache.jars()}
    assert any(n.startswith("kafka_2.13-4.") for n in names)
    assert any(n.startswith("log4j-slf4j2-impl-") for n in names)  # Kafka logs to its file, not nowhere
    assert real_cache.pom == packaged_pom()


def test_truncated_or_garbled_jar_is_fetched_again(real_cache: KafkaJars, tmp_path: Path) -> None:
    messages: list[str] = []
    jars = KafkaJars(tmp_path / "libs", pom=small_pom(real_cache), mvn_args=("-o",))
    assert jars.problem() == "not fetched yet"
    jars.ensure(CallbackProgress(messages.append))
    assert jars.problem() is None
    (jar,) = jars.jars()
    good = jar.read_bytes()

    jar.write_bytes(good[: len(good) // 2])
    assert f"{jar.name} has {len(good) // 2} bytes" in (jars.problem() or "")
    messages.clear()
    jars.ensure(CallbackProgress(messages.append))
    assert any("cannot be used" in m and "fetching it again" in m for m in messages)
    assert jar.read_bytes() == good

    jar.write_bytes(b"\0" * len(good))  # same size, not a zip: caught too (the re-fetch is the same as above)
    assert "is not a valid jar" in (jars.problem() or "")


def test_changed_pom_or_lost_manifest_means_refetch(real_cache: KafkaJars, tmp_path: Path) -> None:
    jars = KafkaJars(tmp_path / "libs", pom=small_pom(real_cache), mvn_args=("-o",))
    jars.ensure()
    other = KafkaJars(tmp_path / "libs", pom=small_pom(real_cache) + b"\n<!-- changed -->\n", mvn_args=("-o",))
    assert other.problem() == "pom.xml changed since the last fetch"
    (tmp_path / "libs" / MANIFEST).unlink()
    assert "no manifest" in (jars.problem() or "")


def test_failed_download_is_one_clear_line(real_cache: KafkaJars, tmp_path: Path) -> None:
    pom = POM.format(group="io.pynomaly.missing", artifact="no-such-artifact", version="0.0.0").encode()
    jars = KafkaJars(tmp_path / "libs", pom=pom, mvn_args=("-o",), log_path=tmp_path / "fetch.log")
    with pytest.raises(LocalStackError) as info:
        jars.ensure()
    message = str(info.value)
    assert message.startswith("could not fetch the Kafka jars from Maven Central (")
    assert "no-such-artifact" in message and "check the network" in message and str(tmp_path / "fetch.log") in message
    assert "\n" not in message
    assert not (tmp_path / "libs").exists()  # nothing half-fetched is left to look like a cache
