//! The release artifacts: scripts/release.sh's archives and the krew manifest it writes
//! (plugins/homelab.yaml), the LICENSE they carry, and the Dockerfile's per-architecture build.
//! Checked with krew's own tools (validate-krew-manifest and krew, built by
//! tests/k8s-bins/build.sh) and /usr/bin/kubectl.
//!
//! The dry runs here pack the binary this test run built (the host's, linux/amd64, stripped of its
//! debug sections) under every platform's name: they check the packaging, the manifest and krew's install of each platform
//! entry, not that a linux/arm64 or darwin binary exists or runs.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, ensure};
use support::helm::{KUBECTL, repo, tool};

const PLATFORMS: [&str; 4] = ["linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64"];
const BIN: &str = env!("CARGO_BIN_EXE_kubectl-homelab");

/// The binary the dry runs pack, written into `dir`: the test-built kubectl-homelab without its
/// debug sections (`strip`: 160 MB of line tables make packing and krew's download take
/// minutes), or a copy as built where `strip` is missing.
fn packed_binary(dir: &Path) -> anyhow::Result<PathBuf> {
    let packed = dir.join("kubectl-homelab");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&packed)
        .arg(BIN)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(BIN, &packed)?;
    }
    Ok(packed)
}

fn version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

fn archive_name(platform: &str) -> String {
    let (os, arch) = platform.split_once('/').unwrap_or((platform, ""));
    format!("kubectl-homelab_{}_{os}_{arch}.tar.gz", version())
}

/// scripts/release.sh with `args`, from the repository.
fn release(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(repo().join("scripts/release.sh"))
        .args(args)
        .current_dir(repo())
        .output()
        .context("running scripts/release.sh")
}

/// `release.sh --dry-run` packing `binary` as every platform into `out`.
fn dry_run(out: &Path, base_url: Option<&str>, binary: &Path) -> anyhow::Result<()> {
    let out_arg = out.display().to_string();
    let mut args = vec!["--dry-run".to_owned(), "--out".to_owned(), out_arg];
    if let Some(url) = base_url {
        args.extend(["--base-url".to_owned(), url.to_owned()]);
    }
    for p in PLATFORMS {
        args.extend(["--binary".to_owned(), format!("{p}={}", binary.display())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = release(&args)?;
    ensure!(
        run.status.success(),
        "release.sh --dry-run failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(stdout.lines().last(), Some(out_arg_str(out).as_str()));
    Ok(())
}

fn out_arg_str(out: &Path) -> String {
    out.canonicalize()
        .unwrap_or_else(|_| out.to_path_buf())
        .display()
        .to_string()
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum {}", path.display());
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_owned())
}

/// Each platform's (uri, sha256) in a manifest, by "os/arch" of the selector above them.
fn platform_entries(manifest: &str) -> BTreeMap<String, (String, String)> {
    let (mut os, mut arch, mut uri) = (String::new(), String::new(), String::new());
    let mut entries = BTreeMap::new();
    for line in manifest.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("os: ") {
            os = v.to_owned();
        } else if let Some(v) = line.strip_prefix("arch: ") {
            arch = v.to_owned();
        } else if let Some(v) = line.strip_prefix("uri: ") {
            uri = v.to_owned();
        } else if let Some(v) = line.strip_prefix("sha256: ") {
            entries.insert(
                format!("{os}/{arch}"),
                (uri.clone(), v.trim_matches('"').to_owned()),
            );
        }
    }
    entries
}

/// What a dry run must not touch: git's view of the working tree and the manifest's bytes.
fn repository_state() -> anyhow::Result<(String, Vec<u8>, bool)> {
    let status = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=all"])
        .current_dir(repo())
        .output()?;
    Ok((
        String::from_utf8(status.stdout)?,
        std::fs::read(repo().join("plugins/homelab.yaml"))?,
        repo().join("target/dist").exists(),
    ))
}

/// A dry run writes one archive per platform holding exactly kubectl-homelab (the binary
/// given), kubectl_complete-homelab (completions/) and LICENSE, the first two executable; the
/// manifest it writes carries the archives' sha256 (and the .sha256 files agree), differs from
/// plugins/homelab.yaml only in the uri and sha256 lines, and the repository is unchanged.
/// The binary packed under every name is this host's: this checks packaging only.
#[test]
fn a_dry_run_packs_the_three_files_per_platform_and_leaves_the_repository_untouched()
-> anyhow::Result<()> {
    let before = repository_state()?;
    let dir = tempfile::tempdir()?;
    let bin = tempfile::tempdir()?;
    let binary = packed_binary(bin.path())?;
    dry_run(dir.path(), None, &binary)?;
    assert_eq!(
        repository_state()?,
        before,
        "the dry run changed the repository"
    );

    let written = std::fs::read_to_string(dir.path().join("homelab.yaml"))?;
    let committed = std::fs::read_to_string(repo().join("plugins/homelab.yaml"))?;
    let entries = platform_entries(&written);
    assert_eq!(
        entries.keys().collect::<Vec<_>>(),
        ["darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"]
    );
    for p in PLATFORMS {
        let name = archive_name(p);
        let archive = dir.path().join(&name);
        let (uri, sum) = &entries[p];
        assert_eq!(
            uri,
            &format!(
                "https://github.com/homecluster-dev/kubectl-homelab/releases/download/{}/{name}",
                version()
            )
        );
        assert_eq!(sum, &sha256(&archive)?, "{p}: manifest sha256");
        let sidecar = std::fs::read_to_string(dir.path().join(format!("{name}.sha256")))?;
        assert_eq!(sidecar, format!("{sum}  {name}\n"));

        let listing = Command::new("tar").arg("-tzf").arg(&archive).output()?;
        ensure!(listing.status.success(), "tar -tzf {name}");
        let mut names: Vec<String> = String::from_utf8(listing.stdout)?
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["LICENSE", "kubectl-homelab", "kubectl_complete-homelab"],
            "{p}"
        );
        let x = tempfile::tempdir()?;
        let extract = Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(x.path())
            .output()?;
        ensure!(extract.status.success(), "tar -xzf {name}");
        let mode = |f: &str| -> anyhow::Result<u32> {
            Ok(std::fs::metadata(x.path().join(f))?.permissions().mode() & 0o777)
        };
        assert_eq!(mode("kubectl-homelab")?, 0o755, "{p}");
        assert_eq!(mode("kubectl_complete-homelab")?, 0o755, "{p}");
        assert_eq!(mode("LICENSE")?, 0o644, "{p}");
        assert!(std::fs::read(x.path().join("kubectl-homelab"))? == std::fs::read(&binary)?);
        assert_eq!(
            std::fs::read(x.path().join("kubectl_complete-homelab"))?,
            std::fs::read(repo().join("completions/kubectl_complete-homelab"))?
        );
        assert_eq!(
            std::fs::read(x.path().join("LICENSE"))?,
            std::fs::read(repo().join("LICENSE"))?
        );
    }

    // Only the uri and sha256 lines differ (the version is the crate's already).
    let (a, b): (Vec<&str>, Vec<&str>) = (committed.lines().collect(), written.lines().collect());
    assert_eq!(a.len(), b.len());
    for (old, new) in a.iter().zip(&b) {
        if old != new {
            let key = old.trim_start().split(':').next().unwrap_or_default();
            assert!(key == "uri" || key == "sha256", "{old} -> {new}");
        }
    }
    Ok(())
}

/// The committed manifest names the crate's version in spec.version and every uri, and its
/// sha256 values are the all-zero placeholders its header says a release run replaces.
#[test]
fn the_committed_manifest_is_the_crates_version_with_placeholder_sums() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo().join("plugins/homelab.yaml"))?;
    assert!(text.contains(&format!("\n  version: {}\n", version())));
    let entries = platform_entries(&text);
    assert_eq!(entries.len(), 4);
    for (p, (uri, sum)) in &entries {
        assert!(
            uri.ends_with(&format!("/{}/{}", version(), archive_name(p))),
            "{uri}"
        );
        assert_eq!(sum, &"0".repeat(64), "{p}");
    }
    assert!(text.contains("placeholders"), "the header says so");
    Ok(())
}

/// A release run (no --dry-run) refuses, before building or writing anything, a platform it can
/// get no binary for, naming each such platform; and a --binary that is not that platform's
/// (this host's ELF binary given as darwin/arm64).
#[test]
fn a_release_run_refuses_platforms_without_a_binary_before_building() -> anyhow::Result<()> {
    let before = repository_state()?;
    // The darwin platforms are never built here, so a run without --binary always misses them.
    let run = release(&["--binary", &format!("linux/amd64={BIN}")])?;
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("cannot get a binary for every platform"),
        "{err}"
    );
    for p in ["darwin/amd64", "darwin/arm64"] {
        assert!(err.contains(&format!("--binary {p}=PATH")), "{err}");
    }
    assert!(!err.contains("[release] building"), "{err}");

    let run = release(&["--binary", &format!("darwin/arm64={BIN}")])?;
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("not darwin/arm64"), "{err}");
    assert_eq!(
        repository_state()?,
        before,
        "a refused run changed the repository"
    );
    Ok(())
}

/// The start of a binary for `platform` as release.sh reads it: an ELF (e_machine at byte 18)
/// or Mach-O 64-bit (cputype at byte 4) header, the rest zeros. Not a runnable program.
fn fake_binary(path: &Path, platform: &str) -> anyhow::Result<()> {
    let mut header = vec![0u8; 64];
    match platform {
        "linux/amd64" | "linux/arm64" => {
            header[..4].copy_from_slice(b"\x7fELF");
            let machine: u16 = if platform == "linux/amd64" { 62 } else { 183 };
            header[18..20].copy_from_slice(&machine.to_le_bytes());
        }
        _ => {
            header[..4].copy_from_slice(&[0xcf, 0xfa, 0xed, 0xfe]);
            let cpu: u32 = if platform == "darwin/amd64" {
                0x0100_0007
            } else {
                0x0100_000c
            };
            header[4..8].copy_from_slice(&cpu.to_le_bytes());
        }
    }
    std::fs::write(path, header)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A release run given a binary of the right kind for every platform (headers only, so nothing
/// is built) writes the archives to --out and rewrites the manifest in place: each uri and
/// sha256 of its platform's archive. Run on a copy of the files the script reads, so the
/// repository's manifest stays as committed.
#[test]
fn a_release_run_rewrites_the_manifest_in_place() -> anyhow::Result<()> {
    let copy = tempfile::tempdir()?;
    for f in [
        "scripts/release.sh",
        "Cargo.toml",
        "plugins/homelab.yaml",
        "completions/kubectl_complete-homelab",
        "LICENSE",
    ] {
        let to = copy.path().join(f);
        std::fs::create_dir_all(to.parent().context("a parent")?)?;
        std::fs::copy(repo().join(f), &to)?;
    }
    let bins = tempfile::tempdir()?;
    let out = copy.path().join("out");
    let mut args = vec!["--out".to_owned(), out.display().to_string()];
    for p in PLATFORMS {
        let path = bins.path().join(p.replace('/', "-"));
        fake_binary(&path, p)?;
        args.extend(["--binary".to_owned(), format!("{p}={}", path.display())]);
    }
    let run = Command::new(copy.path().join("scripts/release.sh"))
        .args(&args)
        .current_dir(copy.path())
        .output()?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest = std::fs::read_to_string(copy.path().join("plugins/homelab.yaml"))?;
    let entries = platform_entries(&manifest);
    assert_eq!(entries.len(), 4);
    for p in PLATFORMS {
        let (uri, sum) = &entries[p];
        assert!(
            uri.ends_with(&format!("/{}/{}", version(), archive_name(p))),
            "{uri}"
        );
        assert_eq!(sum, &sha256(&out.join(archive_name(p)))?, "{p}");
    }
    assert!(
        !out.join("homelab.yaml").exists(),
        "the manifest is written in place only"
    );
    Ok(())
}

/// krew's own validator accepts plugins/homelab.yaml (structure, platforms for linux and
/// darwin on amd64 and arm64, no overlapping selectors) and refuses a broken copy of it. It
/// does not install (the committed manifest's archives are not published): the next test
/// installs a dry run's.
#[test]
fn krew_validates_the_plugin_manifest() -> anyhow::Result<()> {
    let Some(validator) = tool("validate-krew-manifest")? else {
        return Ok(());
    };
    let manifest = repo().join("plugins/homelab.yaml");
    let validate = |path: &Path| -> anyhow::Result<Output> {
        Command::new(&validator)
            .arg("--manifest")
            .arg(path)
            .arg("--skip-install")
            .output()
            .context("running validate-krew-manifest")
    };
    let out = validate(&manifest)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&manifest)?;
    for platform in ["os: linux", "os: darwin", "arch: amd64", "arch: arm64"] {
        assert!(text.contains(platform), "{platform}");
    }
    assert_eq!(text.matches("- selector:").count(), 4);
    assert!(text.contains("caveats:"));

    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("homelab.yaml");
    std::fs::write(&broken, text.replacen("bin: kubectl-homelab", "bin: ''", 1))?;
    let out = validate(&broken)?;
    assert!(!out.status.success(), "a platform without bin was accepted");
    Ok(())
}

/// Serves the files of `dir` over HTTP on 127.0.0.1 (GET only, one request per connection)
/// for as long as the test process runs; returns the base URL.
fn serve(dir: PathBuf) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Read the headers up to the blank line before answering.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let file = dir.join(path.trim_start_matches('/'));
            let reply = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend(body);
                    r
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&reply);
        }
    });
    Ok(url)
}

/// The manifest a dry run writes, with its uris on a loopback HTTP server holding the dry run's
/// archives, installs with krew: validate-krew-manifest without --skip-install runs `kubectl
/// krew install --manifest` once per platform entry (KREW_OS/KREW_ARCH set to it), which
/// downloads the archive, checks its sha256, and the validator finds LICENSE installed. Then a
/// linux/amd64 install into a fresh KREW_ROOT has krew's layout: `bin/kubectl-homelab` linked
/// to the store's copy, which kubectl runs as `kubectl homelab`, the store directory holding
/// kubectl_complete-homelab and LICENSE beside it, and the caveats printed. krew links only the
/// `bin` onto PATH: kubectl completes `kubectl homelab` once kubectl_complete-homelab is linked
/// there too.
/// Every platform entry carries this host's binary: krew installs by name and sha256, so this
/// checks the entries and archives, not the other platforms' binaries.
#[test]
fn krew_installs_every_platform_entry_of_a_dry_run_manifest() -> anyhow::Result<()> {
    let Some(validator) = tool("validate-krew-manifest")? else {
        return Ok(());
    };
    let Some(krew) = tool("krew")? else {
        return Ok(());
    };
    if !Path::new(KUBECTL).exists() {
        ensure!(
            std::env::var(support::assets::REQUIRE_ENV).as_deref() != Ok("1"),
            "{KUBECTL} is missing"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("dist");
    std::fs::create_dir(&out)?;
    let url = serve(out.clone())?;
    let binary = packed_binary(dir.path())?;
    dry_run(&out, Some(&url), &binary)?;
    let manifest = out.join("homelab.yaml");

    // kubectl finds krew as the plugin `kubectl-krew` on PATH.
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools)?;
    std::os::unix::fs::symlink(&krew, tools.join("kubectl-krew"))?;
    std::os::unix::fs::symlink(KUBECTL, tools.join("kubectl"))?;
    let path = format!("{}:/usr/bin:/bin", tools.display());

    let validated = Command::new(&validator)
        .arg("--manifest")
        .arg(&manifest)
        .env("PATH", &path)
        .output()
        .context("running validate-krew-manifest")?;
    let log = String::from_utf8_lossy(&validated.stderr);
    assert!(validated.status.success(), "{log}");
    assert!(log.contains("all 4 spec.platforms installed fine"), "{log}");

    let root = dir.path().join("krew");
    let installed = Command::new(&krew)
        .args(["install", "--manifest"])
        .arg(&manifest)
        .env_clear()
        .env("KREW_ROOT", &root)
        .env("KREW_OS", "linux")
        .env("KREW_ARCH", "amd64")
        .env("PATH", &path)
        .output()
        .context("kubectl krew install")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr)
    );
    assert!(installed.status.success(), "{text}");
    let store = root.join("store/homelab").join(version());
    for f in ["kubectl-homelab", "kubectl_complete-homelab", "LICENSE"] {
        assert!(store.join(f).is_file(), "{f} in {}", store.display());
    }
    let link = root.join("bin/kubectl-homelab");
    assert_eq!(
        std::fs::read_link(&link)?.canonicalize()?,
        store.join("kubectl-homelab").canonicalize()?
    );
    let help = Command::new(KUBECTL)
        .args(["homelab", "--help"])
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", root.join("bin").display()),
        )
        .env_remove("KUBECONFIG")
        .output()?;
    let help_text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{help_text}");
    assert!(help_text.contains("Usage: kubectl homelab"), "{help_text}");
    // The caveats are shown after the install.
    assert!(text.contains("kubectl homelab simulate"), "{text}");

    // kubectl completes `kubectl homelab ...` through kubectl_complete-homelab on PATH, which
    // krew leaves in the store: without it kubectl offers nothing of ours; linked next to the
    // plugin (what the README tells krew users to do), it completes our subcommands.
    let complete = || -> anyhow::Result<String> {
        let out = Command::new(KUBECTL)
            .args(["__complete", "homelab", "run-op"])
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", root.join("bin").display()),
            )
            .env_remove("KUBECONFIG")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let before = complete()?;
    assert!(!before.contains("run-operator"), "{before}");
    std::os::unix::fs::symlink(
        store.join("kubectl_complete-homelab"),
        root.join("bin/kubectl_complete-homelab"),
    )?;
    let after = complete()?;
    assert!(
        after.lines().any(|l| l.starts_with("run-operator")),
        "{after}"
    );
    Ok(())
}

/// The Dockerfile's build-stage `RUN` line that builds the binary, continuation lines joined.
fn dockerfile_build_command(dockerfile: &str) -> Option<String> {
    let mut command: Option<String> = None;
    for line in dockerfile.lines() {
        match &mut command {
            None if line.starts_with("RUN ") && line.contains("TARGETARCH") => {
                command = Some(line.trim_start_matches("RUN ").to_owned());
            }
            None => {}
            Some(c) => {
                if !c.ends_with('\\') {
                    break;
                }
                c.pop();
                c.push_str(line);
            }
        }
        if command.as_deref().is_some_and(|c| !c.ends_with('\\')) {
            break;
        }
    }
    command
}

/// The Dockerfile builds for linux/amd64 and linux/arm64 from one file: its build stage's `RUN`
/// line, run by `sh` here with `cargo` and `cp` replaced by functions that print their
/// arguments, builds the release binary for the static musl target of buildx's TARGETARCH (the
/// stage's `uname -m` when it is unset) and refuses another architecture; the image stays
/// distroless/static as user 65532. No image is built by this test; the amd64 cargo command is
/// the one `KUBECTL_HOMELAB_STATIC_BUILD=1 scripts/test.sh` runs.
#[test]
fn the_dockerfile_builds_amd64_and_arm64_musl_binaries() -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile"))?;
    assert!(dockerfile.contains("\nARG TARGETARCH\n"), "{dockerfile}");
    assert!(dockerfile.contains("FROM gcr.io/distroless/static"));
    assert!(dockerfile.contains("\nUSER 65532:65532\n"));
    let command = dockerfile_build_command(&dockerfile).context("the RUN line with TARGETARCH")?;
    let run = |arch: &str| -> anyhow::Result<Output> {
        let script =
            format!("cargo() {{ echo \"cargo $*\"; }}; cp() {{ echo \"cp $*\"; }}; {command}");
        Ok(Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("TARGETARCH", arch)
            .output()?)
    };
    for (arch, target) in [
        ("amd64", "x86_64-unknown-linux-musl"),
        ("arm64", "aarch64-unknown-linux-musl"),
    ] {
        let out = run(arch)?;
        assert!(out.status.success(), "{arch}: {out:?}");
        assert_eq!(
            String::from_utf8(out.stdout)?,
            format!(
                "cargo build --release --locked --target {target} --bin kubectl-homelab\n\
                 cp target/{target}/release/kubectl-homelab /kubectl-homelab\n"
            ),
            "{arch}"
        );
    }
    let out = run("s390x")?;
    assert!(!out.status.success(), "another architecture was accepted");
    // The same target names as release.sh's platforms.
    let script = std::fs::read_to_string(repo().join("scripts/release.sh"))?;
    assert!(script.contains("linux/amd64) echo x86_64-unknown-linux-musl ;;"));
    assert!(script.contains("linux/arm64) echo aarch64-unknown-linux-musl ;;"));
    Ok(())
}

/// LICENSE is the Apache License 2.0 the crate declares.
#[test]
fn the_license_is_the_crates() -> anyhow::Result<()> {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let text = std::fs::read_to_string(repo().join("LICENSE"))?;
    assert!(text.contains("Apache License"));
    assert!(text.contains("Version 2.0, January 2004"));
    assert!(text.contains("END OF TERMS AND CONDITIONS"));
    Ok(())
}
