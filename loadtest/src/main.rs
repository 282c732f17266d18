#[tokio::main]
async fn main() {
    if let Err(e) = turnout_loadtest::main().await {
        eprintln!("turnout-bench: {e:#}");
        std::process::exit(1);
    }
}
