# Build: docker build -t switchboard .
# Run:   docker run --rm -p 8080:8080 -p 9090:9090 switchboard
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY loadtest ./loadtest
RUN cargo build --release --locked --bin switchboard

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home switchboard
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY config/switchboard.toml /etc/switchboard/switchboard.toml
USER switchboard
EXPOSE 8080 9090
# Sockets are files: a node that should hold many connections needs a high limit
# (docker run --ulimit nofile=1048576:1048576 ...).
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve", "--config", "/etc/switchboard/switchboard.toml"]
