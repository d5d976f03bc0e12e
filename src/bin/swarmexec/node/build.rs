//! Generates the `swarmexec node` command's gRPC client code from SwarmKit's
//! `.proto` files, when the `node` feature is on; does nothing otherwise.

fn main() {
    println!("cargo:rerun-if-changed=src/bin/swarmexec/node/proto");
    #[cfg(feature = "node")]
    if let Err(error) = node::generate() {
        eprintln!("generating the SwarmKit protocol code: {error}");
        std::process::exit(1);
    }
}

#[cfg(feature = "node")]
mod node {
    const ROOT: &str = "src/bin/swarmexec/node/proto";
    const SERVICES: [&str; 3] = [
        "github.com/docker/swarmkit/api/ca.proto",
        "github.com/docker/swarmkit/api/dispatcher.proto",
        "github.com/docker/swarmkit/api/logbroker.proto",
    ];

    pub fn generate() -> Result<(), Box<dyn std::error::Error>> {
        let descriptors = protox::compile(SERVICES, [ROOT])?;
        tonic_prost_build::configure()
            .build_server(false)
            .build_transport(false)
            .compile_fds(descriptors)?;
        Ok(())
    }
}
