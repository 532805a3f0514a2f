#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are running: starts them when
# they are installed but stopped, installs them with apt-get when they are missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  echo "services: $2 did not open port $1 within 60 s" >&2; return 1
}

missing=()
command -v rabbitmq-server >/dev/null 2>&1 || port_open 5672 || missing+=(rabbitmq-server)
command -v redis-server >/dev/null 2>&1 || port_open 6379 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "services: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! port_open 6379; then
  echo "services: starting Redis" >&2
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
wait_port 6379 Redis

if ! port_open 5672; then
  echo "services: starting RabbitMQ" >&2
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
fi
wait_port 5672 RabbitMQ
# The port opens before the broker accepts AMQP; wait for it to report running.
for _ in $(seq 1 120); do
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 && break
  sleep 0.5
done
