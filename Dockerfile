# syntax=docker/dockerfile:1
# confab in a container: a release build, then the binary alone on Debian slim as a non-root user.
#   docker build -t confab .
#   docker run -p 4000:4000 -v confab-data:/var/lib/confab confab
# The default database, sqlite://data/confab.db, lands in the /var/lib/confab volume. Configure
# with environment variables (DATABASE_URL, CONFAB_AUTH__JWT_SECRET, …; see the README) or a file
# mounted at /etc/confab/confab.toml. Minimal and not yet built here (no Docker engine): a later
# issue completes and tests it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build output between builds; the binary is copied out
# of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/confab /usr/local/bin/confab

FROM debian:bookworm-slim
RUN groupadd --gid 10001 confab \
    && useradd --uid 10001 --gid confab --no-log-init --home-dir /var/lib/confab --shell /usr/sbin/nologin confab \
    && install -d -m 0750 -o confab -g confab /var/lib/confab
COPY --from=build /usr/local/bin/confab /usr/local/bin/confab
# Plain log lines for `docker logs` (text logs are coloured otherwise).
ENV NO_COLOR=1
# Fewer glibc malloc arenas: 10.2 instead of 16.0 KiB of RSS per idle WebSocket connection.
ENV MALLOC_ARENA_MAX=2
# Large blocks (a password hash holds 19 MiB) go back to the kernel when freed: see
# systemd/confab.service for the measurement.
ENV MALLOC_MMAP_THRESHOLD_=1048576
USER 10001:10001
WORKDIR /var/lib/confab
VOLUME ["/var/lib/confab"]
EXPOSE 4000
# No curl in the image: bash's /dev/tcp asks /health directly. It assumes the default port 4000.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/4000 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '\"ok\":true' <&3"]
ENTRYPOINT ["/usr/local/bin/confab"]
CMD ["serve"]
