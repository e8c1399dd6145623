//! compressed-tensors FP4 checkpoints (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`;
//! `src/io/quant/ct_fp4.rs`, `ct_scan.rs`): where `quantized_checkpoint` feeds raw bytes, this
//! target keeps the file well formed and lets the input choose what hostile round 14 lied about:
//! the packed weight's shape and dtype, the scale's shape and dtype, the NVFP4 global scale (its
//! shape, dtype and value: 0, NaN, ±inf, subnormal), an optional `weight_shape` and zero point,
//! and the config group's `num_bits` / `group_size` / `strategy` / `type` / `symmetric`; the
//! rest of the input is the tensors' bytes. The scan and the dequantization must return an
//! error or a value, never panic, and never read past a tensor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::io::quant::QuantMap;
use lorakit::io::Checkpoint;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("lorakit-fuzz-ctfp4-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

const DTYPES: [(&str, usize); 7] = [
    ("U8", 1),
    ("F8_E4M3", 1),
    ("I8", 1),
    ("F16", 2),
    ("BF16", 2),
    ("F32", 4),
    ("I64", 8),
];

/// Reads the choices from the front of the input, one byte each (0 once it runs out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn shape(&mut self) -> Vec<usize> {
        let rank = usize::from(self.next() % 4);
        (0..rank).map(|_| usize::from(self.next() % 80)).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let p = "model.layers.0.self_attn.q_proj";
    let mut tensors: Vec<(String, &str, Vec<usize>)> = Vec::new();
    let nv = b.next() & 1 == 0;
    let rows = usize::from(b.next() % 80);
    let half = usize::from(b.next() % 80);
    let packed_dtype = if b.next() % 8 == 0 { "I8" } else { "U8" };
    tensors.push((format!("{p}.weight_packed"), packed_dtype, vec![rows, half]));
    let gs = if nv { 16 } else { 32 };
    let scale_shape = match b.next() % 4 {
        0 => b.shape(),
        _ => vec![rows, (2 * half) / gs],
    };
    let scale_dtype = match b.next() % 4 {
        0 => DTYPES[usize::from(b.next()) % DTYPES.len()].0,
        _ if nv => "F8_E4M3",
        _ => "U8",
    };
    tensors.push((format!("{p}.weight_scale"), scale_dtype, scale_shape));
    match b.next() % 4 {
        0 => {}
        1 => {
            let shape = b.shape();
            let dt = DTYPES[usize::from(b.next()) % DTYPES.len()].0;
            tensors.push((format!("{p}.weight_global_scale"), dt, shape));
        }
        _ => tensors.push((format!("{p}.weight_global_scale"), "F32", vec![1])),
    }
    if b.next() % 8 == 0 {
        tensors.push((format!("{p}.weight_shape"), "I64", vec![2]));
    }
    if b.next() % 16 == 0 {
        tensors.push((format!("{p}.weight_zero_point"), "U8", vec![rows, 1]));
    }
    let weights = format!(
        r#"{{"num_bits": {}, "group_size": {}, "strategy": {}, "type": {}, "symmetric": {}}}"#,
        [4, 4, 8, 2][usize::from(b.next() % 4)],
        [gs as i64, 16, 32, 0, -16, 7][usize::from(b.next() % 6)],
        ["\"tensor_group\"", "\"group\"", "\"channel\"", "null", "3"][usize::from(b.next() % 5)],
        ["\"float\"", "\"int\"", "\"nope\"", "null"][usize::from(b.next() % 4)],
        ["true", "false", "null", "\"yes\""][usize::from(b.next() % 4)],
    );
    let format = [
        "nvfp4-pack-quantized",
        "mxfp4-pack-quantized",
        "pack-quantized",
        "mixed-precision",
    ][usize::from(b.next() % 4)];
    let config = format!(
        r#"{{"quantization_config": {{"quant_method": "compressed-tensors", "format": "{format}", "config_groups": {{"group_0": {{"targets": ["Linear"], "weights": {weights}}}}}, "ignore": ["lm_head"]}}}}"#
    );
    // Tensor bytes: the rest of the input, repeated to each tensor's size (capped).
    let payload = b.0;
    let mut header = String::from("{");
    let mut body = Vec::new();
    for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
        let width = DTYPES.iter().find(|d| d.0 == *dtype).map_or(1, |d| d.1);
        let n = shape.iter().product::<usize>() * width;
        if n > 1 << 16 {
            return;
        }
        let start = body.len();
        body.extend((0..n).map(|j| payload.get(j % payload.len().max(1)).copied().unwrap_or(0)));
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            r#""{name}": {{"dtype": "{dtype}", "shape": {shape:?}, "data_offsets": [{start}, {}]}}"#,
            body.len()
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&body);
    let d = dir();
    std::fs::write(d.join("config.json"), config).unwrap();
    std::fs::write(d.join("model.safetensors"), file).unwrap();
    let Ok(ck) = Checkpoint::open(d) else {
        return;
    };
    let Ok(map) = QuantMap::scan(&ck) else {
        return;
    };
    for q in map.iter() {
        let _ = map.dequantize(&ck, q);
    }
});
