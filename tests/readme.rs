//! The README's examples, built and run as a user would: each `rust` block pasted
//! into `fn main() -> Result<(), Box<dyn std::error::Error>>` of its own program,
//! in a crate that depends on `swarmexec` alone.

use std::fs;
use std::path::Path;
use std::process::Command;

/// The bodies of the README's code blocks tagged `tag` (such as `rust`).
fn blocks_tagged(readme: &str, tag: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let fence = format!("```{tag}");
    for line in readme.lines() {
        match &mut current {
            None if line.trim() == fence => current = Some(String::new()),
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

/// Writes a crate with one binary per block (and the README's bench, as the
/// binary `my_controller`), next to a copy of our lock file so that it builds
/// with the versions we test with.
fn write_crate(dir: &Path, blocks: &[String], bench: &str) {
    let repo = env!("CARGO_MANIFEST_DIR");
    let manifest = format!(
        "[package]\nname = \"readme-examples\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[dependencies]\nswarmexec = {{ path = {repo:?} }}\n\n[workspace]\n"
    );
    fs::create_dir_all(dir.join("src/bin")).unwrap();
    fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    fs::copy(Path::new(repo).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    fs::write(dir.join("src/lib.rs"), "").unwrap();
    fs::write(dir.join("src/bin/my_controller.rs"), bench).unwrap();
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
    let blocks = blocks_tagged(&readme, "rust");
    assert!(
        blocks.len() >= 3,
        "the README has {} examples",
        blocks.len()
    );
    // Under the target directory, so that later runs build incrementally.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme-examples");
    let _ = fs::remove_dir_all(dir.join("src"));
    let bench = blocks_tagged(&readme, "rust,bench");
    assert_eq!(bench.len(), 1, "one bench in the README");
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/my_controller.rs");
    assert_eq!(
        bench[0],
        fs::read_to_string(in_repo).unwrap(),
        "the README shows benches/my_controller.rs as it is"
    );
    write_crate(&dir, &blocks, &bench[0]);
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
    // The bench, pasted as it is: it runs a stub and the process executor.
    let ran = Command::new(dir.join("target/debug/my_controller"))
        .env("TMPDIR", scratch.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    for row in [
        "stub: 200 rounds",
        "process: 200 rounds",
        "| running | 200 |",
        "| process / stub |",
    ] {
        assert!(table.contains(row), "{row} in:\n{table}");
    }
    let left: Vec<_> = fs::read_dir(scratch.path().join("swarmexec-example"))
        .map(|dir| dir.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the examples leave task files: {left:?}");
}
