//! The crate carries no dependency it does not use, and the repository explains itself: no text
//! it ships sends a reader to a file that is not in it, to design notes kept elsewhere, or to
//! work items only its authors know.
use std::collections::BTreeSet;
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
const USED_ELSEWHERE: &[(&str, &str)] = &[(
    "tonic-prost",
    "the gRPC code build.rs generates into OUT_DIR calls its codec",
)];

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

/// Directories of the repository that a path in a text may start with.
const REPO_DIRS: &[&str] = &[
    "src/",
    "tests/",
    "docs/",
    "scripts/",
    "deploy/",
    "examples/",
    "proto/",
    "benches/",
];

/// Extensions of the files a text refers a reader to. A bare name (no `/`) is checked only for
/// the first three: `lab.yaml` or `plug-on.sh` in an example is the reader's own file.
const REFERENCE_EXTENSIONS: &[&str] = &["md", "rs", "proto", "sh", "yaml", "yml"];
const BARE_REFERENCE_EXTENSIONS: &[&str] = &["md", "rs", "proto"];

/// Prefixes of paths that name other projects' files, never ours.
const FOREIGN_PATHS: &[&str] = &["google/protobuf/"];

/// Extensions of the text files checked (and every `Dockerfile`).
const TEXT_EXTENSIONS: &[&str] = &[
    "rs", "proto", "sh", "md", "yaml", "yml", "tpl", "json", "toml", "txt",
];

/// Generated files, checked against their source by their own tests (crd_drift,
/// completions_drift) or written by tools.
const GENERATED: &[&str] = &[
    "Cargo.lock",
    "completions/",
    "deploy/crds/",
    "deploy/helm/kubectl-homelab/files/crds/",
    "deploy/helm/kubectl-homelab/files/ca-crds/",
    "proptest-regressions/",
];

/// Findings that are right where they are: (file, text on the line, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "scripts/test.sh",
        concat!("../sh", "ared/third_party/cluster-autoscaler"),
        "the default location of a Cluster Autoscaler source tree beside the checkout (CI has \
         one there); without it the script clones the release tag",
    ),
    (
        "docs/testing.md",
        concat!("../sh", "ared/third_party/cluster-autoscaler"),
        "documents that default of scripts/test.sh",
    ),
];

/// The files the repository ships, relative to its root: `git ls-files` (tracked, plus new files
/// not ignored), else, without git (an unpacked crate), the tree without `target/` and `.git/`.
fn repository_files() -> Vec<String> {
    let root = root();
    if let Ok(out) = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        && out.status.success()
    {
        let files: BTreeSet<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| root.join(p).is_file())
            .collect();
        if !files.is_empty() {
            return files.into_iter().collect();
        }
    }
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name();
            if name != "target" && name != ".git" {
                walk(root, &path, out);
            }
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn is_checked_text(path: &str) -> bool {
    if GENERATED
        .iter()
        .any(|g| path == *g || (g.ends_with('/') && path.starts_with(g)))
    {
        return false;
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "Dockerfile"
        || name
            .rsplit_once('.')
            .is_some_and(|(_, ext)| TEXT_EXTENSIONS.contains(&ext))
}

/// What the repository holds: its files, their directories and their file names.
struct Repo {
    paths: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Repo {
    fn new(files: &[String]) -> Repo {
        let mut paths = BTreeSet::new();
        let mut names = BTreeSet::new();
        for file in files {
            paths.insert(file.clone());
            names.insert(file.rsplit('/').next().unwrap_or(file).to_owned());
            let mut dir = file.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                paths.insert(parent.to_owned());
                dir = parent;
            }
        }
        Repo { paths, names }
    }

    /// Whether `reference`, written in the file `from`, names a file or directory here: from the
    /// root, from `from`'s directory, or (not starting with a top-level directory) as the end of
    /// a path (`support/world.rs`) or a file name (`README.md`).
    fn resolves(&self, reference: &str, from: &str) -> bool {
        let r = reference.trim_end_matches('/');
        if self.paths.contains(r) {
            return true;
        }
        let dir = from.rsplit_once('/').map_or("", |(d, _)| d);
        if normalize(dir, r).is_some_and(|p| self.paths.contains(&p)) {
            return true;
        }
        if REPO_DIRS.iter().any(|d| reference.starts_with(d)) {
            return false;
        }
        if !r.contains('/') {
            return self.names.contains(r);
        }
        let tail = format!("/{r}");
        self.paths.iter().any(|p| p.ends_with(&tail))
    }
}

/// `rel` joined to `dir`, with `.` and `..` resolved; `None` above the root.
fn normalize(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Runs of characters `keep` accepts, with their byte offsets.
fn runs(line: &str, keep: fn(char) -> bool) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (keep(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

/// The path at `start` in `line` if it is a reference to a file of ours: a path under one of
/// [`REPO_DIRS`], or a file name with one of [`REFERENCE_EXTENSIONS`]. Absolute paths and URLs
/// (`//host/…` after the scheme), patterns and placeholders (`deploy/crds/*.yaml`,
/// `<dir>/x.rs`) and other projects' paths are not.
fn file_reference<'a>(line: &str, start: usize, token: &'a str) -> Option<&'a str> {
    let t = token.trim_end_matches(['.', ',', ':', ';']);
    let next = line[start + token.len()..].chars().next();
    let previous = line[..start].chars().next_back();
    if t.starts_with('/')
        || matches!(next, Some('*' | '<' | '{' | '$'))
        || matches!(previous, Some('*' | '>' | '}' | '$' | '@'))
        || FOREIGN_PATHS.iter().any(|p| t.starts_with(p))
    {
        return None;
    }
    let name = t.rsplit('/').next().unwrap_or(t);
    let extensions = if t.contains('/') {
        REFERENCE_EXTENSIONS
    } else {
        BARE_REFERENCE_EXTENSIONS
    };
    let names_a_file = name
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && extensions.contains(&ext));
    (names_a_file || REPO_DIRS.iter().any(|d| t.starts_with(d))).then_some(t)
}

/// The design notes this project was started from. They are not in the repository: what
/// matters of them is in docs/. Written in pieces so this file does not match itself.
fn note_names() -> Vec<String> {
    [
        ["CA-CON", "TRACT"],
        ["PIT", "FALLS"],
        ["ARCHI", "TECTURE"],
        ["TEST", "ING"],
        ["SIMU", "LATE"],
        ["STY", "LE"],
        ["DEPEN", "DENCIES"],
    ]
    .iter()
    .map(|p| p.concat())
    .collect()
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

/// Names of the notes on `line` (with or without `.md`) that are not a file here.
fn note_references(line: &str, notes: &[String], repo: &Repo) -> Vec<String> {
    let mut out = Vec::new();
    for (start, word) in runs(line, is_word_char) {
        if !notes.iter().any(|n| n == word) {
            continue;
        }
        let named = if line[start + word.len()..].starts_with(".md") {
            format!("{word}.md")
        } else {
            word.to_owned()
        };
        if !repo.names.contains(&named) {
            out.push(named);
        }
    }
    out
}

/// Work items on `line`: "issue N", "item N", "stop N", or "stop" after "last", "this", "next" or
/// "previous": names for pieces of work that only the people who did it know. An upstream issue is fine when the line names where it
/// is (`owner/repo#N`, a github.com URL, or the word "upstream").
fn work_items(line: &str) -> Vec<String> {
    let lower = line.to_ascii_lowercase();
    if lower.contains("upstream") || lower.contains("github.com/") || names_a_repo_issue(&lower) {
        return Vec::new();
    }
    let words = runs(&lower, |c| c.is_ascii_alphanumeric());
    let mut out = Vec::new();
    for (i, &(start, word)) in words.iter().enumerate() {
        let rest = &lower[start + word.len()..];
        let numbered = rest
            .strip_prefix(' ')
            .map(|r| r.strip_prefix('#').unwrap_or(r))
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        let kinds = ["issue", "issues", "item", "items", "stop", "stops"];
        if kinds.contains(&word) && numbered {
            let number: String = rest
                .chars()
                .skip(1)
                .take_while(|c| *c == '#' || c.is_ascii_digit())
                .collect();
            out.push(format!("{word} {number}"));
        }
        let before = i.checked_sub(1).map(|j| words[j].1);
        if word == "stop" && matches!(before, Some("last" | "this" | "next" | "previous")) {
            out.push(format!("{} stop", before.unwrap_or_default()));
        }
    }
    out
}

/// Whether `lower` has `owner/repo#N`.
fn names_a_repo_issue(lower: &str) -> bool {
    lower.match_indices('#').any(|(i, _)| {
        let after_is_digit = lower[i + 1..].starts_with(|c: char| c.is_ascii_digit());
        let before: String = lower[..i]
            .chars()
            .rev()
            .take_while(|c| is_path_char(*c))
            .collect();
        after_is_digit && before.contains('/')
    })
}

#[test]
fn texts_refer_only_to_what_the_repository_holds() {
    let files = repository_files();
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "repository files not found: {files:?}"
    );
    let repo = Repo::new(&files);
    let notes = note_names();
    // Written in pieces so this file does not match itself.
    let outside = [
        ["/wo", "rk/"].concat(),
        ["../", "shared"].concat(),
        ["../", "seeds"].concat(),
        ["../", "team"].concat(),
    ];
    let mut found = Vec::new();
    let mut checked = 0;
    for file in files.iter().filter(|f| is_checked_text(f)) {
        let Ok(text) = std::fs::read_to_string(root().join(file)) else {
            continue;
        };
        checked += 1;
        for (i, line) in text.lines().enumerate() {
            let mut report = |what: &str, text: &str| {
                if !ALLOWED
                    .iter()
                    .any(|(f, t, _)| f == file && line.contains(t))
                {
                    found.push(format!(
                        "{file}:{}: {what} `{text}`: {}",
                        i + 1,
                        line.trim()
                    ));
                }
            };
            for (start, token) in runs(line, is_path_char) {
                if let Some(path) = file_reference(line, start, token)
                    && !repo.resolves(path, file)
                {
                    report("no such file in the repository", path);
                }
            }
            for p in outside.iter().filter(|p| line.contains(p.as_str())) {
                report("a path outside the repository", p.as_str());
            }
            for note in note_references(line, &notes, &repo) {
                report("a design note that is not in the repository", note.as_str());
            }
            for item in work_items(line) {
                report("a work item", item.as_str());
            }
        }
    }
    assert!(checked > 50, "only {checked} text files checked");
    assert!(
        found.is_empty(),
        "texts that send a reader outside the repository. Point at the file that holds it now \
         (docs/ has the contract, architecture, pitfalls and testing), say in a line what the \
         reference meant, or name the upstream repository of an issue:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reference_checks_find_what_they_are_for() {
    let repo = Repo::new(&[
        "README.md".to_owned(),
        "docs/ca-contract.md".to_owned(),
        "tests/support/world.rs".to_owned(),
    ]);
    let refs = |line: &str| -> Vec<String> {
        runs(line, is_path_char)
            .into_iter()
            .filter_map(|(s, t)| file_reference(line, s, t))
            .filter(|p| !repo.resolves(p, "tests/hygiene.rs"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        refs("see docs/ca-contract.md, rule 7."),
        Vec::<String>::new()
    );
    assert_eq!(
        refs("(support/world.rs) and ../README.md"),
        Vec::<String>::new()
    );
    // Written in pieces so this file does not match itself.
    let (gone, nowhere) = (["docs", "/gone.md"].concat(), ["src", "/nowhere/"].concat());
    assert_eq!(
        refs(&format!("see {gone} and {nowhere}")),
        [gone.as_str(), nowhere.as_str()]
    );
    let gone_rs = ["gone", ".rs"].concat();
    assert_eq!(
        refs(&format!("{gone_rs}, deploy/crds/*.yaml, lab.yaml")),
        [gone_rs.as_str()]
    );
    assert_eq!(
        refs("https://github.com/a/b/tests/x.rs"),
        Vec::<String>::new()
    );

    let notes = note_names();
    let n = ["PIT", "FALLS"].concat();
    assert_eq!(
        note_references(&format!("({n} 6)"), &notes, &repo),
        [n.as_str()]
    );
    assert!(note_references(&format!("MY_{n}_X"), &notes, &repo).is_empty());

    let (issue, item, stp) = (
        ["iss", "ue"].concat(),
        ["it", "em"].concat(),
        ["st", "op"].concat(),
    );
    assert_eq!(
        work_items(&format!("({issue} 11 {item} 0)")),
        [format!("{issue} 11"), format!("{item} 0")]
    );
    assert_eq!(
        work_items(&format!("the last {stp}'s build")),
        [format!("last {stp}")]
    );
    assert!(work_items(&format!("upstream {issue} #10245")).is_empty());
    assert!(work_items(&format!("kubernetes/autoscaler#10245, {issue} 5")).is_empty());
    assert!(work_items("it stops the pods; items are listed").is_empty());
}
