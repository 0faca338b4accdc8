# syntax=docker/dockerfile:1
#
# Builds genesis-gate into a distroless image that runs as UID 65532, the
# user that deploy/base/deployment.yaml sets.
#
#   docker build -t genesis-gate:0.1.0 .

# Debian 12 in both stages, so the binary links against the glibc (2.36)
# that the runtime image has. The toolchain is the one the crate is built
# and tested with; Cargo.toml's rust-version is the oldest that builds it.
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build directory between
# builds; the binary is copied out because a cache mount is not part of
# the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin genesis-gate \
    && install -D -m 0755 target/release/genesis-gate /out/genesis-gate

# cc rather than static: the binary is linked against glibc and libgcc_s,
# which this image has and the static one lacks.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/genesis-gate /usr/local/bin/genesis-gate
# nonroot:nonroot in distroless. Numeric, so that the kubelet can verify
# runAsNonRoot without reading /etc/passwd.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/genesis-gate", "serve"]
