//! The adapter-model builder: the input is split into a safetensors file and an
//! adapter_config.json, written to a private folder and opened as a PEFT folder (LoRA, LoHa,
//! LoKr, IA3, OFT), or, when the first byte is odd, as a lone single file (kohya, LyCORIS,
//! diffusers namings); resolved against a small fixed base and fully loaded, every module's ΔW
//! rebuilt where it has one of its own. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::adapter::{mapping, Adapter};
use lorakit::io::Checkpoint;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static (PathBuf, PathBuf) {
    static D: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    D.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("lorakit-fuzz-{}", std::process::id()));
        let ad = root.join("adapter");
        std::fs::create_dir_all(&ad).unwrap();
        // A base with a 4×3 linear layer and a 2×2×1×1 conv.
        let base = root.join("base.safetensors");
        let specs = vec![
            lorakit::io::TensorSpec::new("layer.weight", lorakit::dtype::Dtype::F32, vec![4, 3]),
            lorakit::io::TensorSpec::new("conv.weight", lorakit::dtype::Dtype::F32, vec![2, 2, 1, 1]),
        ];
        let mut out = lorakit::io::Output::new();
        let mut w = out.safetensors(&base, &[], specs).unwrap();
        w.write_tensor("layer.weight", &[0u8; 48]).unwrap();
        w.write_tensor("conv.weight", &[0u8; 16]).unwrap();
        w.finish().unwrap();
        out.commit().unwrap();
        (ad, base)
    })
}

fuzz_target!(|data: &[u8]| {
    let (ad, base) = dir();
    // First two bytes: length of the config part.
    if data.len() < 2 {
        return;
    }
    let single = data[0] & 1 == 1;
    let cut = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (cfg, file) = data[2..].split_at(cut);
    let opened = if single {
        let lone = ad.parent().unwrap().join("lone.safetensors");
        std::fs::write(&lone, file).unwrap();
        Adapter::open(&lone)
    } else {
        std::fs::write(ad.join("adapter_config.json"), cfg).unwrap();
        std::fs::write(ad.join("adapter_model.safetensors"), file).unwrap();
        Adapter::open(ad)
    };
    let Ok(mut a) = opened else { return };
    let base = Checkpoint::open(base).unwrap();
    let res = mapping::resolve(&a, &base);
    for p in &res.modules {
        let m = &a.modules[p.module];
        assert_eq!(mapping::expected_shape(m).iter().product::<usize>(), m.out_features * m.in_features);
    }
    if a.load_all().is_ok() {
        for m in &a.modules {
            if m.factors.lora().is_some() {
                let (b, av) = a.factors(m).unwrap();
                assert_eq!(b.len(), m.out_features * m.rank);
                assert_eq!(av.len(), m.rank * m.in_features);
            } else if let Ok(d) = a.delta(m) {
                // Updates that need the base have no ΔW of their own (an error, not a panic).
                assert_eq!(d.len(), m.out_features * m.in_features);
            }
        }
    }
});
