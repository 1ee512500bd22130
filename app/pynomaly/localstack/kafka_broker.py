"""A real Apache Kafka broker (KRaft, one combined broker+controller node) on Java, from Maven Central jars.

Static controller quorum (``controller.quorum.voters``) rather than a formatted dynamic one: the
ports may change between starts (free ports are picked each time) and a static voter set takes
them from the configuration instead of from the formatted metadata.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import subprocess
import uuid
from pathlib import Path

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.java import check_java
from pynomaly.localstack.kafka_jars import KafkaJars
from pynomaly.localstack.ports import LOOPBACK, pick_port
from pynomaly.localstack.procs import CHILD_UMASK, ManagedServer, ProcessRecord, log_tail, private_dir, spawn
from pynomaly.localstack.progress import Progress, as_progress

NODE_ID = 1
# A local broker's memory: the serial collector and a fixed 192 MB heap, touched at start.  Measured
# with 600k events produced (gzip, acks=all) and consumed on a 6-partition topic: G1 with 512 MB sat
# at 405 MB RSS after the load (286 MB of committed heap, 49 MB of G1's own structures); G1 capped at
# 256 MB still 411 MB; serial at 256 MB 339 MB, and it produced faster (one broker, 2 cores: no use
# for G1's concurrent threads).  Fixed and pre-touched because a heap that expands on demand creeps
# for half an hour: the 30-minute soak saw the broker step from 295 to 309 MB at minutes 16-21 as the
# old generation grew, with nothing leaking.  192 MB: the soak's old generation peaked at 77 MB used
# (39 MB idle), and a pre-touched 256 MB heap made the idle broker 386 MB instead of about 320.
HEAP = ("-Xms192m", "-Xmx192m", "-XX:+AlwaysPreTouch")
GC = ("-XX:+UseSerialGC",)


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool random-uuid prints)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka rejects ids that look like command-line flags
            return cid


def read_meta_properties(data_dir: Path) -> dict[str, str]:
    path = data_dir / "meta.properties"
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


class KafkaBroker(ManagedServer):
    """One ``kafka.Kafka`` JVM with its configuration, data and logs under ``state_dir``.

    ``libs_dir`` is the jar cache (shared between state dirs, e.g. by the tests and ``local up``).
    """

    # SIGTERM = controlled shutdown (flushes logs, writes a clean-shutdown marker): give it time.
    stop_grace = 30.0

    def __init__(
        self,
        state_dir: Path | str,
        libs_dir: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        die_with_parent: bool = True,
        log_dir: Path | str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self._log_dir = Path(log_dir).resolve() if log_dir else self.state_dir / "logs"
        self.jars = KafkaJars(
            Path(libs_dir) if libs_dir else self.state_dir.parent / "kafka-libs",
            log_path=(Path(log_dir) if log_dir else self.state_dir / "logs") / "kafka-fetch.log",
        )
        self.configured_port = port
        self.configured_controller_port = controller_port
        self.port = port or 0
        self.controller_port = controller_port or 0
        self.die_with_parent = die_with_parent
        self.record: ProcessRecord | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- layout -----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self._log_dir

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def cluster_id_path(self) -> Path:
        return self.state_dir / "cluster-id"

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0, progress: Progress | None = None) -> KafkaBroker:
        out = as_progress(progress)
        java = check_java()
        # Ports first: a busy configured port must fail before a 100 MB download, not after.
        self.port = pick_port(self.configured_port, "Kafka clients", "--kafka-port")
        self.controller_port = pick_port(self.configured_controller_port, "Kafka controller", "--kafka-controller-port")
        if self.controller_port == self.port:
            self.controller_port = pick_port(None, "Kafka controller")
        self.jars.ensure(out)
        # Log segments hold every event (job data): the broker's folders are the user's only (0700).
        for path in (self.state_dir, self.data_dir, self.log_dir):
            private_dir(path)
        self._check_data_dir_free()
        self._write_config()
        self._format_storage(java, out)
        out.step(f"starting Kafka on {self.bootstrap_servers} (controller {LOOPBACK}:{self.controller_port})")
        self._proc, self.record = spawn(
            "kafka",
            self._java_argv(java, "kafka.Kafka", str(self.config_path)),
            self.log_dir / "kafka.out",
            die_with_parent=self.die_with_parent,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _java_argv(self, java: str, main: str, *args: str) -> list[str]:
        return [
            java, *HEAP, *GC,
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp", self.jars.classpath, main, *args,
        ]  # fmt: skip

    def _check_data_dir_free(self) -> None:
        # Kafka holds a POSIX lock on <log.dirs>/.lock while it runs; a broker left over from an
        # earlier run (another shell, a killed test) would make ours fail later with a Java trace.
        lock_path = self.data_dir / ".lock"
        if not lock_path.exists():
            return
        with open(lock_path, "a") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise LocalStackError(
                    f"Kafka data folder {self.data_dir} is in use by another Kafka process (left from an earlier "
                    "run?): stop it (pynomaly local down) or remove that folder"
                ) from None
            fcntl.lockf(handle, fcntl.LOCK_UN)

    def _write_config(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Topics come from the topology (ensure_topics); a misspelt name must fail, not appear.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # One node: internal topics cannot have more replicas, and fewer partitions start faster.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Small on purpose: the machine also runs Redis, the API, workers and consumers.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            # The log cleaner (for the compacted __consumer_offsets) allocates its dedupe buffer on
            # the heap at start: Kafka's 128 MB default was two thirds of the old generation of an
            # idle local broker.  16 MB maps about 600,000 keys per pass, far above a laptop's groups.
            "log.cleaner.dedupe.buffer.size": str(16 * 2**20),
        }
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.state_dir / "log4j2.properties").write_text(
            "status = warn\n"
            # Log4j must not stop logging in its own shutdown hook while Kafka still logs its shutdown.
            "shutdownHook = disable\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.server_log}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            # The state-change and request loggers are very chatty at INFO.
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = WARN\n"
        )

    def _format_storage(self, java: str, out: Progress) -> None:
        meta = read_meta_properties(self.data_dir)
        recorded = self.cluster_id_path.read_text().strip() if self.cluster_id_path.exists() else ""
        if meta:
            formatted_id = meta.get("cluster.id", "")
            if meta.get("node.id") != str(NODE_ID) or (recorded and recorded != formatted_id):
                raise LocalStackError(
                    f"Kafka data folder {self.data_dir} belongs to another cluster (cluster.id {formatted_id or '?'}, "
                    f"node.id {meta.get('node.id', '?')}; expected {recorded or '?'}, {NODE_ID}): remove that folder "
                    "to start with empty topics"
                )
            if not recorded:  # the id file was lost but the data is ours: keep using it
                self.cluster_id_path.write_text(formatted_id + "\n")
            return
        cluster_id = recorded or new_cluster_id()
        out.step(f"formatting Kafka storage in {self.data_dir}")
        argv = self._java_argv(java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_path))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, umask=CHILD_UMASK)
        if done.returncode != 0:
            lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
            raise LocalStackError(
                f"formatting Kafka storage in {self.data_dir} failed: {lines[-1] if lines else 'no output'} "
                "(remove that folder if it is left from another setup)",
                detail="\n".join(lines[-15:]),
            )
        self.cluster_id_path.write_text(cluster_id + "\n")

    def _wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient  # heavy import, only here

        def probe() -> str | None:
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000, client_id="pynomaly-local"
                )
                try:
                    return None if admin.describe_cluster().get("brokers") else "no broker registered yet"
                finally:
                    admin.close()
            except Exception as exc:  # any client error means "not yet"
                return f"{type(exc).__name__}: {exc}"

        self._wait_until_ready(
            probe, timeout, 0.5, "Kafka", "Kafka did not accept clients", self.server_log,
            lambda: log_tail(self.server_log, 20) + "\n" + log_tail(self.log_dir / "kafka.out", 10),
        )  # fmt: skip
