#!/bin/sh
# The redis container's preStop hook in sentinel mode (infra/redis_ha.py).  Without it, a deleted
# master's pod comes back within Sentinel's down-after time, is still named master, starts as one
# while the sentinels fail over anyway: two masters for a moment, and the writes the old one took are
# dropped when it is made a replica.  So a stopping master holds writes (replication goes on, the
# replicas catch up), has a peer's sentinel fail over (its own is stopping with it), and waits until
# the sentinels name another master and HAProxy has cut its sessions; the held writers then see a
# closed connection and reconnect, through HAProxy, to the new master.  A replica or a lone master
# stops at once.
set -u
FQDN_SUFFIX="$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
# shellcheck disable=SC3028 # Kubernetes puts HOSTNAME (the pod name) in every container's environment
ME="$HOSTNAME.$FQDN_SUFFIX"
info="$(redis-cli -p "$REDIS_PORT" info replication | tr -d '\r')"
echo "$info" | grep -q '^role:master' || exit 0
echo "$info" | grep -q '^connected_slaves:0' && exit 0
redis-cli -p "$REDIS_PORT" client pause 25000 write >/dev/null
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  PEER="$SERVER-$i.$FQDN_SUFFIX"
  if [ "$PEER" != "$ME" ] && timeout 3 redis-cli -h "$PEER" -p "$SENTINEL_PORT" sentinel failover "$MASTER_SET" \
      2>/dev/null | grep -q OK; then
    break
  fi
  i=$((i + 1))
done
tries=0
while [ "$tries" -lt 40 ]; do
  i=0
  while [ "$i" -lt "$REPLICAS" ]; do
    PEER="$SERVER-$i.$FQDN_SUFFIX"
    if [ "$PEER" != "$ME" ]; then
      MASTER="$(timeout 2 redis-cli -h "$PEER" -p "$SENTINEL_PORT" sentinel get-master-addr-by-name "$MASTER_SET" \
        2>/dev/null | head -n 1 || true)"
      if [ -n "$MASTER" ] && [ "$MASTER" != "$ME" ]; then
        sleep 3  # HAProxy's check (1 s, fall 2) marks this server down and shuts its sessions
        exit 0
      fi
    fi
    i=$((i + 1))
  done
  sleep 0.5
  tries=$((tries + 1))
done
exit 0
