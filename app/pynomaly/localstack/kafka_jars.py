"""The Kafka jars from Maven Central, fetched once with ``mvn dependency:copy-dependencies`` and cached.

The cache (``<state>/kafka-libs``) holds the jars and a manifest with the pom's hash and every jar's
size; a start verifies both (and that each jar opens as a zip) and fetches again when they disagree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.procs import log_tail
from pynomaly.localstack.progress import Progress, as_progress

MANIFEST = "manifest.json"
_DOWNLOADED = re.compile(r"Downloaded from \S+: (\S+) \((\d+(?:\.\d+)?) (B|kB|KB|MB|GB)")
_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def packaged_pom() -> bytes:
    return resources.files("pynomaly.localstack").joinpath("pom.xml").read_bytes()


def find_maven(progress: Progress | None = None) -> str:
    found = shutil.which("mvn")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        as_progress(progress).step("installing maven with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "maven"]):
            if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
                raise LocalStackError("apt-get could not install maven: install it (sudo apt-get install maven)")
        found = shutil.which("mvn")
        if found:
            return found
    raise LocalStackError(
        "Maven (mvn) is needed to fetch Kafka from Maven Central: install it (Debian/Ubuntu: apt-get install maven)"
    )


def _human(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


class KafkaJars:
    """The jar cache in ``cache_dir``; :meth:`ensure` returns it verified, fetching when needed."""

    def __init__(
        self,
        cache_dir: Path | str,
        pom: bytes | None = None,
        log_path: Path | str | None = None,
        mvn_args: Sequence[str] = (),
    ) -> None:
        self.cache_dir = Path(cache_dir).resolve()
        self.mvn_args = tuple(mvn_args)  # e.g. ("-o",): offline, from Maven's local repository only
        self.pom = pom if pom is not None else packaged_pom()
        self.log_path = Path(log_path) if log_path else self.cache_dir.parent / "logs" / "kafka-fetch.log"

    @property
    def classpath(self) -> str:
        return str(self.cache_dir / "*")

    @property
    def pom_sha256(self) -> str:
        return hashlib.sha256(self.pom).hexdigest()

    def jars(self) -> list[Path]:
        return sorted(self.cache_dir.glob("*.jar"))

    # -- verification -----------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why the cache cannot be used as is (None when it is complete and intact)."""
        manifest_path = self.cache_dir / MANIFEST
        if not manifest_path.is_file():
            return "not fetched yet" if not self.cache_dir.exists() else "no manifest (an interrupted fetch?)"
        try:
            manifest = json.loads(manifest_path.read_text())
            expected: dict[str, int] = {str(k): int(v) for k, v in manifest["jars"].items()}
            pom_sha = str(manifest["pom_sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "its manifest is unreadable"
        if pom_sha != self.pom_sha256:
            return "pom.xml changed since the last fetch"
        return self._jar_problem(expected)

    def _jar_problem(self, expected: dict[str, int]) -> str | None:
        present = {p.name: p for p in self.jars()}
        missing = sorted(set(expected) - set(present))
        if missing:
            return f"{len(missing)} jar(s) missing, e.g. {missing[0]}"
        for name, size in expected.items():
            path = present[name]
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, expected {size}"
            bad = _zip_problem(path)
            if bad:
                return f"{name} is not a valid jar ({bad})"
        return None

    # -- fetching ---------------------------------------------------------------------------------
    def ensure(self, progress: Progress | None = None) -> Path:
        out = as_progress(progress)
        with self._lock():  # two starts at once (tests and a `local up`) fetch once
            problem = self.problem()
            if problem is None:
                return self.cache_dir
            if problem not in ("not fetched yet",):
                out.step(f"Kafka jar cache {self.cache_dir} cannot be used ({problem}): fetching it again")
            self._fetch(out)
            bad = self.problem()
            if bad is not None:
                # The copy came from Maven's local repository: drop the broken artifact there and retry once.
                purged = self._purge_local_repository(bad)
                out.step(f"fetched jars are broken ({bad}); purged {purged or 'nothing'} from Maven's cache, retrying")
                self._fetch(out)
                bad = self.problem()
                if bad is not None:
                    raise LocalStackError(
                        f"Kafka jars in {self.cache_dir} are still broken after a re-fetch ({bad}): delete "
                        f"{self.cache_dir} and ~/.m2/repository/org/apache/kafka and try again"
                    )
            return self.cache_dir

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.cache_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir.with_name(self.cache_dir.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _fetch(self, out: Progress) -> None:
        mvn = find_maven(out)
        work = self.cache_dir.with_name(self.cache_dir.name + ".work")
        partial = self.cache_dir.with_name(self.cache_dir.name + ".partial")
        for path in (work, partial):
            shutil.rmtree(path, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "pom.xml").write_bytes(self.pom)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out.step(f"fetching Kafka jars from Maven Central with mvn into {self.cache_dir} (first run: about 50 MB)")
        argv = [
            mvn,
            "-B",
            "-Dstyle.color=never",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
            *self.mvn_args,
        ]
        started = time.monotonic()
        count, total = 0, 0.0
        with open(self.log_path, "w") as log:
            proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            try:
                for raw in proc.stdout:
                    line = _ANSI.sub("", raw)
                    log.write(line)
                    match = _DOWNLOADED.search(line)
                    if match:
                        count += 1
                        total += float(match.group(2)) * _UNITS[match.group(3)]
                        name = match.group(1).rsplit("/", 1)[-1]
                        out.update(f"downloaded {count} files, {_human(total)} ({name})")
                code = proc.wait()
            except BaseException:  # Ctrl-C or `local down` during the download: no mvn left behind
                proc.kill()
                proc.wait()
                shutil.rmtree(partial, ignore_errors=True)
                raise
        if code != 0:
            errors = [ln.strip() for ln in log_tail(self.log_path, 200).splitlines() if "[ERROR]" in ln]
            reason = errors[0].removeprefix("[ERROR]").strip() if errors else f"mvn exited with code {code}"
            shutil.rmtree(partial, ignore_errors=True)
            raise LocalStackError(
                f"could not fetch the Kafka jars from Maven Central ({reason[:300]}): check the network or proxy "
                f"(Maven's ~/.m2/settings.xml) and try again; full log: {self.log_path}",
                detail=log_tail(self.log_path, 15),
            )
        sizes = {p.name: p.stat().st_size for p in sorted(partial.glob("*.jar"))}
        manifest = {"pom_sha256": self.pom_sha256, "jars": sizes}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        partial.rename(self.cache_dir)
        shutil.rmtree(work, ignore_errors=True)
        size = sum(sizes.values())
        out.step(
            f"Kafka jars ready: {len(sizes)} jars, {_human(size)} in {self.cache_dir} "
            f"({count} files downloaded, {time.monotonic() - started:.0f}s)"
        )

    def _purge_local_repository(self, problem: str) -> str:
        name = problem.split(" ", 1)[0]
        repo = Path.home() / ".m2" / "repository"
        if not name.endswith(".jar") or not repo.is_dir():
            return ""
        purged = []
        for path in repo.rglob(name):
            shutil.rmtree(path.parent, ignore_errors=True)
            purged.append(str(path.parent))
        return ", ".join(purged)


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            # The central directory is enough to catch truncation; a full CRC pass is too slow per start.
            if not archive.namelist():
                return "empty"
    except (zipfile.BadZipFile, OSError) as exc:
        return str(exc)
    return None
