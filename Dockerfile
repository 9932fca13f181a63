# syntax=docker/dockerfile:1
# The meshops image: one static binary on distroless, as the non-root user. The Helm chart
# (charts/meshops) runs it with `agent --config …`; its default image is this one:
#
#   docker build -t ghcr.io/meshops/meshops:0.1.0 .
#
# Why an Alpine (musl) build: git2 needs libgit2, libssh2 and OpenSSL. libgit2-sys and
# libssh2-sys build their vendored C sources when the system has no such library (none is
# installed here), but openssl-sys links the system's OpenSSL (Cargo.toml does not enable
# git2's vendored-openssl). Alpine ships OpenSSL and zlib as static musl archives
# (openssl-libs-static, zlib-static), so with OPENSSL_STATIC=1 everything, libc included,
# ends up in one self-contained binary that runs on distroless/static. A glibc build would
# instead need libssl, libcrypto and libz at run time, and distroless/cc carries no libz.

FROM rust:1-alpine AS build
RUN apk add --no-cache build-base pkgconf openssl-dev openssl-libs-static zlib-dev zlib-static
ENV OPENSSL_STATIC=1 \
    OPENSSL_NO_VENDOR=1 \
    LIBZ_SYS_STATIC=1 \
    PKG_CONFIG_ALL_STATIC=1 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin meshops \
 && cp target/release/meshops /meshops
# Static or nothing: a binary that needs a shared library would not start on distroless/static.
RUN ! readelf -d /meshops | grep -q NEEDED \
 && /meshops --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /meshops /usr/local/bin/meshops
# OpenSSL (git over HTTPS) built on Alpine looks for /etc/ssl/cert.pem; distroless keeps the
# CA bundle here.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshops"]
CMD ["agent"]
