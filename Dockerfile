# The operator image: `kubectl-homelab` built as a static musl binary (rustls on ring, no
# OpenSSL, no libc at run time) on distroless/static, running as the nonroot user (65532).
#   docker build -t ghcr.io/homecluster-dev/kubectl-homelab:0.1.0 .
# The Helm chart (deploy/helm/kubectl-homelab) runs it with `run-operator`.

FROM rust:1.95-alpine AS build
# musl-dev: the C parts of ring; the proto is compiled by protox (no protoc needed).
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin kubectl-homelab \
    && cp target/x86_64-unknown-linux-musl/release/kubectl-homelab /kubectl-homelab

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kubectl-homelab /usr/local/bin/kubectl-homelab
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-homelab"]
CMD ["run-operator"]
