//! Compiles `proto/` without a system `protoc`: protox parses the files into a
//! descriptor set, which is written out for gRPC reflection and handed to
//! tonic-prost-build for code generation.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/turnout/v1/turnout.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("turnout_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .type_attribute(
            ".turnout.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .message_attribute(".turnout.v1", "#[serde(default)]")
        .compile_fds(fds)?;
    Ok(())
}
