//! `finalize` over a hostile merge part manifest: the bytes are written as
//! `OUT/.lorakit-part-1-of-1.json` beside one real shard, then `finalize OUT` runs. Whatever the
//! manifest says, nothing may be created outside OUT (a sibling folder is watched) and no file
//! but the base's may be copied in; it must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let victim = dir.path().join("victim");
    std::fs::create_dir(&out).unwrap();
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    // One valid shard, so a manifest that names it gets past the size and header checks.
    let header = lorakit::io::header::serialize(
        &[],
        &[("t".into(), lorakit::dtype::Dtype::F32, vec![1])],
    );
    let mut shard = header;
    shard.extend_from_slice(&[0; 4]);
    std::fs::write(out.join("model.safetensors"), &shard).unwrap();
    std::fs::write(out.join(".lorakit-part-1-of-1.json"), data).unwrap();
    let before = names(&out);
    let _ = lorakit::parts::finalize(&out);
    assert!(names(&victim).is_empty(), "finalize wrote outside OUT");
    assert_eq!(
        names(dir.path()),
        vec!["out", "secret", "victim"],
        "finalize created a file beside OUT"
    );
    for n in names(&out) {
        assert!(
            before.contains(&n) || n == "model.safetensors.index.json",
            "finalize wrote {n} into OUT"
        );
    }
});
