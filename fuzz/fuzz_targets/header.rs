//! The safetensors header parser: arbitrary bytes as a whole file. Must never panic; a parsed
//! header must describe tensors that lie inside the file and tile the data section.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::io::header;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let Ok(n) = header::header_len(data, len) else { return };
    let Some(json) = data.get(8..8 + n as usize) else { panic!("header_len accepted a length beyond the buffer") };
    if let Ok(h) = header::parse(json, len) {
        let mut end = 0;
        for t in &h.tensors {
            assert_eq!(t.start, end);
            end = t.end;
            assert!(h.data_start + t.end <= len);
        }
        assert_eq!(h.data_start + h.data_len, len);
    }
});
