//! The `torch.save` reader (`io::torch`: zip directory, pickle machine, tensor table): arbitrary
//! bytes written as a file whose first bytes are a zip's, opened as a checkpoint. Must never
//! panic or run long; an opened file's every tensor must lie inside the file, with as many
//! bytes as its dtype and shape need, and be viewable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::io::SafetensorsFile;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("lorakit-fuzz-torch-{}.pt", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(path(), &bytes).unwrap();
    let Ok(f) = SafetensorsFile::open(path()) else {
        return;
    };
    for t in f.tensors() {
        assert!(t.start <= t.end && t.end <= bytes.len() as u64, "{}", t.name);
        let bits = t.dtype.bitsize() as u64 * t.numel() as u64;
        assert_eq!((t.end - t.start) * 8, bits, "{}", t.name);
        let v = f.view_info(t).unwrap();
        assert_eq!(v.data.len() as u64, t.end - t.start);
    }
});
