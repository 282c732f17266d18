#[tokio::main]
async fn main() -> std::process::ExitCode {
    turnout_common::serve::main(
        "turnout-ws-node",
        turnout_ws_node::Settings::from_args(),
        |s| &s.listen,
        turnout_ws_node::run,
    )
    .await
}
