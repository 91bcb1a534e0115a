# syntax=docker/dockerfile:1
# The operator's image: built from this repository in a Rust stage, run on
# distroless (glibc and CA certificates, no shell, no package manager) as
# the numeric non-root user the chart's Pod Security context names.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/idsync/idsync:dev .
#
# The binary links only glibc (libc, libm, libgcc_s): SQLite is compiled in,
# TLS is rustls. `.ci/run` builds this exact release binary and checks that
# (scripts/check-release-binary).

ARG RUST_VERSION=1.89
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin idsync \
 && install -D -m 0755 target/release/idsync /out/idsync

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="idsync" \
      org.opencontainers.image.description="A Kubernetes operator that keeps identity and account data in sync with a company's connected systems" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/idsync/idsync" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/idsync /usr/local/bin/idsync
# distroless's nonroot user; the chart's runAsUser/runAsGroup say the same.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/idsync"]
CMD ["run"]
