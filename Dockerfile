# Build: docker build -t switchboard:0.1.0 .
# Run:   docker run --rm -p 8080:8080 -p 9090:9090 --ulimit nofile=1048576:1048576 \
#          -e SWITCHBOARD_CONTROL__LISTEN=0.0.0.0:9090 -e SWITCHBOARD_CONTROL__API_KEYS='["<key>"]' \
#          switchboard:0.1.0
# Linted in the test suite with hadolint.

# --- build ---
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a source change does not rebuild them. The
# manifests of both workspace members, with empty targets, are enough for cargo to fetch
# and compile every dependency.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > loadtest/src/main.rs \
    && for bench in fanout history protocol throttle; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --bin switchboard \
    && rm -rf src loadtest/src benches
COPY src ./src
COPY benches ./benches
COPY loadtest ./loadtest
# The stub build's artifacts are older than the real sources; touch them so cargo rebuilds.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin switchboard

# --- runtime ---
FROM debian:bookworm-slim
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
# The system's CA bundle, which debian:bookworm-slim lacks: a JWKS fetch (auth.jwks_url)
# and rediss:// without cluster.redis_ca_file trust the system store only. Taken from the
# build stage (Debian's ca-certificates), so no apt in the runtime image.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY config/switchboard.toml /etc/switchboard/switchboard.toml
USER 10001:10001
# 8080: WebSocket clients. 9090: control API, health and metrics (keep it internal). The
# shipped config serves it on the container's loopback only; to reach it from outside, set
# SWITCHBOARD_CONTROL__LISTEN=0.0.0.0:9090 and SWITCHBOARD_CONTROL__API_KEYS='["<key>"]'
# (without keys such a listener refuses to start; docs/security.md).
EXPOSE 8080 9090
# `switchboard probe` asks the local control API for /readyz (the image has no HTTP client).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/switchboard", "probe", "--config", "/etc/switchboard/switchboard.toml", "/readyz"]
# Sockets are files: a node that should hold many connections needs a high limit
# (--ulimit nofile=...); the node raises its soft limit to the hard one at start.
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve", "--config", "/etc/switchboard/switchboard.toml"]
