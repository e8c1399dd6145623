//! Splitting one output over N independent processes (`--part I/N`) and joining them
//! (`finalize`).
//!
//! Output file `j` (0-based, in the plan's order) belongs to part `j mod N + 1`, so N jobs on N
//! machines — a Slurm array, a Kubernetes indexed Job — each write a deterministic share. Every
//! part computes the same plan from the same inputs and flags, writes its files and a manifest
//! (`{prefix}I-of-N.json`: the version, `part`, `parts`, the whole `plan`, and what it
//! `written`). `finalize` reads every manifest, checks that all N are present, agree on the
//! plan and name only plain files, that every planned file exists with its planned size, and
//! then lets the output check the contents and write its last files; it commits them and
//! removes the manifests. On any failure it writes and removes nothing.
//!
//! That machinery is written once, here ([`finalize_parts`], [`write_manifest`],
//! [`planned_writes`]); what differs between outputs is a [`SplitOutput`]: the manifest's
//! prefix and plan, the planned sizes, and the contents check. Its implementations:
//! safetensors merge outputs (`merge.rs`: an index and copied files written at the end),
//! GGUF merge outputs (`crate::merge::gguf_parts`: only checks). An extraction writes one
//! adapter, so its parts split the modules instead of the files (`extract.rs`).
//!
//! Must not trust a manifest: every file name in it must be a plain name, every planned file is
//! checked against the plan all manifests agree on, and nothing is written or copied outside
//! what the output's own check allows.

mod engine;
mod extract;
mod merge;

pub use engine::{
    files_named, finalize_parts, find_manifests, is_plain_name, is_safe_relative, manifest_file,
    manifest_path, other_run, out_dir, owns, parse_part, planned_writes, stamps, unsafe_name,
    write_manifest, PartManifest, SplitOutput, Stamp,
};
pub use extract::*;
pub use merge::{
    finalize, has_merge_manifests, manifest_name, FinalizeReport, Manifest, MergeParts, Plan,
    PlannedFile, MANIFEST_VERSION,
};
