#!/usr/bin/env bash
# Sets pg2kafka up on a Debian machine with Node 20, Java 17 and PostgreSQL: the system
# packages the tests and the librdkafka client need (installed when missing, as root),
# PostgreSQL started when it is down, then `npm ci`.
#
# The librdkafka client (@confluentinc/kafka-javascript, KAFKA_CLIENT=rdkafka) is an
# optional dependency with native code. Where its prebuilt binary cannot be downloaded,
# it is built here against the system's libraries (CKJS_LINKING=dynamic) and the system's
# Node headers (npm_config_nodedir=/usr): about 1.5 to 2.5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

missing() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done
}

# The librdkafka client's build: compilers and the libraries it links against.
mapfile -t wanted < <(missing build-essential python3 libssl-dev libsasl2-dev libzstd-dev \
  liblz4-dev zlib1g-dev libcurl4-openssl-dev)
# Java and Maven fetch and run the local Kafka broker the tests use (any on the PATH
# will do); openssl and psql serve the TLS and role tests.
if ! command -v mvn >/dev/null || ! command -v java >/dev/null; then
  wanted+=(maven openjdk-17-jre-headless)
fi
# The replica test compiles one small class for Debezium's JDBC sink (scripts/kafka-connect.ts).
command -v javac >/dev/null || wanted+=(openjdk-17-jdk-headless)
command -v openssl >/dev/null || wanted+=(openssl)
command -v psql >/dev/null || wanted+=(postgresql-client)
if [ "${#wanted[@]}" -gt 0 ]; then
  echo "setup: installing ${wanted[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${wanted[@]}"
fi

# PostgreSQL on 127.0.0.1:5432 (trust auth) is the machine's; start it if it is down.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
fi

export CKJS_LINKING=dynamic
if [ -f /usr/include/node/node.h ]; then export npm_config_nodedir=/usr; fi
npm ci

# Optional means npm goes on without it: say so here, not when a relay needs it.
if ! node -e "require('@confluentinc/kafka-javascript')" 2>/dev/null; then
  echo "setup: the librdkafka client could not be built or loaded; KAFKA_CLIENT=rdkafka will not work (see npm's output above)" >&2
  exit 1
fi
