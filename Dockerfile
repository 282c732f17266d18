# syntax=docker/dockerfile:1
# One image with every turnout binary; compose.yaml runs it as each process.
#
#   docker build -t turnout:local .        (BuildKit: docker compose v2, or
#   DOCKER_BUILDKIT=1 with the classic CLI and docker-compose 1.29)
#
# Dependencies and incremental build state live in BuildKit cache mounts,
# so a change to turnout's sources rebuilds turnout, not its dependencies.
# The runtime image is Debian slim with four stripped binaries, run as
# nobody. Without a registry, deploy/docker/images.sh makes the same image
# from the host's release build.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for b in turnout-gateway turnout-router turnout-ws-node turnout-bench; do \
      install -m 0755 target/release/$b /out/$b && strip /out/$b; \
    done

FROM debian:bookworm-slim
COPY --from=build /out/ /usr/local/bin/
USER 65534:65534
EXPOSE 8080 7070 9000
# compose.yaml and deploy/k8s give each process its command; health checks
# use `turnout-bench probe http://127.0.0.1:<port>/healthz` (no curl here).
CMD ["turnout-gateway", "--help"]
