//! Extract part files as untrusted input: the bytes are a part file's
//! `lorakit.extract_part` header, read back through the same code `finalize` uses
//! (`read_extract_parts`). Must never panic, and a header is only accepted when its version
//! is the one this lorakit writes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(".lorakit-extract-part-1-of-1.safetensors");
    let meta = vec![(lorakit::parts::EXTRACT_PART_KEY.to_string(), text.to_string())];
    let header = lorakit::io::header::serialize(
        &meta,
        &[("0.lora_A".into(), lorakit::dtype::Dtype::F32, vec![1, 1])],
    );
    let mut bytes = header;
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(&p, &bytes).unwrap();
    if let Ok(parts) = lorakit::parts::read_extract_parts(std::slice::from_ref(&p)) {
        assert_eq!(parts[0].0.version, lorakit::parts::EXTRACT_PART_VERSION);
        let names = vec!["t".to_string()];
        let _ = lorakit::parts::join_extract_parts(parts, &[p.clone()], &names, &[], |_| vec![0]);
    }
});
