//! The eleventh hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round11.py`): the
//! violations its cases found, each test failing before its fix.

use super::common::*;
use std::path::Path;

/// Rewrites tensor `name` of the safetensors file `path` (F32) with every value `v`, through
/// the independent `safetensors` crate.
fn fill_f32(path: &Path, name: &str, v: f32) {
    let mut tensors = read(path);
    let t = tensors.get_mut(name).unwrap();
    t.data = v.to_le_bytes().repeat(t.data.len() / 4);
    write_tensors(path, &tensors);
}

/// `resize` of a module whose factors hold values near f32::MAX (lora_b all 3e38: ‖B‖·‖A‖ past
/// the f32 range) panicked inside faer ("linalg: faer SVD of a 4×4 matrix failed:
/// NoConvergence", exit 101, a 135-line backtrace). Now it is one line naming the adapter and
/// the module, exit 2, nothing written — for an mlx-lm folder and a PEFT folder alike.
#[test]
fn resize_of_factors_past_the_f32_range_is_refused_not_a_panic() {
    for (rel, file, tensor, module) in [
        (
            "mlx/lora",
            "adapters.safetensors",
            "model.layers.1.self_attn.q_proj.lora_b",
            "model.layers.1.self_attn.q_proj",
        ),
        (
            "llama/adapters/qv_r8",
            "adapter_model.safetensors",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            "q_proj",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ad = dir.path().join("ad");
        copy_dir(&fixture(rel), &ad);
        fill_f32(&ad.join(file), tensor, 3e38);
        let out = dir.path().join("r");
        let line = refused(resize_args(&ad, &out, &["--rank", "2"]), &out);
        assert_mentions(&line, &["ad", module, "f32 range"]);
    }
}

/// mlx-lm builds block-relative adapter layers in `model.layers[-max(num_layers, 0):]` only
/// (`tuner/utils.py` `linear_to_lora_layers`), and `load_adapters` refuses tensors of any other
/// block ("not an adapter parameter in the model"). fixtures/mlx/lora adapts blocks 1 and 2 with
/// `num_layers: 2`; with `num_layers: 1` lorakit merged both blocks, exit 0. Now refused naming
/// the file, the module of block 1 and num_layers; 2, 0 and -1 (every block) still merge.
#[test]
fn an_mlx_folder_adapting_more_blocks_than_num_layers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one = edited_copy(dir.path(), "mlx/lora", "one", |c| {
        c["num_layers"] = 1.into()
    });
    let out = dir.path().join("o");
    let line = merge_refused(&fixture("mlx/base"), &one, &out, &[]);
    assert_mentions(
        &line,
        &["adapters.safetensors", "model.layers.1.", "num_layers is 1"],
    );
    for n in [2, 0, -1] {
        let ad = edited_copy(dir.path(), "mlx/lora", &format!("n{n}"), |c| {
            c["num_layers"] = n.into()
        });
        let out = dir.path().join(format!("o{n}"));
        run_ok(merge_args(&fixture("mlx/base"), &ad, &out, &["--quiet"]));
    }
}

/// Regexes the `regex` crate parses but Python's `re` refuses (each checked with
/// `re.compile` below where LORAKIT_PYTHON has one): a repetition of a repetition
/// (`.{1000}{1000}`, which the crate cannot compile and lorakit read as undecidable), `\z`,
/// `\pL`, `\x{..}`, `(?<n>…)`, the flag `U`, turning `u` off, flags mid-pattern or negated
/// globally. PEFT's `re.fullmatch` raises on each at load; lorakit merged every stored module
/// with the crate's reading, exit 0. Now refused naming adapter_config.json and the key; Python-
/// valid spellings (possessive `*+`, `(?P<n>…)`, leading `(?i)`) still merge.
#[test]
fn a_target_modules_regex_only_the_regex_crate_accepts_is_refused() {
    let refused_patterns = [
        ".*_proj{1}{1}",
        ".*_proj**",
        ".*_pro*?+j",
        r".*_proj\z",
        r".*\pL_proj",
        r".*\x{5f}proj",
        ".*(?<n>_)proj",
        "(?U).*_proj",
        ".*(?-u:_)proj",
        ".*(?i)_PROJ",
        "(?-i).*_proj",
        ".{1000}{1000}",
    ];
    let accepted = [".*_proj*+", ".*(?P<n>_)proj", "(?i).*_PROJ"];
    python_re_agrees(&refused_patterns, &accepted);
    let dir = tempfile::tempdir().unwrap();
    for (i, p) in refused_patterns.iter().enumerate() {
        let ad = edited_copy(dir.path(), "llama/adapters/qv_r8", &format!("r{i}"), |c| {
            c["target_modules"] = (*p).into()
        });
        let started = std::time::Instant::now();
        let line = merge_refused(&fixture("llama/base"), &ad, &dir.path().join("o"), &[]);
        assert_mentions(
            &line,
            &["adapter_config.json", "target_modules", "not a valid regex"],
        );
        assert!(
            started.elapsed().as_secs() < 60,
            "{p}: {:?}",
            started.elapsed()
        );
    }
    merges_with_each_target_pattern(dir.path(), &accepted);
}

/// PEFT builds VeRA, HRA, VB-LoRA and BOFT layers from adapter_config.json (`r`,
/// `num_vectors`/`vector_length`, `boft_block_size`/`boft_block_num`/
/// the butterfly factor aside, which a CPU PEFT sets to 1: `update_layer` of each tuner) and refuses a state dict of other
/// shapes (load_state_dict's size mismatch), or a BOFT config setting both block fields
/// (ValueError). lorakit read the shapes from the tensors and merged, exit 0. Now each is
/// refused naming the adapter file, the tensor and the config field.
#[test]
fn a_peft_tuner_config_contradicting_its_tensors_is_refused() {
    let cases: [(&str, &str, serde_json::Value, &str); 6] = [
        ("gaps10/vera/adapter", "r", 3.into(), "vera_A"),
        ("gaps10/hra/adapter", "r", 3.into(), "hra_u"),
        (
            "gaps10/vblora/adapter",
            "num_vectors",
            8.into(),
            "vblora_vector_bank",
        ),
        (
            "gaps10/vblora/adapter",
            "vector_length",
            8.into(),
            "vblora_vector_bank",
        ),
        ("gaps10/boft/adapter", "boft_block_size", 8.into(), "boft_R"),
        ("gaps10/boft/adapter", "boft_block_num", 16.into(), "boft_R"),
    ];
    let dir = tempfile::tempdir().unwrap();
    each_config_edit_is_refused(dir.path(), &cases, &[]);
    // The fixtures as written still merge (checked against PEFT by tests/it/gaps10.rs).
    merge_each_into_llama(dir.path(), &["gaps10/vera/adapter", "gaps10/boft/adapter"]);
    // A config asking for two butterfly factors over a one-factor `boft_R` is what PEFT writes
    // without its CUDA extension (`update_layer` sets the factor to 1 on any CPU) and loads: it
    // merges as the fixture does.
    let ad = edited_copy(dir.path(), "gaps10/boft/adapter", "fly2", |c| {
        c["boft_n_butterfly_factor"] = 2.into()
    });
    let (a, b) = (dir.path().join("fly2_out"), dir.path().join("fly1_out"));
    run_ok(merge_args(&fixture("llama/base"), &ad, &a, &["--quiet"]));
    run_ok(merge_args(
        &fixture("llama/base"),
        &fixture("gaps10/boft/adapter"),
        &b,
        &["--quiet"],
    ));
    assert_eq!(read_checkpoint(&a), read_checkpoint(&b));
}

/// Each case `(fixture, field, value, wanted)`: the adapter fixture with `field` set to `value` in
/// its adapter_config.json, merged into the llama base, is refused naming the adapter file,
/// `wanted` (a tensor, a shape), `field` and each of `also`.
pub(super) fn each_config_edit_is_refused(
    dir: &Path,
    cases: &[(&str, &str, serde_json::Value, &str)],
    also: &[&str],
) {
    for (i, (rel, field, value, wanted)) in cases.iter().enumerate() {
        let ad = edited_copy(dir, rel, &format!("t{i}"), |c| c[*field] = value.clone());
        let line = merge_refused(&fixture("llama/base"), &ad, &dir.join("o"), &[]);
        assert_mentions(&line, &["adapter_model.safetensors", wanted, field]);
        assert_mentions(&line, also);
    }
}

/// Merges each adapter fixture `rel`, as written, into the llama base (each into its own output
/// under `dir`).
pub(super) fn merge_each_into_llama(dir: &Path, rels: &[&str]) {
    for rel in rels {
        run_ok(merge_args(
            &fixture("llama/base"),
            &fixture(rel),
            &dir.join(rel.replace('/', "_")),
            &["--quiet"],
        ));
    }
}

/// Where PEFT's Python is available, that its `re.compile` refuses every `refused` pattern and
/// compiles every `accepted` one: the verdicts the regex tests pin are Python's, not lorakit's.
pub(super) fn python_re_agrees(refused: &[&str], accepted: &[&str]) {
    let Some(py) = peft_python() else { return };
    for (p, ok) in refused
        .iter()
        .map(|p| (p, false))
        .chain(accepted.iter().map(|p| (p, true)))
    {
        let st = std::process::Command::new(&py)
            .args([
                "-W",
                "ignore",
                "-c",
                "import re, sys; re.compile(sys.argv[1])",
                p,
            ])
            .output()
            .unwrap()
            .status;
        assert_eq!(st.success(), ok, "Python's re.compile({p:?})");
    }
}

/// Every `accepted` `target_modules` pattern, written into a copy of the qv_r8 adapter under
/// `dir`, merges into the Llama fixture.
pub(super) fn merges_with_each_target_pattern(dir: &Path, accepted: &[&str]) {
    for (i, p) in accepted.iter().enumerate() {
        let ad = edited_copy(dir, "llama/adapters/qv_r8", &format!("a{i}"), |c| {
            c["target_modules"] = (*p).into()
        });
        let out = dir.join(format!("a{i}o"));
        run_ok(merge_args(&fixture("llama/base"), &ad, &out, &["--quiet"]));
    }
}
