//! 7. The independent hostile round (`fuzz/hostile_round.py`): each test is one violation that
//! round found, failing before its fix.

use super::*;

/// `--out nox/../INPUT` where `nox` does not exist: the check could not resolve the path
/// before `nox` was created, so `merge` overwrote its base's model.safetensors and `resize` and
/// `combine` their input adapter (and left `nox` behind).
#[test]
fn an_output_through_a_folder_not_yet_created_is_still_checked_against_the_inputs() {
    let (dir, model, ad) = llama_and_qv_r8_copies("m", "qv");
    let before = (snapshot(&model), snapshot(&ad));
    refused_as_input(&run_err(merge_args(
        &model,
        &ad,
        &dir.path().join("nox/../m"),
        &[],
    )));
    let onto = dir.path().join("nox/../qv");
    refused_as_input(&run_err(resize_args(&ad, &onto, &["--rank", "2"])));
    refused_as_input(&run_err(combine_args(
        &[(&fixture("llama/adapters/qv_r8"), None), (&ad, None)],
        &onto,
        &["--method", "cat"],
    )));
    refused_as_input(&run_err(convert_args(
        &ad,
        "peft",
        &dir.path().join("nox/deeper/../../qv"),
        &[],
    )));
    assert_eq!(
        (snapshot(&model), snapshot(&ad)),
        before,
        "an input was changed"
    );
    assert!(
        !dir.path().join("nox").exists(),
        "a created folder was left"
    );
}

/// A scratch copy of fixture folder `rel` (returned with its temporary folder) whose JSON file
/// `json` was changed by `edit`.
fn edited_copy(
    rel: &str,
    json: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (tempfile::TempDir, PathBuf) {
    let (dir, copy) = scratch("m");
    copy_dir(&fixture(rel), &copy);
    edit_json(copy.join(json), edit);
    (dir, copy)
}

/// Writes `r/recipe.toml` with `body`, beside copies of the llama fixture (`base`) and qv_r8
/// (`qv`); returns the folder and the recipe.
fn recipe_case(body: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, _model, _ad) = llama_and_qv_r8_copies("base", "qv");
    std::fs::create_dir(dir.path().join("r")).unwrap();
    let recipe = dir.path().join("r/recipe.toml");
    std::fs::write(&recipe, body).unwrap();
    (dir, recipe)
}

const MERGE_STEP: &str =
    "[[step]]\nname = \"NAME\"\ncommand = \"merge\"\nbase = \"BASE\"\nadapter = [\"../qv\"]\nout = \"OUT\"\n";

fn merge_step(name: &str, base: &str, out: &str) -> String {
    MERGE_STEP
        .replace("NAME", name)
        .replace("BASE", base)
        .replace("OUT", out)
}

/// A recipe whose later step writes onto a file an earlier step read, two steps writing one
/// output, an absolute output onto an input (which `--dry-run` passed), and a NUL byte in a
/// path (exit 3 from the file system): each refused as a whole before any step runs, in
/// `--dry-run` too, naming the recipe; nothing written.
#[test]
fn recipe_outputs_are_checked_against_every_input_and_each_other() {
    type Body = Box<dyn Fn(&Path) -> String>;
    let cases: Vec<(&str, Body)> = vec![
        (
            "also an input of the recipe",
            Box::new(|_| {
                merge_step("m", "../base", "o") + &merge_step("m2", "${m.out}", "../base")
            }),
        ),
        (
            "write the same output",
            Box::new(|_| merge_step("m", "../base", "o") + &merge_step("m2", "../base", "./o")),
        ),
        (
            "also an input of the recipe",
            Box::new(|d| merge_step("m", "../base", &d.join("base").display().to_string())),
        ),
        (
            "NUL byte",
            Box::new(|_| merge_step("m", "../base", "o\\u0000x")),
        ),
    ];
    for (want, body) in cases {
        for dry in [true, false] {
            let (dir, recipe) = recipe_case("");
            std::fs::write(&recipe, body(dir.path())).unwrap();
            let before = snapshot(dir.path());
            let extra: &[&str] = if dry { &["--dry-run"] } else { &["--quiet"] };
            let line = one_line_error(&run_err(run_args(&recipe, extra)));
            assert_mentions(&line, &["recipe.toml", want]);
            assert_eq!(
                snapshot(dir.path()),
                before,
                "{want}: something was written"
            );
        }
    }
}

/// Token ids beyond the vocabulary: `train` trained on them (the bad id sat past the windows
/// its one step used) and `eval` refused without naming the file; an empty text file was
/// refused without naming it either.
#[test]
fn token_files_are_checked_whole_and_named() {
    let (dir, ids) = scratch("ids.safetensors");
    let mut v: Vec<i64> = vec![5; 15];
    v.push(100_000);
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_views(
        &ids,
        &[("input_ids", safetensors::Dtype::I64, &[1, 16], &bytes)],
    );
    let out = dir.path().join("out");
    let train = |data: &Path| {
        one_step_train(
            &fixture("llama/base"),
            data,
            &out,
            &["--tokenizer", "bytes"],
        )
    };
    let eval = |data: &Path, flag: &str| {
        eval_cpu_args(
            &fixture("llama/base"),
            &[flag, s(data), "--tokenizer", "bytes", "--seq-len", "8"],
        )
    };
    assert_mentions(
        &refused(train(&ids), &out),
        &["ids.safetensors", "100000", "vocabulary"],
    );
    assert_mentions(
        &one_line_error(&run_err(eval(&ids, "--input-ids"))),
        &["ids.safetensors", "100000"],
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_mentions(&refused(train(&empty), &out), &["empty.txt", "no tokens"]);
    assert_mentions(
        &one_line_error(&run_err(eval(&empty, "--text"))),
        &["empty.txt", "no tokens"],
    );
}

/// A NaN in a model weight: `eval` reported a NaN loss with exit 0, `train` failed on "the loss
/// is not finite" naming neither the file nor the tensor.
#[test]
fn a_nan_model_weight_is_named_by_eval_and_train() {
    let (dir, model) = scratch("m");
    copy_dir(&fixture("llama/base"), &model);
    let file = model.join("model.safetensors");
    let mut t = read(&file);
    let norm = "model.norm.weight";
    t.get_mut(norm).unwrap().data[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
    write_tensors(&file, &t);
    let logits = dir.path().join("logits.safetensors");
    let ids = fixture("text/tiny_ids.safetensors");
    let line = refused(
        eval_cpu_args(
            &model,
            &[
                "--input-ids",
                s(&ids),
                "--logits",
                s(&logits),
                "--seq-len",
                "616",
            ],
        ),
        &logits,
    );
    assert_mentions(&line, &["model.safetensors", norm, "NaN"]);
    let out = dir.path().join("out");
    let line = refused(one_step_train(&model, &ids, &out, &[]), &out);
    assert_mentions(&line, &["model.safetensors", norm, "NaN"]);
}

/// clap's refusals were up to six lines (the message, a usage block, a tip); every other error
/// is one.
#[test]
fn usage_errors_are_one_line() {
    let mo = |extra: &[&str]| merge_args(Path::new("b"), Path::new("a"), Path::new("o"), extra);
    let argv = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for args in [
        argv(&["merge", "--base", "x"]),
        argv(&["merge", "--bogus"]),
        mo(&["--part", "0/2"]),
        mo(&["--part", "-1/2"]),
        argv(&["frobnicate"]),
    ] {
        let line = one_line_error(&run_err(&args));
        assert!(line.contains("--help"), "{args:?}: {line}");
    }
    let line = one_line_error(&run_err(["merge", "--base", "x"]));
    assert_mentions(&line, &["--adapter", "--out"]);
}

/// Rewrites tensor `name` of `file` with another shape and the leading bytes of its data.
fn reshape_tensor(file: &Path, name: &str, shape: &[usize]) {
    let mut t = read(file);
    let x = t.get_mut(name).unwrap();
    let n: usize =
        shape.iter().product::<usize>() * x.data.len() / x.shape.iter().product::<usize>();
    x.data.truncate(n);
    x.shape = shape.to_vec();
    write_tensors(file, &t);
}

/// A quantized base whose scales contradict its config.json but still divide the weight:
/// compressed-tensors `pack-quantized` with one scale per row where the config says groups of
/// 32, compressed-tensors FP8 with half the rows' scales where it says one per row, and
/// transformers FP8 with one scale where `weight_block_size` makes a 2x2 grid. The scan read
/// the layout from the scales alone, so `dequantize` and `merge` wrote a checkpoint the
/// libraries themselves would not load.
#[test]
fn quantized_scales_that_contradict_the_config_are_refused() {
    let q = "model.layers.0.self_attn.q_proj";
    for (fx, scale, shape, want) in [
        ("quant/ct_pack", "weight_scale", vec![64, 1], "groups of 32"),
        (
            "quant/ct_fp8",
            "weight_scale",
            vec![32, 1],
            "one scale per row",
        ),
        (
            "quant/fp8_e5m2",
            "weight_scale_inv",
            vec![1, 1],
            "does not tile",
        ),
    ] {
        let (dir, model) = scratch("m");
        copy_dir(&fixture(fx), &model);
        reshape_tensor(
            &model.join("model.safetensors"),
            &format!("{q}.{scale}"),
            &shape,
        );
        let out = dir.path().join("out");
        let line = refused(dequantize_args(&model, &out, &[]), &out);
        assert_mentions(&line, &[q, want]);
        assert!(
            line.contains("config.json") || line.contains("model.safetensors"),
            "{line}"
        );
    }
    // A compressed-tensors config that cannot be read is refused, not ignored.
    let (dir, model) = edited_copy("quant/ct_pack", "config.json", |c| {
        c["quantization_config"]["config_groups"] = serde_json::json!([]);
    });
    let out = dir.path().join("out");
    let line = refused(dequantize_args(&model, &out, &[]), &out);
    assert_mentions(&line, &["config.json", "config_groups"]);
}

/// `rms_norm_eps` was read as any number, so a negative one gave a NaN loss: `eval` reported it
/// with exit 0 and `train` failed naming neither config.json nor the field.
#[test]
fn a_negative_rms_norm_eps_is_refused_naming_the_config() {
    let (_dir, model) = edited_copy("llama/base", "config.json", |c| {
        c["rms_norm_eps"] = (-1.0).into()
    });
    let ids = fixture("text/tiny_ids.safetensors");
    let line = one_line_error(&run_err(eval_cpu_args(&model, &["--input-ids", s(&ids)])));
    assert_mentions(&line, &["config.json", "rms_norm_eps"]);
}

/// A GPTQ base whose config.json `bits` (5) or `group_size` (0) no layout has was reported by
/// `merge` as "adapter module(s) do not match the base … no base tensor `…q_proj.weight`" (the
/// scan's unsupported-tensor error was raised only when dequantizing); `dequantize` named the
/// cause, and now `merge` does too.
#[test]
fn a_gptq_config_no_layout_has_is_named_by_merge() {
    let (dir, model) = edited_copy("quant/gptq4_v1", "config.json", |c| {
        c["quantization_config"]["bits"] = 5.into();
    });
    let out = dir.path().join("out");
    let line = merge_refused(&model, &fixture("llama/adapters/qv_r8"), &out, &[]);
    assert_mentions(&line, &["GPTQ bits 5"]);
}

/// An AdaLoRA `init_r` of 0 was reported against `adapter_model.safetensors` (the weights'
/// path used for a config field), not the adapter_config.json that holds it.
#[test]
fn an_adalora_config_error_names_the_config() {
    let (_dir, ad) = edited_copy("llama/adapters/adalora", "adapter_config.json", |c| {
        c["init_r"] = 0.into()
    });
    let line = one_line_error(&run_err(inspect_args(&ad, &[])));
    assert_mentions(&line, &["adapter_config.json", "init_r"]);
}

/// `--out k.safetensors/` for a one-file output failed only at write time, as exit 3
/// ("Not a directory"); it is bad usage, refused before anything is written.
#[test]
fn a_file_output_with_a_trailing_slash_is_bad_usage() {
    let (dir, _model, ad) = llama_and_qv_r8_copies("m", "qv");
    let out = format!("{}/", dir.path().join("k.safetensors").display());
    let line = one_line_error(&run_err(convert_args(&ad, "kohya", Path::new(&out), &[])));
    assert_mentions(&line, &["k.safetensors/", "drop the slash"]);
    assert!(!dir.path().join("k.safetensors").exists());
}

/// Review of the round: parts `1/2` and `2/2` of one merge, two recipe steps into one output
/// folder, are how `--part` runs (each writes its own part files; `finalize` joins them), not
/// two steps writing the same output; a third step there is still refused.
#[test]
fn recipe_parts_of_one_merge_share_their_output() {
    let part_step = |name: &str, part: &str| {
        merge_step(name, "../base", "o")
            + &format!("max_shard_size = \"20KB\"\npart = \"{part}\"\n")
    };
    let (dir, recipe) = recipe_case(&(part_step("p1", "1/2") + &part_step("p2", "2/2")));
    run_ok(run_args(&recipe, &["--quiet"]));
    let out = dir.path().join("r/o");
    run_ok(finalize_args(&out, &["--quiet"]));
    let one = dir.path().join("one");
    run_ok(merge_args(
        &dir.path().join("base"),
        &dir.path().join("qv"),
        &one,
        &["--max-shard-size", "20KB", "--quiet"],
    ));
    // The finalized parts hold the one-process merge's tensors (the provenance metadata names
    // the inputs as each run was given them).
    assert!(
        read_checkpoint(&out) == read_checkpoint(&one),
        "parts vs one run"
    );
    std::fs::write(
        &recipe,
        part_step("p1", "1/2") + &part_step("p2", "2/2") + &merge_step("m", "../base", "o"),
    )
    .unwrap();
    let line = one_line_error(&run_err(run_args(&recipe, &["--dry-run"])));
    assert_mentions(&line, &["write the same output"]);
}

/// Review of the round: with `--allow-unmatched`, a module on a GPTQ weight lorakit cannot read
/// (config `bits` 5) is skipped with the scan's cause in its warning, and the rest merges (the
/// unreadable weights copied as they are), as before the round; without it, the cause is the
/// error (`a_gptq_config_no_layout_has_is_named_by_merge`).
#[test]
fn allow_unmatched_skips_a_module_on_an_unreadable_gptq_weight() {
    let (dir, model) = edited_copy("quant/gptq4_v1", "config.json", |c| {
        c["quantization_config"]["bits"] = 5.into();
    });
    let out = dir.path().join("out");
    let v: serde_json::Value = serde_json::from_str(&run_ok(merge_args(
        &model,
        &fixture("llama/adapters/embed"),
        &out,
        &["--allow-unmatched", "--json"],
    )))
    .unwrap();
    let unmatched = v["unmatched"].to_string();
    assert_mentions(&unmatched, &["q_proj", "GPTQ bits 5"]);
    assert!(v["tensors_merged_count"].as_u64().unwrap() >= 1, "{v}");
}
