//! The GGUF header parser: arbitrary bytes as a whole file. Must never panic; a parsed header
//! must describe tensors that lie inside the file, in order, each aligned, with sizes from
//! their type's block layout; every dequantizable tensor must dequantize without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::io::gguf::{header, quant};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = header::parse(data) else { return };
    assert_eq!(h.data_start % h.alignment, 0);
    let mut expected = 0u64;
    for t in &h.tensors {
        assert_eq!(t.offset, expected);
        assert_eq!(Some(t.bytes), t.ty.byte_len(t.numel()));
        let r = h.data_range(t);
        assert!(r.end as u64 <= data.len() as u64);
        expected = header::pad(t.offset + t.bytes, h.alignment).unwrap();
        if t.ty.can_dequantize() && t.numel() <= 1 << 16 {
            let mut out = vec![0f32; t.numel() as usize];
            assert!(quant::dequantize_into(t.ty, &data[r], &mut out));
        }
    }
});
