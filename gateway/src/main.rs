use turnout_gateway::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    turnout_common::init_logging();
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("turnout-gateway: {e}");
            std::process::exit(2);
        }
    };
    let listener = match turnout_common::serve::bind(&settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "turnout-gateway: setting `listen`: cannot bind {}: {e}",
                settings.listen
            );
            std::process::exit(2);
        }
    };
    let shutdown = turnout_common::serve::shutdown_on_signal();
    turnout_gateway::run(listener, settings, shutdown).await?;
    Ok(())
}
