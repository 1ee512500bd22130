#!/bin/sh
# The sentinel container (infra/redis_ha.py): monitors the master the other sentinels name.
set -eu
FQDN_SUFFIX="$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
# shellcheck disable=SC3028 # Kubernetes puts HOSTNAME (the pod name) in every container's environment
ME="$HOSTNAME.$FQDN_SUFFIX"
# shellcheck source=redis-find-master.sh
. /config/redis-find-master.sh
find_master
QUORUM=$((REPLICAS / 2 + 1))
cat > /run/sentinel/sentinel.conf <<CONF
port $SENTINEL_PORT
dir /tmp
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $ME
requirepass "$REDIS_PASSWORD"
sentinel sentinel-pass "$REDIS_PASSWORD"
sentinel monitor $MASTER_SET $MASTER $REDIS_PORT $QUORUM
sentinel auth-pass $MASTER_SET "$REDIS_PASSWORD"
sentinel down-after-milliseconds $MASTER_SET $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_SET 60000
sentinel parallel-syncs $MASTER_SET 1
CONF
exec redis-sentinel /run/sentinel/sentinel.conf
