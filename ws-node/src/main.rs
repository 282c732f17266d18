// mimalloc: about 7 % more deliveries per CPU-second than glibc's malloc in
// the chat benchmark, for ~10 MB more baseline RSS (docs/BENCHMARKS.md).
// `--features system-alloc` leaves the system's, for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    turnout_common::serve::main(
        "turnout-ws-node",
        turnout_ws_node::Settings::from_args(),
        turnout_ws_node::run,
    )
    .await
}
