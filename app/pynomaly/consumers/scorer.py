"""The live scorer: the ``scorer`` pool's batch handler (records of ``measurements`` -> anomalies).

Per poll batch (:class:`~pynomaly.consumers.base.EventConsumer` hands over every record of a poll):

1. parse each record (:func:`~pynomaly.domain.live.parse_record`); one that cannot be parsed, names
   no model (and its topic has no binding), names a model that cannot be loaded, or does not fit the
   model (missing columns, non-finite values) goes to ``<topic>.dlq`` with the reason;
2. score the rest grouped by model, one vectorised ``TrainedModel.score`` call per group (ECOD and
   COPOD one record at a time: their scores depend on the rows scored together, and a record must
   get the same score when a crash makes it scored again in another batch);
3. every record over the model's threshold becomes an ``anomaly_detected`` envelope whose id derives
   from (topic, partition, offset, timestamp), appended to the outbox by one Lua script that skips an
   id it already appended: a batch scored again after a crash adds nothing twice, so anomaly_events
   (and through the bridge's dedup, dashboard:stream) get each anomaly once;
4. newly appended anomalies fire the binding's notification targets, at most one per entity per
   ``notify_interval_seconds`` (a Redis key per topic and entity, SET NX EX);

and only then does the consumer commit the batch's offsets.

Which model: the record's own ``model``, else the topic's binding.  Models and bindings are cached
per process and re-read when ``pynomaly:scoring:generation`` moved (one GET per batch; every model
and binding change bumps it in its own transaction), and at least every ``REFRESH_SECONDS`` anyway.
Events on system_events (``model_promoted``, ``stream_bound``…) are for people and dashboards: a
cache driven by them would stay stale after any event the scorer missed (it was down, rebalancing,
or lagging on system_events), while the generation check cannot miss a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis
from kafka.consumer.fetcher import ConsumerRecord

from pynomaly.domain.detectors import get_detector
from pynomaly.domain.errors import DomainError
from pynomaly.domain.live import (
    InvalidRecord,
    LiveRecord,
    StreamBinding,
    anomaly_event_id,
    parse_record,
    record_row,
)
from pynomaly.domain.models import ModelRef, ModelVersion, TrainedModel
from pynomaly.messaging.events import EventEnvelope, PayloadCaps, cap_payload
from pynomaly.messaging.outbox import FIELD, OUTBOX_STREAM
from pynomaly.storage.bindings import BindingStore
from pynomaly.storage.redis_client import KEY_PREFIX
from pynomaly.topology import TASK_DELIVER_ANOMALY, Priority
from pynomaly.wiring import Container

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0
# Markers of appended anomaly ids outlive the input topic's retention (1 day): a record older than
# that cannot be read, so cannot be scored again.
APPENDED_TTL_SECONDS = 2 * 24 * 3600

DeadLetter = Callable[[ConsumerRecord, str], None]

# KEYS[1]: the outbox stream, KEYS[2..]: one marker per event; ARGV[1]: marker TTL, ARGV[2..]: the
# events (JSON), in the markers' order.  Returns the 1-based indexes of the events appended now.
_APPEND_NEW = f"""
local added = {{}}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', '{FIELD}', ARGV[i])
    added[#added + 1] = i - 1
  end
end
return added
"""


def preload_detector_libraries() -> None:
    """Import every detector's PyOD module (seconds on a busy machine) before a model is unpickled,
    so the first records of a binding do not wait for it.  Run in a thread at the scorer's start."""
    import importlib

    from pynomaly.domain.detectors import DETECTORS

    for spec in DETECTORS.values():
        try:
            importlib.import_module(spec.pyod_class.split(":")[0])
        except ImportError as exc:  # its models fail to load later, with their own error
            log.warning("could not import %s: %s", spec.pyod_class, exc)


def notify_key(topic: str, entity: str) -> str:
    """The rate-limit key of one entity's notifications on one topic."""
    return f"{KEY_PREFIX}stream-notify:{topic}:{entity}"


@dataclass
class _Item:
    record: ConsumerRecord
    parsed: LiveRecord
    row: np.ndarray | None = None


def _iso_ms(millis: float) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LiveScorer:
    def __init__(self, container: Container) -> None:
        self._c = container
        self._r: redis.Redis = container.redis
        self._bindings = BindingStore(self._r)
        self._append = self._r.register_script(_APPEND_NEW)
        self._source = container.component
        self._caps = PayloadCaps.from_settings(container.settings)
        self._generation: int | None = None
        self._refreshed = 0.0
        self._bound: dict[str, StreamBinding] = {}
        self._loaded: dict[str, tuple[ModelVersion, TrainedModel]] = {}

    # -- caches -----------------------------------------------------------------------------------
    def _refresh(self) -> None:
        generation = self._bindings.generation()
        if generation == self._generation and time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        self._bound = self._bindings.all()
        self._loaded.clear()  # names are resolved again; unchanged artifacts stay in the store's cache
        if self._generation is not None and generation != self._generation:
            log.info("models or bindings changed (generation %s -> %s); reloading", self._generation, generation)
        self._generation, self._refreshed = generation, time.monotonic()
        for binding in self._bound.values():
            self._warm(binding.ref)

    def _warm(self, ref: ModelRef) -> None:
        """Load a bound model (and score once) before its records come: the first records of a new
        binding or promotion must not wait for unpickling and the estimator's first call."""
        try:
            _, model = self._load(ref)
            model.score(np.zeros((1, len(model.columns))))
        except DomainError as exc:  # its records will be dead-lettered with this reason
            log.warning("bound model %s cannot be used: %s", ref, exc)

    def _load(self, ref: ModelRef) -> tuple[ModelVersion, TrainedModel]:
        key = str(ref)
        loaded = self._loaded.get(key)
        if loaded is None:
            loaded = self._c.models.load(ref)
            self._loaded[key] = loaded
        return loaded

    # -- a batch ----------------------------------------------------------------------------------
    def __call__(self, records: list[ConsumerRecord], dead_letter: DeadLetter) -> None:
        self._refresh()
        groups: dict[str, list[_Item]] = {}
        for record in records:
            try:
                parsed = parse_record(record.value, record.key)
            except InvalidRecord as exc:
                dead_letter(record, f"invalid record: {exc}")
                continue
            ref = parsed.model
            if ref is None:
                binding = self._bound.get(record.topic)
                if binding is None:
                    dead_letter(record, f"the record names no model and topic {record.topic!r} has none bound")
                    continue
                ref = binding.ref
            groups.setdefault(str(ref), []).append(_Item(record, parsed))
        events: list[EventEnvelope] = []
        for ref_text, items in groups.items():
            events.extend(self._score_group(ModelRef.parse(ref_text), items, dead_letter))
        if events:
            self._publish(events)

    def _score_group(self, ref: ModelRef, items: list[_Item], dead_letter: DeadLetter) -> list[EventEnvelope]:
        try:
            meta, model = self._load(ref)
        except DomainError as exc:  # unknown model or version, none promoted, artifact refused
            for item in items:
                dead_letter(item.record, f"model {ref}: {exc}")
            return []
        usable: list[_Item] = []
        for item in items:
            try:
                item.row = record_row(item.parsed, model.columns)
                usable.append(item)
            except InvalidRecord as exc:
                dead_letter(item.record, f"does not fit model {meta.ref}: {exc}")
        if not usable:
            return []
        scored = self._score(model, meta, usable, dead_letter)
        scored_at = time.time() * 1000
        return [
            self._event(item, meta, score, scored_at)
            for item, score, label in scored
            if label  # over the threshold
        ]

    def _score(
        self, model: TrainedModel, meta: ModelVersion, items: list[_Item], dead_letter: DeadLetter
    ) -> list[tuple[_Item, float, int]]:
        """(item, score, label) of every item that could be scored; the others are dead-lettered."""
        if not get_detector(model.detector).batch_dependent and len(items) > 1:
            try:
                scores, labels = model.score(np.vstack([item.row for item in items if item.row is not None]))
                return [(item, float(s), int(v)) for item, s, v in zip(items, scores, labels, strict=True)]
            except DomainError:
                pass  # one row spoils the batch (e.g. a missing cell this model refuses): find it below
        out = []
        for item in items:
            assert item.row is not None
            try:
                scores, labels = model.score(item.row.reshape(1, -1))
            except DomainError as exc:
                dead_letter(item.record, f"does not fit model {meta.ref}: {exc}")
                continue
            out.append((item, float(scores[0]), int(labels[0])))
        return out

    def _event(self, item: _Item, meta: ModelVersion, score: float, scored_at: float) -> EventEnvelope:
        record, parsed = item.record, item.parsed
        assert item.row is not None
        data: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "entity": parsed.entity,
            "model": meta.name,
            "version": meta.version,
            "detector": meta.detector,
            "score": score,
            "threshold": meta.threshold,
            "values": {c: (None if np.isnan(v) else float(v)) for c, v in zip(meta.columns, item.row, strict=True)},
            "timestamp": parsed.timestamp,
            "produced_at": _iso_ms(record.timestamp),
            "produced_at_ms": record.timestamp,
            "scored_at": _iso_ms(scored_at),
            "latency_ms": round(max(0.0, scored_at - record.timestamp), 3),
        }
        return EventEnvelope(
            id=anomaly_event_id(record.topic, record.partition, record.offset, record.timestamp),
            type="anomaly_detected",
            source=self._source,
            subject=parsed.entity,
            data=cap_payload(data, self._caps),
        )

    # -- outputs ------------------------------------------------------------------------------------
    def _publish(self, events: list[EventEnvelope]) -> None:
        markers = [f"{KEY_PREFIX}live-appended:{event.id}" for event in events]
        added = self._append(
            keys=[OUTBOX_STREAM, *markers],
            args=[APPENDED_TTL_SECONDS, *(event.model_dump_json() for event in events)],
        )
        fresh = [events[int(i) - 1] for i in added or []]
        if len(fresh) < len(events):
            log.info("%d anomalies were appended before (a batch scored again): not twice", len(events) - len(fresh))
        for event in fresh:
            log.info(
                "anomaly: %s on %s scored %.4f > %.4f by %s:%s",
                event.subject,
                event.data["topic"],
                event.data["score"],
                event.data["threshold"],
                event.data["model"],
                event.data["version"],
            )
            self._notify(event)

    def _notify(self, event: EventEnvelope) -> None:
        binding = self._bound.get(str(event.data["topic"]))
        if binding is None or not binding.notify:
            return
        key = notify_key(binding.topic, event.subject)
        if not self._r.set(key, event.id, nx=True, ex=binding.notify_interval_seconds):
            log.debug("notification of %s suppressed: %s was notified less than %ss ago", event.id, event.subject,
                      binding.notify_interval_seconds)  # fmt: skip
            return
        anomaly = {**event.data, "event_id": event.id, "notify_interval_seconds": binding.notify_interval_seconds}
        for index, target in enumerate(binding.notify):
            self._c.messaging.enqueue_task(TASK_DELIVER_ANOMALY, [anomaly, target], {"index": index}, Priority.HIGH)
