//! The README's examples, built and run as a user would: each `rust` block pasted
//! into `fn main() -> Result<(), Box<dyn std::error::Error>>` of its own program,
//! in a crate that depends on `swarmexec` alone.

use std::fs;
use std::path::Path;
use std::process::Command;

/// The bodies of the README's `rust` code blocks.
fn rust_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```rust") => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Writes a crate with one binary per block, next to a copy of our lock file so
/// that it builds with the versions we test with.
fn write_crate(dir: &Path, blocks: &[String]) {
    let repo = env!("CARGO_MANIFEST_DIR");
    let manifest = format!(
        "[package]\nname = \"readme-examples\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[dependencies]\nswarmexec = {{ path = {repo:?} }}\n\n[workspace]\n"
    );
    fs::create_dir_all(dir.join("src/bin")).unwrap();
    fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    fs::copy(Path::new(repo).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    fs::write(dir.join("src/lib.rs"), "").unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let program = format!(
            "fn main() -> Result<(), Box<dyn std::error::Error>> {{\n{block}\nOk(())\n}}\n"
        );
        fs::write(dir.join(format!("src/bin/example_{i}.rs")), program).unwrap();
    }
}

#[test]
fn every_readme_example_builds_and_runs_as_a_program() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = rust_blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "the README has {} examples",
        blocks.len()
    );
    // Under the target directory, so that later runs build incrementally.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme-examples");
    let _ = fs::remove_dir_all(dir.join("src"));
    write_crate(&dir, &blocks);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--quiet", "--offline", "--bins", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the README's examples do not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let scratch = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let program = dir.join(format!("target/debug/example_{i}"));
        let ran = Command::new(&program)
            .env("TMPDIR", scratch.path())
            .output()
            .unwrap();
        assert!(
            ran.status.success(),
            "README example {i} failed:\n{block}\n{}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    let left: Vec<_> = fs::read_dir(scratch.path().join("swarmexec-example"))
        .map(|dir| dir.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the examples leave task files: {left:?}");
}
