# syntax=docker/dockerfile:1
# SecFlow images. One build of the three binaries (worker, producer, dlq-inspector):
#   docker build -t secflow:dev .                              # distroless, non-root (uid 65532)
#   docker build --target worker-tools -t secflow-tools:dev .  # the same binaries + nmap and curl,
#                                                              # for pools whose exec allowlist needs them
# Kubernetes manifests (deploy/k8s/) pick the binary with `command:`; the default is the worker.
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

# The dependency skeleton: the manifests, the lock file and an empty stand-in for every target
# root. It changes only when a manifest or the set of targets changes, so the dependency layer
# built from it below stays cached across source edits.
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS planner
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir -p /skeleton; \
    find . \( -name Cargo.toml -o -name Cargo.lock \) -exec cp --parents -t /skeleton {} +; \
    find . -name '*.rs' | grep -E '/(src/main|src/lib|build|src/bin/[^/]+|benches/[^/]+|tests/[^/]+)\.rs$' \
      | while read -r f; do \
          mkdir -p "/skeleton/$(dirname "$f")"; \
          case "$f" in */lib.rs) : > "/skeleton/$f" ;; *) echo 'fn main() {}' > "/skeleton/$f" ;; esac; \
        done

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS builder
WORKDIR /src
COPY --from=planner /skeleton/ ./
# Every dependency of the three binaries, compiled once (the cached layer).
RUN cargo build --release --locked -p secflow-worker -p secflow-producer -p secflow-dlq-inspector
COPY . .
# COPY keeps the sources' old modification times; touch them so cargo rebuilds the workspace
# crates over the stand-ins compiled above.
RUN find common worker producer dlq-inspector -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p secflow-worker -p secflow-producer -p secflow-dlq-inspector \
    && mkdir -p /out \
    && cp target/release/worker target/release/producer target/release/dlq-inspector /out/

# Worker image with scanners for `exec` tasks and tool nodes (add the pool's own tools here).
FROM debian:${DEBIAN}-slim AS worker-tools
# Unpinned on purpose: the Debian security archive replaces old versions, pins would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl nmap \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 secflow \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin secflow
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/worker"]

# The default image: glibc, libgcc and CA certificates only, no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/worker"]
