//! Records the commit the binary is built from, for `confab --version` and the
//! `confab_build_info` metric: `SOURCE_GIT_SHA` when set (an image built without `.git`),
//! else `git rev-parse`, else `unknown`.

use std::{path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_GIT_SHA");
    let sha = std::env::var("SOURCE_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BUILD_GIT_SHA={}", sha.trim());
}

fn from_git() -> Option<String> {
    // Rerun when HEAD moves: a checkout (HEAD) or a commit (the branch's ref).
    let head = Path::new(".git/HEAD");
    if head.is_file() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(text) = std::fs::read_to_string(head)
            && let Some(reference) = text.strip_prefix("ref: ")
        {
            let path = Path::new(".git").join(reference.trim());
            if path.is_file() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !sha.is_empty()).then_some(sha)
}
