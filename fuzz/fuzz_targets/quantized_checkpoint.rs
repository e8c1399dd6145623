//! Quantized safetensors checkpoints (issue #18): the input is split into a config.json and a
//! model.safetensors, written to a private folder and opened as a checkpoint; its quantization
//! is scanned (bitsandbytes 4/8-bit, GPTQ, AWQ, FP8 with block/channel/tensor or ComfyUI
//! `scale_weight` scales, compressed-tensors) and every small quantized weight dequantized.
//! Lying shapes, missing or mis-sized scales, unknown methods must be errors. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::io::quant::QuantMap;
use lorakit::io::Checkpoint;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("lorakit-fuzz-quant-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    // First two bytes: length of the config part.
    if data.len() < 2 {
        return;
    }
    let cut = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (cfg, file) = data[2..].split_at(cut);
    let d = dir();
    std::fs::write(d.join("config.json"), cfg).unwrap();
    std::fs::write(d.join("model.safetensors"), file).unwrap();
    let Ok(ck) = Checkpoint::open(d) else {
        return;
    };
    let Ok(map) = QuantMap::scan(&ck) else {
        return;
    };
    for q in map.iter() {
        // Bound the work per input: a lying shape may claim a huge tensor.
        if q.shape
            .iter()
            .try_fold(1usize, |a, &n| a.checked_mul(n))
            .is_some_and(|n| n <= 1 << 16)
        {
            let _ = map.dequantize(&ck, q);
        }
    }
});
