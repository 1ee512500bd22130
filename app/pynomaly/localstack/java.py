"""Finding a Java runtime new enough for Kafka 4 (which needs Java 17 for the broker)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pynomaly.localstack.errors import LocalStackError

MIN_JAVA = 17
_INSTALL_HINT = "install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')


def parse_java_version(text: str) -> int | None:
    """The feature release in ``java -version`` output: ``"17.0.15"`` -> 17, ``"1.8.0_392"`` -> 8, ``"21-ea"`` -> 21."""
    match = _VERSION.search(text)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # the pre-Java-9 scheme 1.<feature>.0
        return int(match.group(2))
    return major


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise LocalStackError(f"Java {MIN_JAVA} or newer is needed to run Kafka and none was found: {_INSTALL_HINT}")
    return found


def check_java(java: str | None = None, minimum: int = MIN_JAVA) -> str:
    """Path of a Java >= ``minimum``, or a one-line error saying what to install."""
    java = java or find_java()
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalStackError(f"cannot run {java} -version ({exc}): {_INSTALL_HINT}") from exc
    version = parse_java_version(done.stderr + done.stdout)
    if version is None:
        raise LocalStackError(f"cannot tell the version of {java} (is it a Java runtime?): {_INSTALL_HINT}")
    if version < minimum:
        raise LocalStackError(f"Kafka needs Java {minimum} or newer but {java} is Java {version}: {_INSTALL_HINT}")
    return java
