//! Compiles `proto/externalgrpc.proto` with protox (pure Rust, no `protoc` on the machine) and
//! generates both the tonic server (the provider) and client (tests, benches, simulator checks).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/externalgrpc.proto");
    let fds = protox::compile(["proto/externalgrpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
