//! `resize`, `combine` and `convert` through the binary: against float64 SVDs of the
//! materialised `s·B·A`, against PEFT 0.21.2's `add_weighted_adapter` results
//! (fixtures/llama/adapters/{weighted_cat, linear_mix, ties_mix, svd_mix}), against diffusers'
//! kohya conversion (fixtures/kohya/te_from_peft.safetensors), and through lorakit merges that
//! the merge tests tie to PEFT's own.

use super::common::*;
use super::reference::*;
use lorakit::adapter::Adapter;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod combine;
mod convert;
mod resize;

fn fx(rel: &str) -> String {
    fixture(rel).display().to_string()
}

/// Runs lorakit with `--json` appended and parses the summary.
fn run_json<S: AsRef<str>>(args: &[S]) -> serde_json::Value {
    let mut v: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    v.push("--json");
    serde_json::from_str(&run_ok(&v)).expect("json summary")
}

/// A module's `ΔW = s·B·A` in f64 (canonical `d × k`), with the module facts.
#[derive(Debug, Clone)]
struct Delta {
    rank: usize,
    alpha: f64,
    scale: f64,
    d: usize,
    k: usize,
    w: Vec<f64>,
}

/// Every module's ΔW of the adapter at `path`, read independently of lorakit's own reader (the
/// `safetensors` crate and the formats' own rules), so scale, alpha and rsLoRA are not taken
/// from the code under test:
/// - a PEFT folder: `r` from lora_A, alpha from the first `alpha_pattern` key matching as
///   PEFT's `get_pattern_key` (`^(.*\.)?(key)$`) else `lora_alpha`, scale `alpha/r` or
///   `alpha/√r` with `use_rslora`;
/// - a kohya file: `lora_down` [r, …], `lora_up` [out, r, …], scale `alpha/r` (alpha = r when
///   absent, as kohya's loader does); module names from lorakit's documented
///   `lorakit.module_names` metadata when present, else the kohya names.
fn deltas(path: &Path) -> BTreeMap<String, Delta> {
    deltas_with(path, true)
}

/// [`deltas`] with a kohya file's modules under their kohya names (no metadata map).
fn kohya_deltas(path: &Path) -> BTreeMap<String, Delta> {
    deltas_with(path, false)
}

fn deltas_with(path: &Path, mapped_names: bool) -> BTreeMap<String, Delta> {
    let product = |d: usize, r: usize, k: usize, b: &[f32], a: &[f32], s: f64| {
        let mut w = vec![0f64; d * k];
        for i in 0..d {
            for t in 0..r {
                let bit = b[i * r + t] as f64 * s;
                for j in 0..k {
                    w[i * k + j] += bit * a[t * k + j] as f64;
                }
            }
        }
        w
    };
    let mut out = BTreeMap::new();
    if path.is_dir() {
        let t = read(&path.join("adapter_model.safetensors"));
        let cfg: serde_json::Value = read_json(path.join("adapter_config.json"));
        let rslora = cfg["use_rslora"] == true;
        let alpha_for = |m: &str| peft_alpha_for(&cfg, m).unwrap_or(8.0);
        for (key, a) in &t {
            let (module, bkey) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
                (m, format!("{m}.lora_B.weight"))
            } else if let Some(m) = key.strip_suffix(".lora_embedding_A") {
                (m, format!("{m}.lora_embedding_B"))
            } else {
                continue;
            };
            let b = &t[&bkey];
            let name = module.strip_prefix("base_model.model.").unwrap_or(module);
            let (r, d) = (a.shape[0], b.shape[0]);
            let k: usize = a.shape[1..].iter().product();
            let alpha = alpha_for(name);
            let scale = if rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            let w = product(d, r, k, &b.f32(), &a.f32(), scale);
            out.insert(
                name.to_owned(),
                Delta {
                    rank: r,
                    alpha,
                    scale,
                    d,
                    k,
                    w,
                },
            );
        }
    } else {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let names: BTreeMap<String, String> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lorakit.module_names"))
            .filter(|_| mapped_names)
            .map(|j| serde_json::from_str(j).unwrap())
            .unwrap_or_default();
        let t = read(path);
        for (key, down) in &t {
            let Some(module) = key.strip_suffix(".lora_down.weight") else {
                continue;
            };
            let up = &t[&format!("{module}.lora_up.weight")];
            let (r, d) = (down.shape[0], up.shape[0]);
            let k: usize = down.shape[1..].iter().product();
            let alpha = t
                .get(&format!("{module}.alpha"))
                .map_or(r as f64, |a| match a.dtype {
                    Dtype::I64 => i64::from_le_bytes(a.data[..8].try_into().unwrap()) as f64,
                    Dtype::I32 => i32::from_le_bytes(a.data[..4].try_into().unwrap()) as f64,
                    _ => a.f32()[0] as f64,
                });
            let scale = alpha / r as f64;
            let w = product(d, r, k, &up.f32(), &down.f32(), scale);
            let name = names
                .get(module)
                .cloned()
                .unwrap_or_else(|| module.to_owned());
            out.insert(
                name,
                Delta {
                    rank: r,
                    alpha,
                    scale,
                    d,
                    k,
                    w,
                },
            );
        }
    }
    out
}

/// The true rank of `module` in PEFT's `cat` of `weighted_a` and `weighted_b` (the
/// `weighted_cat` fixture): q_proj, in both, 4 + 6 = 10; k_proj 6 (`weighted_b`'s r) and v_proj
/// 4 (`weighted_a`'s), which `weighted_cat` pads to 10 with zeros.
fn weighted_cat_rank(module: &str) -> usize {
    if module.contains("k_proj") {
        6
    } else if module.contains("v_proj") {
        4
    } else {
        10
    }
}

fn merged(dir: &Path, base: &str, adapter: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    merge_ok(&fixture(base), adapter, &out, &["--device", "cpu"]);
    let f = if out.is_dir() {
        out.join("model.safetensors")
    } else {
        out
    };
    // Tensor bytes only: provenance metadata names the adapter path.
    read(&f)
        .into_iter()
        .flat_map(|(k, t)| k.into_bytes().into_iter().chain(t.data))
        .collect()
}

#[test]
fn outputs_record_provenance_keep_metadata_and_are_deterministic() {
    let (dir, out) = scratch("te.safetensors");
    let args = convert_args(
        &fixture("kohya/te_lora.safetensors"),
        "kohya",
        &out,
        &["--dtype", "f16"],
    );
    run_ok(&args);
    let first = std::fs::read(&out).unwrap();
    run_ok(&args);
    assert_eq!(std::fs::read(&out).unwrap(), first);
    let f = lorakit::io::SafetensorsFile::open(&out).unwrap();
    let meta: BTreeMap<_, _> = f.header().metadata.iter().cloned().collect();
    assert_eq!(meta["ss_network_module"], "networks.lora");
    assert_eq!(meta["lorakit.operation"], "convert");
    assert_eq!(meta["lorakit.version"], env!("CARGO_PKG_VERSION"));
    let inputs: serde_json::Value = serde_json::from_str(&meta["lorakit.inputs"]).unwrap();
    assert_eq!(inputs[0]["path"], fx("kohya/te_lora.safetensors"));
    let t = read(&out);
    assert_eq!(
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].dtype,
        safetensors::Dtype::F16
    );
    assert_eq!(
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].dtype,
        safetensors::Dtype::F32
    );
    // combine: rerun is byte-identical, and the metadata names every input with its weight.
    let out = dir.path().join("mix");
    let args = combine_args(
        &[
            (&fixture("llama/adapters/linear_c"), Some("0.6")),
            (&fixture("llama/adapters/linear_d"), Some("0.3")),
        ],
        &out,
        &["--method", "svd"],
    );
    run_ok(&args);
    let first = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    run_ok(&args);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        first
    );
    let f = lorakit::io::SafetensorsFile::open(out.join("adapter_model.safetensors")).unwrap();
    let meta: BTreeMap<_, _> = f.header().metadata.iter().cloned().collect();
    assert_eq!(meta["format"], "pt");
    let inputs: serde_json::Value = serde_json::from_str(&meta["lorakit.inputs"]).unwrap();
    assert_eq!(inputs[1]["weight"], 0.3);
    let params: serde_json::Value = serde_json::from_str(&meta["lorakit.params"]).unwrap();
    assert_eq!(params["method"], "svd");
}

#[test]
fn help_has_examples() {
    for cmd in ["resize", "combine", "convert"] {
        let help = run_ok([cmd, "--help"]);
        assert!(
            help.contains("Examples:") && help.contains("--out"),
            "{cmd}"
        );
    }
    // Text reports are tables.
    let dir = tempfile::tempdir().unwrap();
    let text = run_ok(resize_args(
        &fixture("llama/adapters/qv_r8"),
        &dir.path().join("r"),
        &["--rank", "2"],
    ));
    assert_mentions(&text, &["energy kept", "model.layers.0.self_attn.q_proj"]);
}
