//! The committed completion scripts under completions/ are what the CLI generates.
//! Regenerate with, for each target, `cargo run -- completion bash > completions/kubectl-homelab.bash`
//! (zsh → `_kubectl-homelab`, fish → `kubectl-homelab.fish`, kubectl → `kubectl_complete-homelab`,
//! executable), or run this test with KUBECTL_HOMELAB_UPDATE_GENERATED=1.
use std::path::PathBuf;

use kubectl_homelab::commands::completion::{Target, script};

#[test]
fn committed_completions_match_the_cli() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("completions");
    let update = std::env::var_os("KUBECTL_HOMELAB_UPDATE_GENERATED").is_some();
    let mut stale = vec![];
    for target in Target::ALL {
        let path = dir.join(target.file_name());
        let want = script(target);
        assert!(!want.is_empty());
        if update {
            std::fs::create_dir_all(&dir).expect("create completions/");
            std::fs::write(&path, &want).expect("write script");
            continue;
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != want {
            stale.push(format!(
                "{} (kubectl homelab completion {target:?})",
                path.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "completions/ is out of date: {stale:?}.\nRegenerate: KUBECTL_HOMELAB_UPDATE_GENERATED=1 cargo test --test completions_drift"
    );
}

#[cfg(unix)]
#[test]
fn kubectl_plugin_completion_script_is_executable() {
    use std::os::unix::fs::PermissionsExt as _;
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("completions/kubectl_complete-homelab");
    let mode = std::fs::metadata(&path)
        .expect("script exists")
        .permissions()
        .mode();
    assert!(
        mode & 0o111 != 0,
        "{} must be executable (chmod +x)",
        path.display()
    );
}
