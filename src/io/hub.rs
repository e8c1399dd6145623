//! Inputs named the way `huggingface_hub` stores them: a repo id (`ORG/NAME`, optionally
//! `@REVISION`) found in the local Hugging Face cache, resolved to its snapshot folder.
//!
//! lorakit never downloads anything: an id that is not in the cache is an error that says where
//! it looked. The layout and the variables follow `huggingface_hub` (`constants.py`,
//! `file_download.py`): the cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; a model repo lives in
//! `models--ORG--NAME/`, its `refs/REVISION` file holds the commit hash, and
//! `snapshots/COMMIT/` holds the files (symlinks into `blobs/`, which every reader follows).
//! A snapshot folder given as a path needs nothing from here: it is an ordinary model folder.

use crate::error::InputError;
use std::path::{Path, PathBuf};

/// The cache folder `huggingface_hub` uses, from the environment.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("HF_HUB_CACHE") {
        return Some(p);
    }
    if let Some(p) = env("HF_HOME") {
        return Some(p.join("hub"));
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return Some(p.join("huggingface").join("hub"));
    }
    env("HOME").map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// File endings that name a file, not a repo: `out/model.safetensors` that does not exist is a
/// missing file, not a repo to fetch.
const FILE_ENDINGS: &[&str] = &[
    ".safetensors",
    ".gguf",
    ".bin",
    ".json",
    ".pt",
    ".pth",
    ".ckpt",
    ".toml",
    ".txt",
    ".model",
];

/// `ORG/NAME[@REV]` or `NAME[@REV]` → (repo id, revision). Anything that could be a relative
/// path in a sensible spelling (`./x`, `x/`, three components, `..`, a name ending like a file:
/// [`FILE_ENDINGS`]) is not an id.
fn parse_repo_id(s: &str) -> Option<(&str, &str)> {
    let (id, rev) = match s.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (s, "main"),
    };
    let lower = id.to_ascii_lowercase();
    if FILE_ENDINGS.iter().any(|e| lower.ends_with(e)) {
        return None;
    }
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && !p.contains("--")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = id.split('/').collect();
    let rev_ok = !rev.is_empty()
        && !rev.starts_with('.')
        && !rev.contains("..")
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    (parts.len() <= 2 && parts.iter().all(|p| ok_part(p)) && rev_ok).then_some((id, rev))
}

/// Resolves an input argument: an existing path is returned unchanged; otherwise, when the
/// argument reads as a repo id, the snapshot folder of that id in the local cache. An argument
/// that is neither is returned unchanged, so the command's own "no such file" error names it.
pub fn resolve_input(arg: &Path) -> Result<PathBuf, InputError> {
    if arg.exists() || arg.is_symlink() {
        return Ok(arg.to_path_buf());
    }
    let Some((id, rev)) = arg.to_str().and_then(parse_repo_id) else {
        return Ok(arg.to_path_buf());
    };
    let Some(cache) = cache_dir() else {
        return Ok(arg.to_path_buf());
    };
    resolve_in(&cache, id, rev).map_err(|why| {
        InputError::invalid(
            arg,
            format!(
                "no such file or folder, and not in the Hugging Face cache: {why} (lorakit \
                 never downloads; fetch it first, e.g. `huggingface-cli download {id}`, or set \
                 HF_HUB_CACHE / HF_HOME)"
            ),
        )
    })
}

/// The snapshot folder of `id` at `rev` under `cache`, or why there is none.
fn resolve_in(cache: &Path, id: &str, rev: &str) -> Result<PathBuf, String> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    if !repo.is_dir() {
        return Err(format!("{} does not exist", repo.display()));
    }
    let is_commit = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        rev.to_owned()
    } else {
        let r = repo.join("refs").join(rev);
        let text = std::fs::read_to_string(&r)
            .map_err(|e| format!("cannot read revision {rev:?} ({}): {e}", r.display()))?;
        let c = text.trim().to_owned();
        if c.len() != 40 || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
            return Err(format!(
                "{} does not hold a commit hash (read {c:?})",
                r.display()
            ));
        }
        c
    };
    let snap = repo.join("snapshots").join(&commit);
    if !snap.is_dir() {
        return Err(format!(
            "revision {rev:?} is commit {commit}, and {} does not exist",
            snap.display()
        ));
    }
    // A repo holding a single weights file resolves to the folder all the same: every reader
    // takes a model folder.
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths_are_told_apart() {
        assert_eq!(parse_repo_id("org/name"), Some(("org/name", "main")));
        assert_eq!(parse_repo_id("gpt2"), Some(("gpt2", "main")));
        assert_eq!(parse_repo_id("org/name@v1.0"), Some(("org/name", "v1.0")));
        assert_eq!(
            parse_repo_id("org/name@refs/pr/3"),
            Some(("org/name", "refs/pr/3"))
        );
        for not_id in [
            "./x",
            "../x",
            "a/b/c",
            "/abs",
            "x/",
            "org/name@../../x",
            "a--b/c",
            "",
            "org/",
            "hx/typo.safetensors",
            "typo.GGUF",
            "runs/adapter_config.json",
        ] {
            assert_eq!(parse_repo_id(not_id), None, "{not_id}");
        }
    }

    #[test]
    fn a_cache_entry_resolves_by_ref_and_by_commit() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = dir.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let snap = repo.join("snapshots").join(commit);
        assert_eq!(resolve_in(dir.path(), "org/tiny", "main").unwrap(), snap);
        assert_eq!(resolve_in(dir.path(), "org/tiny", commit).unwrap(), snap);
        let e = resolve_in(dir.path(), "org/tiny", "v2").unwrap_err();
        assert!(e.contains("revision \"v2\""), "{e}");
        let e = resolve_in(dir.path(), "org/other", "main").unwrap_err();
        assert!(e.contains("models--org--other"), "{e}");
        std::fs::write(repo.join("refs/main"), "not a hash").unwrap();
        let e = resolve_in(dir.path(), "org/tiny", "main").unwrap_err();
        assert!(e.contains("commit hash"), "{e}");
    }
}
