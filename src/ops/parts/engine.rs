//! The generic engine of `--part I/N` (see [`super`]): part manifests, writing and finding
//! them, and [`finalize_parts`], which checks that the N parts are one run and lets the output
//! ([`SplitOutput`]) check and finish its files; with the helpers every split output shares
//! (plain names, part arguments, input stamps).
//!
//! Must not know an output's plan or files (that is each [`SplitOutput`]).

use crate::error::{InputError, InputResult};
use crate::io::writer::LockMode;
use crate::io::Output;
use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What one part wrote, with the whole plan: the manifest of part `part` of `parts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartManifest<P, W> {
    pub version: u32,
    pub part: usize,
    pub parts: usize,
    pub plan: P,
    pub written: Vec<W>,
}

impl<P: Serialize, W: Serialize> PartManifest<P, W> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("json");
        v.push(b'\n');
        v
    }
}

/// An output that `--part I/N` splits by files: what differs between outputs, for
/// [`finalize_parts`], [`write_manifest`] and [`planned_writes`].
pub trait SplitOutput {
    /// The whole output, identical in every part's manifest of one run.
    type Plan: Serialize + DeserializeOwned + Clone + PartialEq;
    /// What a manifest records of each file its part wrote.
    type Written: Serialize + DeserializeOwned + Clone;
    /// What `finalize` reports.
    type Report;
    /// The manifest version this lorakit writes (and the only one it reads).
    const VERSION: u32;

    /// The output as the user names it: a folder, or the first file's path. Errors about the
    /// set of parts name it, and `finalize` locks it.
    fn out(&self) -> &Path;
    /// The folder holding the output files and the manifests.
    fn dir(&self) -> PathBuf;
    /// The manifests' file-name prefix (`.lorakit-part-`): part `i` of `n` is
    /// `{prefix}{i}-of-{n}.json` in [`Self::dir`].
    fn manifest_prefix(&self) -> String;
    /// The error when [`Self::dir`] holds no manifest.
    fn none_found(&self) -> InputError;
    /// The planned files' names, in plan order.
    fn planned_files(plan: &Self::Plan) -> Vec<&str>;
    /// The file name a written record holds.
    fn written_name(w: &Self::Written) -> &str;
    /// The size planned file `j` must have: the plan's, or what its owner `m` recorded
    /// (`None`: the owner records no such file).
    fn planned_bytes(
        plan: &Self::Plan,
        j: usize,
        m: &PartManifest<Self::Plan, Self::Written>,
    ) -> Option<u64>;
    /// Refuses the names of the plan other than the planned files (an index, copied files)
    /// that could reach outside the output folder ([`unsafe_name`]).
    fn check_names(path: &Path, plan: &Self::Plan) -> InputResult<()>;
    /// Refuses a set of parts whose inputs changed since (checked before the files).
    fn check_inputs(&self, _manifest: &Path, _plan: &Self::Plan) -> Result<()> {
        Ok(())
    }
    /// The rest of `finalize` once every planned file is there with its size (`bytes` in all;
    /// `first` is part 1's manifest at `manifest`): the contents checked against the plan, the last files staged in `output` (committed by
    /// [`finalize_parts`], which then removes the manifests).
    fn finish(
        &self,
        manifest: &Path,
        first: &PartManifest<Self::Plan, Self::Written>,
        output: &mut Output,
        bytes: u64,
    ) -> Result<Self::Report>;
}

/// The manifest file of part `i` of `n` under `prefix` (see [`SplitOutput::manifest_prefix`]).
pub fn manifest_file(prefix: &str, i: usize, n: usize) -> String {
    format!("{prefix}{i}-of-{n}.json")
}

/// The manifest path of part `i` of `n` of `k`.
pub fn manifest_path<K: SplitOutput>(k: &K, i: usize, n: usize) -> PathBuf {
    k.dir().join(manifest_file(&k.manifest_prefix(), i, n))
}

/// The manifests of `k`, sorted by name.
pub fn find_manifests<K: SplitOutput>(k: &K) -> Vec<PathBuf> {
    files_named(&k.dir(), &k.manifest_prefix(), ".json")
}

/// The files a run of `k` writes, and what `--part I/N` keeps of them: the planned `files`,
/// plus the manifest with a part.
pub fn planned_writes<K: SplitOutput>(
    k: &K,
    files: &[PathBuf],
    part: Option<(usize, usize)>,
) -> Vec<PathBuf> {
    let mut v = files.to_vec();
    if let Some((i, n)) = part {
        v.push(manifest_path(k, i, n));
    }
    v
}

/// Stages part `i` of `n`'s manifest in `output`: the whole `plan` and what it `written`.
pub fn write_manifest<K: SplitOutput>(
    k: &K,
    output: &mut Output,
    (i, n): (usize, usize),
    plan: K::Plan,
    written: Vec<K::Written>,
) -> InputResult<()> {
    let m = PartManifest {
        version: K::VERSION,
        part: i,
        parts: n,
        plan,
        written,
    };
    output.small_file(&manifest_path(k, i, n), &m.to_bytes())
}

/// The error for a manifest naming `name` (as `what`), which is no plain name inside the
/// output folder.
pub fn unsafe_name(path: &Path, what: &str, name: &str) -> InputError {
    InputError::invalid(
        path,
        format!(
            "{what} {name:?} is not a plain file name inside the output folder; the manifest is not lorakit's or was edited"
        ),
    )
}

type Manifests<K> = Vec<(
    PathBuf,
    PartManifest<<K as SplitOutput>::Plan, <K as SplitOutput>::Written>,
)>;

/// One manifest of `k`, its version and names checked.
fn read_manifest<K: SplitOutput>(p: &Path) -> Result<PartManifest<K::Plan, K::Written>> {
    let text = crate::io::read_json_file(p)?;
    let m: PartManifest<K::Plan, K::Written> = serde_json::from_slice(&text)
        .map_err(|e| InputError::invalid(p, format!("not a lorakit part manifest: {e}")))?;
    if m.version != K::VERSION {
        bail!(InputError::invalid(
            p,
            format!(
                "part manifest version {} (this lorakit writes {}): rerun the parts",
                m.version,
                K::VERSION
            )
        ));
    }
    for f in K::planned_files(&m.plan) {
        if !is_plain_name(f) {
            bail!(unsafe_name(p, "planned file", f));
        }
    }
    for w in &m.written {
        if !is_plain_name(K::written_name(w)) {
            bail!(unsafe_name(p, "written file", K::written_name(w)));
        }
    }
    K::check_names(p, &m.plan)?;
    Ok(m)
}

/// The error for the part at `p` (part `part` of `parts`) when it is not of the same run as the
/// part at `first` (other inputs, flags or input files): one wording for every split output.
pub fn other_run(p: &Path, (part, parts): (usize, usize), first: &Path) -> InputError {
    InputError::invalid(
        p,
        format!(
            "part {part}/{parts} belongs to another run than {} (different inputs, flags or input files since); rerun the parts with the same flags",
            first.display()
        ),
    )
}

/// Every manifest of `k`, sorted by part, checked to be the N parts of one run.
fn read_parts<K: SplitOutput>(k: &K) -> Result<Manifests<K>> {
    let paths = find_manifests(k);
    if paths.is_empty() {
        bail!(k.none_found());
    }
    let mut manifests = Vec::new();
    for p in paths {
        let m = read_manifest::<K>(&p)?;
        manifests.push((p, m));
    }
    manifests.sort_by_key(|(_, m)| m.part);
    let (first_path, first) = &manifests[0];
    let n = first.parts;
    if n == 0 || n > MAX_PARTS {
        bail!(InputError::invalid(
            first_path,
            format!("records {n} parts; a run has 1 to {MAX_PARTS}")
        ));
    }
    let mut seen = vec![false; n];
    for (p, m) in &manifests {
        if m.parts != n || m.plan != first.plan {
            bail!(other_run(p, (m.part, m.parts), first_path));
        }
        if m.part == 0 || m.part > n || std::mem::replace(&mut seen[m.part - 1], true) {
            bail!(InputError::invalid(
                p,
                format!("part {}/{n} is out of range or twice", m.part)
            ));
        }
    }
    let missing: Vec<usize> = (1..=n).filter(|i| !seen[i - 1]).collect();
    if !missing.is_empty() {
        const SHOWN: usize = 20;
        let mut list: Vec<String> = missing
            .iter()
            .take(SHOWN)
            .map(|i| format!("{i}/{n}"))
            .collect();
        if missing.len() > SHOWN {
            list.push(format!("… ({} in all)", missing.len()));
        }
        bail!(InputError::invalid(
            k.out(),
            format!("parts not finished: {}", list.join(", "))
        ));
    }
    Ok(manifests)
}

/// Joins the parts of `k`: every manifest read and checked (module doc), the output locked,
/// every planned file checked for its size, then [`SplitOutput::finish`]; its files are
/// committed and the manifests removed.
pub fn finalize_parts<K: SplitOutput>(k: &K) -> Result<K::Report> {
    let manifests = read_parts(k)?;
    let (first_path, first) = &manifests[0];
    let (plan, n) = (&first.plan, first.parts);
    k.check_inputs(first_path, plan)?;
    let mut output = Output::new();
    // Parts write side by side under a shared lock; finalize takes it alone.
    output.lock(k.out(), LockMode::Exclusive)?;
    let dir = k.dir();
    let mut bytes = 0;
    for (j, name) in K::planned_files(plan).into_iter().enumerate() {
        let owner = j % n + 1;
        // Sorted, one per part: part `owner` is at `owner - 1`.
        let (owner_path, m) = &manifests[owner - 1];
        let Some(want) = K::planned_bytes(plan, j, m) else {
            bail!(InputError::invalid(
                owner_path,
                format!("part {owner}/{n} does not record writing {name}, which the plan gives it")
            ));
        };
        let path = dir.join(name);
        let len = std::fs::metadata(&path).map(|m| m.len()).map_err(|e| {
            InputError::invalid(
                &path,
                format!("planned output of part {owner}/{n} is missing: {e}"),
            )
        })?;
        if len != want {
            bail!(InputError::invalid(
                &path,
                format!("is {len} bytes, the plan says {want} (part {owner}/{n})")
            ));
        }
        bytes += len;
    }
    let report = k.finish(first_path, first, &mut output, bytes)?;
    output.commit()?;
    for (p, _) in &manifests {
        std::fs::remove_file(p).map_err(|e| InputError::io(p, e))?;
    }
    Ok(report)
}

/// Whether `name` is a plain file name: not empty, no `/`, not `.` or `..`, no NUL. Every file
/// name taken from a manifest or an index must be one before it is joined to a folder.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Whether `rel` is a relative path of plain names (`1_Pooling/config.json`), never leaving
/// the folder it is joined to.
pub fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty() && rel.split('/').all(is_plain_name)
}

/// The most parts a run may be split into. Each part owns whole output files (or modules), so
/// more parts than that leave parts with nothing to do; the bound keeps a mistyped or hostile
/// `N` (a manifest's too) from sizing allocations and error lists.
pub const MAX_PARTS: usize = 10_000;

/// Parses `i/N` (1 ≤ i ≤ N ≤ [`MAX_PARTS`]).
pub fn parse_part(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not of the form I/N (e.g. 2/8)"))?;
    let (i, n): (usize, usize) = (
        i.trim()
            .parse()
            .map_err(|_| format!("`{i}` is not a part number"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a part count"))?,
    );
    if n == 0 || i == 0 || i > n {
        return Err(format!("part {i}/{n}: need 1 ≤ I ≤ N"));
    }
    if n > MAX_PARTS {
        return Err(format!("part {i}/{n}: at most {MAX_PARTS} parts"));
    }
    Ok((i, n))
}

/// Whether output file `index` belongs to `part` (everything when not split).
pub fn owns(part: Option<(usize, usize)>, index: usize) -> bool {
    match part {
        None => true,
        Some((i, n)) => index % n == i - 1,
    }
}

/// The folder the output files go to.
pub fn out_dir(first_file: &Path) -> PathBuf {
    match first_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Size and modification time of one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub path: String,
    pub bytes: u64,
    pub mtime_ns: i128,
}

/// Stamps of `paths` (inputs of a split run: they must not change between parts).
pub fn stamps(paths: &[PathBuf]) -> InputResult<Vec<Stamp>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).map_err(|e| InputError::io(p, e))?;
            let mtime_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            Ok(Stamp {
                path: std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string(),
                bytes: m.len(),
                mtime_ns,
            })
        })
        .collect()
}

/// The files of `dir` whose names start with `prefix` and end with `suffix`, sorted.
pub fn files_named(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parts::{Manifest, MANIFEST_VERSION};

    #[test]
    fn parts_partition_the_files() {
        for n in 1..6 {
            for j in 0..17 {
                assert_eq!((1..=n).filter(|&i| owns(Some((i, n)), j)).count(), 1);
            }
        }
        assert_eq!(parse_part("2/3"), Ok((2, 3)));
        assert!(
            parse_part("0/3").is_err() && parse_part("4/3").is_err() && parse_part("3").is_err()
        );
    }

    /// Manifests written by the code before this module was generic (`fixtures/parts/README.md`)
    /// read into today's types and write back byte for byte: same fields, order and layout.
    #[test]
    fn manifests_of_the_previous_code_read_back_byte_for_byte() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/parts");
        let merge = std::fs::read(dir.join("merge_manifest_1_of_2.json")).unwrap();
        let m: Manifest = serde_json::from_slice(&merge).unwrap();
        assert_eq!((m.version, m.part, m.parts), (MANIFEST_VERSION, 1, 2));
        assert_eq!(m.to_bytes(), merge);
        let gguf = std::fs::read(dir.join("gguf_manifest_2_of_2.json")).unwrap();
        let g: crate::merge::gguf_parts::GgufManifest = serde_json::from_slice(&gguf).unwrap();
        assert_eq!((g.part, g.parts), (2, 2));
        assert_eq!(g.version, crate::merge::gguf_parts::GGUF_MANIFEST_VERSION);
        assert_eq!(g.to_bytes(), gguf);
    }

    /// A split output reduced to what [`SplitOutput`] asks: planned files with sizes, an
    /// `index` written by `finish` holding the bytes checked.
    struct Toy(PathBuf);

    impl SplitOutput for Toy {
        type Plan = Vec<(String, u64)>;
        type Written = String;
        type Report = u64;
        const VERSION: u32 = 7;
        fn out(&self) -> &Path {
            &self.0
        }
        fn dir(&self) -> PathBuf {
            self.0.clone()
        }
        fn manifest_prefix(&self) -> String {
            ".toy-part-".into()
        }
        fn none_found(&self) -> InputError {
            InputError::invalid(&self.0, "no toy parts")
        }
        fn planned_files(plan: &Self::Plan) -> Vec<&str> {
            plan.iter().map(|(n, _)| n.as_str()).collect()
        }
        fn written_name(w: &String) -> &str {
            w
        }
        fn planned_bytes(
            plan: &Self::Plan,
            j: usize,
            _: &PartManifest<Self::Plan, String>,
        ) -> Option<u64> {
            plan.get(j).map(|f| f.1)
        }
        fn check_names(_: &Path, _: &Self::Plan) -> InputResult<()> {
            Ok(())
        }
        fn finish(
            &self,
            _: &Path,
            _: &PartManifest<Self::Plan, String>,
            output: &mut Output,
            bytes: u64,
        ) -> Result<u64> {
            output.small_file(&self.0.join("index"), bytes.to_string().as_bytes())?;
            Ok(bytes)
        }
    }

    /// Writes part `i` of `n` of `plan` (files of `len` bytes) as a run would.
    fn write_part(k: &Toy, plan: &[(String, u64)], (i, n): (usize, usize)) {
        let mut out = Output::new();
        let mut written = Vec::new();
        for (j, (name, len)) in plan.iter().enumerate() {
            if owns(Some((i, n)), j) {
                out.small_file(&k.0.join(name), &vec![b'x'; *len as usize])
                    .unwrap();
                written.push(name.clone());
            }
        }
        write_manifest(k, &mut out, (i, n), plan.to_vec(), written).unwrap();
        out.commit().unwrap();
    }

    fn listing(d: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// `finalize_parts` joins the N parts of one run and refuses, changing nothing, a missing
    /// part, a part of another plan, a file of the wrong size, an unsafe name and another
    /// manifest version.
    #[test]
    fn finalize_joins_one_run_and_refuses_anything_else() {
        let tmp = tempfile::tempdir().unwrap();
        let k = Toy(tmp.path().to_path_buf());
        let plan: Vec<(String, u64)> = [("a", 3), ("b", 5), ("c", 7)]
            .iter()
            .map(|(n, l)| (n.to_string(), *l))
            .collect();
        let refused = |want: &str| {
            let before = listing(&k.0);
            let e = format!("{:#}", finalize_parts(&k).unwrap_err());
            assert!(e.contains(want), "{e}");
            assert_eq!(listing(&k.0), before, "{want}: changed the folder");
        };
        refused("no toy parts");
        write_part(&k, &plan, (1, 2));
        assert_eq!(
            planned_writes(&k, &[], Some((1, 2))),
            [manifest_path(&k, 1, 2)]
        );
        assert!(manifest_path(&k, 1, 2).ends_with(".toy-part-1-of-2.json"));
        refused("parts not finished: 2/2");
        let mut other = plan.clone();
        other[1].1 = 4;
        write_part(&k, &other, (2, 2));
        refused("belongs to another run than");
        write_part(&k, &plan, (2, 2));
        std::fs::write(k.0.join("b"), b"xx").unwrap();
        refused("is 2 bytes, the plan says 5 (part 2/2)");
        std::fs::write(k.0.join("b"), b"xxxxx").unwrap();
        let m2 = manifest_path(&k, 2, 2);
        let good = std::fs::read_to_string(&m2).unwrap();
        std::fs::write(&m2, good.replace("\"b\"", "\"../b\"")).unwrap();
        refused("is not a plain file name");
        std::fs::write(&m2, good.replace("\"version\": 7", "\"version\": 6")).unwrap();
        refused("part manifest version 6 (this lorakit writes 7)");
        std::fs::write(&m2, &good).unwrap();
        assert_eq!(finalize_parts(&k).unwrap(), 15);
        assert_eq!(std::fs::read_to_string(k.0.join("index")).unwrap(), "15");
        assert_eq!(
            listing(&k.0),
            [("a", 3), ("b", 5), ("c", 7), ("index", 2)]
                .iter()
                .map(|(n, l)| (n.to_string(), *l))
                .collect::<Vec<_>>()
        );
    }
}
