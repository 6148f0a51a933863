# Multi-stage build: a release binary built with the locked dependency set, run as non-root.
#   docker build -t iptgate .
#   docker run --rm -p 8443:8443 -e IPTGATE_SECRET=... \
#     -v "$PWD/gateway.toml:/etc/iptgate/gateway.toml:ro" -v "$PWD/certs:/etc/iptgate/certs:ro" iptgate
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin iptgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin iptgate
COPY --from=build /src/target/release/iptgate /usr/local/bin/iptgate
USER 10001:10001
WORKDIR /etc/iptgate
ENV IPTGATE_CONFIG=/etc/iptgate/gateway.toml
EXPOSE 8443 9901
# Listen on 0.0.0.0 inside the container (set server.listen accordingly); logs are JSON on stderr.
ENTRYPOINT ["/usr/local/bin/iptgate"]
CMD ["run"]
