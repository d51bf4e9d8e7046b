# The operator image: `kubectl-homelab` built as a static musl binary (rustls on ring, no
# OpenSSL, no libc at run time) on distroless/static, running as the nonroot user (65532).
# One file for linux/amd64 and linux/arm64:
#   docker build -t ghcr.io/homecluster-dev/kubectl-homelab:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/homecluster-dev/kubectl-homelab:0.1.0 --push .
# The Helm chart (deploy/helm/kubectl-homelab) runs it with `run-operator`.
#
# The build stage runs on the platform being built (it is not `--platform=$BUILDPLATFORM`):
# rust:alpine exists for both architectures, and each compiles for its own musl target, so no C
# cross compiler is needed for ring. On an amd64 builder, buildx runs the arm64 stage under QEMU
# emulation (registered with binfmt), many times slower than natively; an arm64 builder node
# (`docker buildx create --append`) builds it natively.

FROM rust:1.95-alpine AS build
# Set by BuildKit (buildx, and `docker build` since Docker 23) to the platform being built; the
# legacy builder leaves it empty, and the stage's own architecture (`uname -m`) decides.
ARG TARGETARCH
# musl-dev: the C parts of ring; the proto is compiled by protox (no protoc needed).
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN arch="${TARGETARCH:-$(uname -m)}" \
    && case "$arch" in \
      x86_64|amd64) target=x86_64-unknown-linux-musl ;; \
      aarch64|arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture $arch: linux/amd64 and linux/arm64 are built" >&2; exit 1 ;; \
    esac \
    && cargo build --release --locked --target "$target" --bin kubectl-homelab \
    && cp "target/$target/release/kubectl-homelab" /kubectl-homelab

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kubectl-homelab /usr/local/bin/kubectl-homelab
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-homelab"]
CMD ["run-operator"]
