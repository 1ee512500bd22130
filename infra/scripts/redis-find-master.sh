# shellcheck shell=sh
# Sourced by redis-start.sh and redis-sentinel-start.sh (infra/redis_ha.py): ask the other pods'
# sentinels for the current master (the first pod when none answers yet), so a restarted pod rejoins
# as a replica instead of becoming a second master.  Sets MASTER, and ANSWERED=yes when one answered.
# Needs REPLICAS, SERVER, FQDN_SUFFIX, ME, MASTER_SET, SENTINEL_PORT and REDIS_PASSWORD.
# shellcheck disable=SC2034 # MASTER and ANSWERED are read by the scripts that source this
find_master() {
  MASTER=""
  ANSWERED=no
  i=0
  while [ "$i" -lt "$REPLICAS" ]; do
    PEER="$SERVER-$i.$FQDN_SUFFIX"
    if [ "$PEER" != "$ME" ]; then
      MASTER="$(REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 redis-cli -h "$PEER" -p "$SENTINEL_PORT" \
        sentinel get-master-addr-by-name "$MASTER_SET" 2>/dev/null | head -n 1 || true)"
      [ -n "$MASTER" ] && { ANSWERED=yes; break; }
    fi
    i=$((i + 1))
  done
  [ -n "$MASTER" ] || MASTER="$SERVER-0.$FQDN_SUFFIX"
}
