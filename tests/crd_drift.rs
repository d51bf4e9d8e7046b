//! The committed CRDs under deploy/crds/ and in the Helm chart's files/crds/ are exactly what the
//! Rust types generate. Regenerate with `cargo run -- crd gen --out deploy/crds` and
//! `cargo run -- crd gen --out deploy/helm/kubectl-homelab/files/crds` (or run this test with
//! KUBECTL_HOMELAB_UPDATE_GENERATED=1).
use std::path::PathBuf;

use kubectl_homelab::commands::crd::crd_files;

/// Every CRD file in `dir` (relative to the repository) is what `crd gen --out` writes there,
/// and nothing else is.
fn check_generated_crds(dir: &str) {
    let dir_path = &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let files = crd_files().expect("CRDs render");
    assert_eq!(files.len(), 2, "one file per CRD");
    let update = std::env::var_os("KUBECTL_HOMELAB_UPDATE_GENERATED").is_some();
    let mut stale = vec![];
    for (name, want) in &files {
        let path = dir_path.join(name);
        if update {
            std::fs::create_dir_all(dir_path).expect("create the CRD directory");
            std::fs::write(&path, want).expect("write CRD");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if &have != want {
            stale.push(path.display().to_string());
        }
    }
    // No leftovers from renamed CRDs.
    let mut on_disk: Vec<String> = std::fs::read_dir(dir_path)
        .expect("the CRD directory exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert!(
        stale.is_empty() && on_disk == expected,
        "{dir} is out of date ({stale:?}; on disk {on_disk:?}, expected {expected:?}).\n\
         Regenerate: cargo run -- crd gen --out {dir}   (and delete files no longer generated)"
    );
}

#[test]
fn committed_crds_match_the_types() {
    check_generated_crds("deploy/crds");
}

/// The chart's templates/crds.yaml renders these files (so `helm upgrade` upgrades the CRDs);
/// the chart has no crds/ directory, which Helm would install before the templates and never
/// upgrade.
#[test]
fn helm_chart_crds_match_the_types() {
    check_generated_crds("deploy/helm/kubectl-homelab/files/crds");
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/kubectl-homelab");
    assert!(
        !chart.join("crds").exists(),
        "the chart's crds/ would be installed before templates/crds.yaml, which then fails"
    );
}

#[test]
fn generation_is_deterministic_and_stdout_matches_the_files() {
    let a = kubectl_homelab::operator::api::crds_yaml().expect("yaml");
    let b = kubectl_homelab::operator::api::crds_yaml().expect("yaml");
    assert_eq!(a, b);
    let joined: String = crd_files()
        .expect("files")
        .into_iter()
        .map(|(_, y)| y)
        .collect();
    assert_eq!(
        a, joined,
        "`crd gen` and `crd gen --out` print the same documents"
    );
    // kubectl reads YAML 1.1: on/off must never be plain scalars.
    for line in a.lines() {
        let t = line.trim_start().trim_start_matches("- ");
        for word in ["on", "off"] {
            assert!(
                t != word
                    && !t.starts_with(&format!("{word}:"))
                    && !t.ends_with(&format!(": {word}")),
                "unquoted {word}: {line:?}"
            );
        }
    }
}

/// `kubectl homelab crd gen | head`: the reader goes away after a few lines. The output (80 kB,
/// more than a pipe holds) stops quietly and the command succeeds, as kubectl's does; a bare
/// `print!` would panic with "failed printing to stdout".
#[test]
fn crd_gen_into_a_pipe_closed_early_stops_quietly() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(["crd", "gen"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kubectl-homelab");
    // Closing the read end: every write from now on fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for kubectl-homelab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}
