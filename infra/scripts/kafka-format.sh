#!/bin/sh
# shellcheck disable=SC3028 # Kubernetes puts HOSTNAME (the pod name) in every container's environment
# The Kafka pods' "format" init container (infra/kafka_cluster.py): render server.properties for this
# pod, then format the storage unless it already is (the dynamic quorum's first voters come from
# INITIAL_CONTROLLERS, the SCRAM users from the Secret's passwords).
set -eu
ORDINAL="${HOSTNAME##*-}"
NODE_ID=$((ORDINAL + NODE_ID_OFFSET))
FQDN="$HOSTNAME.$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
PROPERTIES=/etc/kafka-runtime/server.properties
RACK=""
if [ -f /etc/kafka-rack/rack ]; then RACK="$(cat /etc/kafka-rack/rack)"; fi
LISTENERS=""
ADVERTISED=""
case "$PROCESS_ROLES" in
  *broker*) LISTENERS="INTERNAL://:$CLIENT_PORT"; ADVERTISED="INTERNAL://$FQDN:$CLIENT_PORT";;
esac
case "$PROCESS_ROLES" in
  *controller*)
    LISTENERS="${LISTENERS:+$LISTENERS,}CONTROLLER://:$CONTROLLER_PORT"
    ADVERTISED="${ADVERTISED:+$ADVERTISED,}CONTROLLER://$FQDN:$CONTROLLER_PORT";;
esac
if [ "$TLS" = yes ]; then
  cat /etc/kafka-tls/tls.key /etc/kafka-tls/tls.crt > /etc/kafka-runtime/keystore.pem
fi
cat > "$PROPERTIES" <<CONF
process.roles=$PROCESS_ROLES
node.id=$NODE_ID
controller.quorum.bootstrap.servers=$CONTROLLER_BOOTSTRAP
controller.listener.names=CONTROLLER
listeners=$LISTENERS
advertised.listeners=$ADVERTISED
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:$CLIENT_PROTOCOL
log.dirs=/var/lib/kafka/data/logs
auto.create.topics.enable=false
default.replication.factor=$REPLICATION_FACTOR
min.insync.replicas=$MIN_INSYNC_REPLICAS
offsets.topic.replication.factor=$REPLICATION_FACTOR
transaction.state.log.replication.factor=$REPLICATION_FACTOR
transaction.state.log.min.isr=$MIN_INSYNC_REPLICAS
share.coordinator.state.topic.replication.factor=$REPLICATION_FACTOR
share.coordinator.state.topic.min.isr=$MIN_INSYNC_REPLICAS
unclean.leader.election.enable=false
CONF
if [ "$SASL" = yes ]; then
  MECHANISM_KEY="$(echo "$SCRAM_MECHANISM" | tr '[:upper:]' '[:lower:]')"
  cat >> "$PROPERTIES" <<CONF
sasl.enabled.mechanisms=$SCRAM_MECHANISM
sasl.mechanism.inter.broker.protocol=$SCRAM_MECHANISM
listener.name.internal.$MECHANISM_KEY.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN_USER" password="$ADMIN_PASSWORD";
super.users=User:$ADMIN_USER
CONF
fi
if [ "$TLS" = yes ]; then
  cat >> "$PROPERTIES" <<CONF
listener.name.internal.ssl.keystore.type=PEM
listener.name.internal.ssl.keystore.location=/etc/kafka-runtime/keystore.pem
listener.name.internal.ssl.truststore.type=PEM
listener.name.internal.ssl.truststore.location=/etc/kafka-tls/ca.crt
CONF
fi
if [ -n "$RACK" ]; then echo "broker.rack=$RACK" >> "$PROPERTIES"; fi
if [ -f /var/lib/kafka/data/logs/meta.properties ]; then
  echo "storage already formatted"
  exit 0
fi
if [ -n "$INITIAL_CONTROLLERS" ]; then
  QUORUM="--initial-controllers=$INITIAL_CONTROLLERS"
else
  QUORUM="--no-initial-controllers"
fi
if [ "$SASL" = yes ]; then
  set -- --add-scram "$SCRAM_MECHANISM=[name=$ADMIN_USER,password=$ADMIN_PASSWORD]" \
    --add-scram "$SCRAM_MECHANISM=[name=$APP_USER,password=$APP_PASSWORD]"
else
  set --
fi
/opt/kafka/bin/kafka-storage.sh format --config "$PROPERTIES" --cluster-id="$CLUSTER_ID" "$QUORUM" "$@"
