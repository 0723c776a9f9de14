//! Generates the rouse API from `proto/` and a file descriptor set for
//! server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("rouse_descriptor.bin"))
        .compile_protos(
            &["proto/rouse/v1/api.proto", "proto/rouse/v1/peer.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
