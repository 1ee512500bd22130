#!/bin/sh
# The topics Job (infra/kafka_cluster.py).  Applies the topic plan, one line per topic in
# /scripts/topics.plan ("name partitions replication min.insync.replicas retention.ms", written from
# pynomaly.messaging.kafka_admin.topic_plan), exactly as the app's ensure_topics does: a missing topic
# is created; one with fewer partitions than planned gets partitions added; one with more is left as
# it is (Kafka cannot remove partitions); nothing else of an existing topic is changed.
set -eu
{
  if [ "$SASL" = yes ]; then
    echo "security.protocol=$CLIENT_PROTOCOL"
    echo "sasl.mechanism=$SCRAM_MECHANISM"
    echo "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$ADMIN_USER\" password=\"$ADMIN_PASSWORD\";"
  fi
  if [ "$TLS" = yes ]; then
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=/etc/kafka-tls/ca.crt"
  fi
} > /tmp/client.properties
topics() {
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --command-config /tmp/client.properties "$@" </dev/null
}
attempt=0
until topics --list >/dev/null 2>&1; do
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 60 ]; then echo "Kafka is not reachable at $BOOTSTRAP" >&2; exit 1; fi
  sleep 5
done
ensure() {
  name="$1" partitions="$2" replication="$3" min_isr="$4" retention="$5"
  topics --create --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor "$replication" \
    --config min.insync.replicas="$min_isr" --config retention.ms="$retention"
  current="$(topics --describe --topic "$name" | grep -c 'Partition: ' || true)"
  if [ "$current" -lt "$partitions" ]; then
    echo "topic $name has $current partition(s), the topology declares $partitions: adding $((partitions - current))"
    topics --alter --topic "$name" --partitions "$partitions"
  elif [ "$current" -gt "$partitions" ]; then
    echo "topic $name has $current partitions, more than the $partitions declared; leaving it"
  fi
  echo "topic $name: $partitions partition(s), replication $replication, min.insync.replicas $min_isr"
}
while read -r name partitions replication min_isr retention <&3; do
  [ -n "$name" ] || continue
  ensure "$name" "$partitions" "$replication" "$min_isr" "$retention"
done 3< /scripts/topics.plan
