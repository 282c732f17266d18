#[tokio::main]
async fn main() -> std::process::ExitCode {
    turnout_common::serve::main(
        "turnout-gateway",
        turnout_gateway::Settings::from_args(),
        turnout_gateway::run,
    )
    .await
}
