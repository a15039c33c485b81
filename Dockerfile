# confab in a container: a release build, then the binary alone on Debian slim, as a non-root
# user. docs/DEPLOYMENT.md is the operator's guide; `.ci/docker` builds this file and checks the
# image in a real Docker engine (non-root, /health and /ready, HEALTHCHECK, data kept in the
# volume across a restart, prompt exit on SIGTERM).
#
#   docker build --build-arg SOURCE_GIT_SHA=$(git rev-parse --short=12 HEAD) -t confab .
#   docker run -d --name confab -p 4000:4000 -v confab-data:/var/lib/confab confab
#
# The default database, sqlite://data/confab.db, lands in the /var/lib/confab volume. Configure
# with environment variables (CONFAB_DATABASE__URL, CONFAB_REDIS__URL, CONFAB_AUTH__JWT_SECRET,
# …; see the README) or a file mounted at /etc/confab/confab.toml.
#
# Needs no BuildKit features (no cache mounts), so the classic builder builds it too; that is
# how .ci/docker builds it. Dependencies are built in a layer of their own from the manifests and
# Cargo.lock alone, so a change to the sources rebuilds confab and not its dependencies.

FROM rust:1-slim-bookworm AS build
WORKDIR /src

# 1. Dependencies: the manifests, the lock file and the build script, with empty stand-ins for
#    the server's targets. This layer is reused until a manifest or Cargo.lock change. The
#    stand-ins' fingerprints are removed afterwards, so the real sources are always compiled.
#    Only the server (`-p confab`) is built, here and below; the load generator (bench/) is a
#    member of the workspace, so cargo needs its manifest and a stand-in target to load the
#    workspace, but neither it nor its crates are compiled or shipped.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench/Cargo.toml ./bench/
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked -p confab \
    && rm -rf src target/release/.fingerprint/confab-* target/release/confab

# 2. confab itself. The web client (assets/) and the migrations are embedded in the binary.
#    Without .git in the build context, build.rs takes the commit from SOURCE_GIT_SHA (the
#    git_sha label of the confab_build_info metric); unset, it is "unknown".
COPY assets ./assets
COPY migrations ./migrations
COPY src ./src
ARG SOURCE_GIT_SHA=""
RUN SOURCE_GIT_SHA="$SOURCE_GIT_SHA" cargo build --release --locked -p confab \
    && install -m 0755 target/release/confab /usr/local/bin/confab

FROM debian:bookworm-slim
RUN groupadd --gid 10001 confab \
    && useradd --uid 10001 --gid confab --no-log-init --no-create-home --home-dir /var/lib/confab \
        --shell /usr/sbin/nologin confab \
    && install -d -m 0750 -o confab -g confab /var/lib/confab
COPY --from=build /usr/local/bin/confab /usr/local/bin/confab
# Plain log lines for `docker logs` (text logs are coloured only on a terminal anyway).
ENV NO_COLOR=1
# Fewer glibc malloc arenas: 10.2 instead of 16.0 KiB of RSS per idle WebSocket connection.
ENV MALLOC_ARENA_MAX=2
# Large blocks (a password hash holds 19 MiB) go back to the kernel when freed: see
# systemd/confab.service for the measurement.
ENV MALLOC_MMAP_THRESHOLD_=1048576
# confab listens on `listen` (default 0.0.0.0:4000; `PORT`, CONFAB_LISTEN or a mounted
# confab.toml change it), and the HEALTHCHECK below reads the same setting: a container started
# with `-e PORT=8080` is checked on 8080.
USER 10001:10001
# State and the default SQLite database (data/confab.db, relative to the working directory).
WORKDIR /var/lib/confab
VOLUME ["/var/lib/confab"]
EXPOSE 4000
# `confab healthcheck` asks /ready on the configured port (no curl in the image). Healthy
# means the database (and Redis, when configured) answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["confab", "healthcheck"]
# SIGTERM drains: sockets are closed with 1001 once their in-flight messages are acknowledged,
# within shutdown.grace (10 s; `docker stop` waits 10 s before SIGKILL, so give it
# `--time 15` or more if you raise the grace).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/confab"]
CMD ["serve"]
