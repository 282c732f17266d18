// The bench shares the machine with the cluster it measures: a cheaper
// allocator leaves more CPU to the cluster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    if let Err(e) = turnout_loadtest::main().await {
        eprintln!("turnout-bench: {e:#}");
        std::process::exit(1);
    }
}
