#!/bin/sh
# The redis container (infra/redis_ha.py).  Writes the password and replication settings to an
# in-memory file redis.conf includes, so the password never appears on a command line; in sentinel
# mode asks the sentinels for the current master first.
set -eu
FQDN_SUFFIX="$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
# shellcheck disable=SC3028 # Kubernetes puts HOSTNAME (the pod name) in every container's environment
ME="$HOSTNAME.$FQDN_SUFFIX"
# shellcheck source=redis-find-master.sh
. /config/redis-find-master.sh
{
  printf 'requirepass "%s"\n' "$REDIS_PASSWORD"
  printf 'masterauth "%s"\n' "$REDIS_PASSWORD"
} > /run/redis/runtime.conf
if [ "$SENTINEL" = "yes" ]; then
  printf 'replica-announce-ip %s\n' "$ME" >> /run/redis/runtime.conf
  find_master
  # Sentinels still naming this restarting pod may not have noticed it went away: starting as master
  # now could make a second one if they fail over a moment later.  Stay down past their down-after
  # time and ask again: then they have either failed over (follow the new master) or, with no
  # replica to promote, still name this pod (start as master, from its own data).
  if [ "$ANSWERED" = yes ] && [ "$MASTER" = "$ME" ]; then
    sleep $((DOWN_AFTER_MS / 1000 + 5))
    find_master
  fi
  if [ "$MASTER" != "$ME" ]; then
    printf 'replicaof %s %s\n' "$MASTER" "$REDIS_PORT" >> /run/redis/runtime.conf
  fi
fi
exec redis-server /config/redis.conf
