#[tokio::main]
async fn main() -> std::process::ExitCode {
    turnout_common::serve::main(
        "turnout-router",
        turnout_router::Settings::from_args(),
        turnout_router::run,
    )
    .await
}
