# syntax=docker/dockerfile:1
# tidemark: one image, one binary, every process (migrate, scheduler, worker, serve, admin):
#
#   docker build -t tidemark:dev .
#   docker run --rm -e DATABASE_URL=... -e REDIS_URL=... -e ELASTICSEARCH_URL=... \
#     -e TIDEMARK_ADMIN_ADDR=0.0.0.0:8081 tidemark:dev worker
#
# No secret is baked in: the services come from the environment at run time, the optional
# config file from a mount (/etc/tidemark/tidemark.toml). Linted by hadolint in
# deploy/check/run.sh; used by deploy/compose/compose.yaml and deploy/k8s/.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the binary is built from (.dockerignore allows no more). benches/ is named in
# Cargo.toml, so cargo wants it present even when it builds only the binary.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY workers ./workers
COPY seeds ./seeds
COPY benches ./benches
# Registry and target directory in BuildKit cache mounts: a rebuild after a source change
# recompiles tidemark, not every dependency. The binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin tidemark \
    && install -D -m 0755 target/release/tidemark /out/tidemark

# ---------------------------------------------------------------- runtime
FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: TLS to the search server, PostgreSQL and Redis (rustls; a private CA
# is given with ELASTICSEARCH_CA_CERT). Debian's stable security updates replace package
# versions, so a pinned version would stop building: the release is pinned instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid/gid (Kubernetes' runAsNonRoot checks the numeric USER).
RUN groupadd --system --gid 10001 tidemark \
    && useradd --system --uid 10001 --gid tidemark --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tidemark
COPY --from=build /out/tidemark /usr/local/bin/tidemark
USER 10001:10001
# 8080: `tidemark serve`; 8081: the admin address by convention (TIDEMARK_ADMIN_ADDR).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/tidemark"]
CMD ["--help"]
