//! The crate carries no dependency it does not use and no comment that sends a reader to a file
//! outside the repository.
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `name = …` lines of one `[section]` of Cargo.toml.
fn dependencies(manifest: &str, section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, spec)) = line.split_once('=') {
            out.push((name.trim().to_owned(), spec.trim().to_owned()));
        }
    }
    out
}

/// Dependencies whose use the source does not show, and why they stay.
const USED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "tonic-prost",
        "the gRPC code build.rs generates into OUT_DIR calls its codec",
    ),
    (
        "dialoguer",
        "the confirmation of `power off` (ARCHITECTURE.md) is the next command to land",
    ),
];

#[test]
fn every_dependency_is_used_by_the_library_or_the_binary() {
    let manifest = read(&root().join("Cargo.toml"));
    let deps = dependencies(&manifest, "[dependencies]");
    assert!(deps.len() > 10, "Cargo.toml not understood: {deps:?}");
    // Tests, benches and examples may not be the only users of a normal dependency: those
    // belong in [dev-dependencies].
    let mut sources: Vec<PathBuf> = rust_files(&root().join("src"));
    sources.push(root().join("build.rs"));
    let text: String = sources.iter().map(|p| read(p)).collect();
    let mut unused = Vec::new();
    for (name, _) in &deps {
        if USED_ELSEWHERE.iter().any(|(n, _)| n == name) {
            continue;
        }
        let ident = name.replace('-', "_");
        let used = text.contains(&format!("{ident}::"))
            || text.contains(&format!("use {ident}"))
            || text.contains(&format!("{ident}!"));
        if !used {
            unused.push(name.clone());
        }
    }
    assert!(
        unused.is_empty(),
        "dependencies nothing in src/ uses (remove them, or move them to [dev-dependencies] if only \
         tests need them): {unused:?}"
    );
}

#[test]
fn kube_features_are_the_ones_the_code_needs() {
    let manifest = read(&root().join("Cargo.toml"));
    let kube = dependencies(&manifest, "[dependencies]")
        .into_iter()
        .find(|(n, _)| n == "kube")
        .map(|(_, spec)| spec)
        .unwrap_or_default();
    assert!(kube.contains("\"runtime\""), "{kube}");
    let text: String = rust_files(&root().join("src"))
        .iter()
        .map(|p| read(p))
        .collect();
    // The admission feature brings the webhook types; nothing serves a webhook yet.
    assert_eq!(
        kube.contains("\"admission\""),
        text.contains("admission::"),
        "kube's `admission` feature must be on exactly when the code uses kube::core::admission: {kube}"
    );
}

#[test]
fn comments_name_only_files_inside_the_repository() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        files.extend(rust_files(&root().join(dir)));
    }
    files.push(root().join("build.rs"));
    // Written in pieces so this file does not match itself.
    let outside = [
        ["/work", "/"].concat(),
        ["../", "shared"].concat(),
        ["../", "seeds"].concat(),
        ["../", "team"].concat(),
    ];
    let mut found = Vec::new();
    for file in &files {
        for (i, line) in read(file).lines().enumerate() {
            if line.trim_start().starts_with("//") && outside.iter().any(|p| line.contains(p)) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "comments pointing outside the repository:\n{}",
        found.join("\n")
    );
}
