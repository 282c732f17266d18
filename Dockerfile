# One image with every turnout binary; compose.yaml runs it as each process.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/turnout-gateway /src/target/release/turnout-router \
     /src/target/release/turnout-ws-node /src/target/release/turnout-bench /usr/local/bin/
USER nobody
