#!/usr/bin/env bash
# Ensures the cluster-mode services run on loopback: PostgreSQL, Redis, NATS (JetStream) and etcd.
#
# Usage: scripts/dev-services.sh [postgres|redis|nats|etcd ...] (default: all four).
# Idempotent: a service whose port already answers is left alone. A missing one is started with
# the command below; etcd is installed from Debian (etcd-server + etcd-client) when its binary is
# missing. Each service must answer within WAIT_SECONDS or the script fails naming it.
# Prints one line per service. Needs root for starting daemons and for apt-get.
set -euo pipefail

WAIT_SECONDS="${WAIT_SECONDS:-30}"
ETCD_DATA_DIR="${RESONANCE_ETCD_DATA_DIR:-/var/lib/resonance-etcd}"
ETCD_LOG="${RESONANCE_ETCD_LOG:-/var/log/resonance-etcd.log}"

# port_open PORT → exit 0 when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_until NAME COMMAND... → polls COMMAND until it succeeds, or fails after WAIT_SECONDS.
wait_until() {
  local name="$1"
  shift
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "dev-services: $name did not become ready within ${WAIT_SECONDS}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

ensure_postgres() {
  if port_open 5432; then
    echo "postgres: already running on 127.0.0.1:5432"
    return
  fi
  # shellcheck disable=SC2046 # one cluster version directory is expected
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
  wait_until postgres port_open 5432
  echo "postgres: started on 127.0.0.1:5432"
}

ensure_redis() {
  if port_open 6379; then
    echo "redis: already running on 127.0.0.1:6379"
    return
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_until redis port_open 6379
  echo "redis: started on 127.0.0.1:6379"
}

# NATS runs with its monitoring port (8222, loopback) so tests can see which clients are connected.
start_nats() {
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -m 8222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_until nats port_open 4222
  wait_until nats-monitoring port_open 8222
}

ensure_nats() {
  if port_open 4222 && port_open 8222; then
    echo "nats: already running on 127.0.0.1:4222 (monitoring on 8222)"
    return
  fi
  if port_open 4222; then
    # Started without monitoring (the machine's default): restart it with the same JetStream store.
    start-stop-daemon --stop --oknodo --retry 10 --exec /usr/sbin/nats-server
    wait_until nats-stop bash -c '! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null'
    start_nats
    echo "nats: restarted on 127.0.0.1:4222 with monitoring on 8222 (JetStream)"
    return
  fi
  start_nats
  echo "nats: started on 127.0.0.1:4222 with monitoring on 8222 (JetStream)"
}

etcd_healthy() {
  curl -sf --max-time 2 http://127.0.0.1:2379/health >/dev/null
}

ensure_etcd() {
  if etcd_healthy; then
    echo "etcd: already running on 127.0.0.1:2379"
    return
  fi
  if port_open 2379; then
    # Something holds the port but /health does not answer yet (etcd still starting): wait for it.
    wait_until etcd etcd_healthy
    echo "etcd: running on 127.0.0.1:2379"
    return
  fi
  if ! command -v etcd >/dev/null 2>&1; then
    if [ -n "${RESONANCE_NO_INSTALL:-}" ]; then
      echo "etcd: binary missing (not installing: RESONANCE_NO_INSTALL is set)" >&2
      return 1
    fi
    echo "etcd: binary missing, installing etcd-server and etcd-client from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq etcd-server etcd-client >/dev/null
    # The Debian package may start its own etcd via the init system; loopback 2379 is what we need.
    if etcd_healthy; then
      echo "etcd: installed and running on 127.0.0.1:2379"
      return
    fi
  fi
  mkdir -p "$ETCD_DATA_DIR"
  chmod 700 "$ETCD_DATA_DIR"
  # setsid + nohup: the daemon outlives this script and the CI shell.
  setsid nohup etcd --name s1 --data-dir "$ETCD_DATA_DIR" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster s1=http://127.0.0.1:2380 >>"$ETCD_LOG" 2>&1 </dev/null &
  disown || true
  if ! wait_until etcd etcd_healthy; then
    echo "etcd: last log lines ($ETCD_LOG):" >&2
    tail -n 20 "$ETCD_LOG" >&2 || true
    return 1
  fi
  echo "etcd: started on 127.0.0.1:2379 (data $ETCD_DATA_DIR)"
}

# Arguments name the services to ensure (postgres redis nats etcd); none means all of them.
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(postgres redis nats etcd)
for service in "${services[@]}"; do
  case "$service" in
    postgres | redis | nats | etcd) "ensure_$service" ;;
    *) echo "dev-services: unknown service '$service'" >&2; exit 2 ;;
  esac
done
