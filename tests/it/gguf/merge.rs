//! `merge --base MODEL.gguf` through the binary: against PEFT's merge_and_unload (F32 base,
//! quantized bases within their rounding), unmerge, refusals, split output, Qwen2, weighted
//! adapters.

use super::*;

/// An F32 GGUF base (the fixture Llama as convert_hf_to_gguf lays it out) merged with PEFT
/// adapters equals PEFT's own merge_and_unload once the q/k permutation is undone (1e-6
/// relative per tensor, as every safetensors merge test); untouched tensors are byte copies.
/// rslora_all adapts every linear module, k_proj included (4 q heads, 2 kv heads); embed is
/// an embedding LoRA, whose adapter also holds the base embedding PEFT saves beside it
/// (`embed_tokens.base_layer.weight`): skipped as llama.cpp's converter skips it, the GGUF
/// base's own `token_embd` is W0 (it was refused as a modules_to_save tensor).
#[test]
fn merge_into_an_f32_gguf_equals_the_peft_merge() {
    for case in ["qv_r8", "rslora_all", "embed"] {
        let (_dir, out) = scratch("m.gguf");
        let v = merge_json(
            g("llama_f32.gguf"),
            fixture(&format!("llama/adapters/{case}")),
            &out,
            &[],
        );
        assert_eq!(v["operation"], "merge");
        assert_eq!(v["files"], serde_json::json!([s(&out)]));
        let got = hf_view(&out);
        let base = hf_view(&fixture("gguf/llama_f32.gguf"));
        let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
        assert_eq!(got.len(), base.len());
        let mut changed = 0;
        for (name, (ty, shape, vals, bytes)) in &got {
            assert_eq!(*ty, GgmlType::F32, "{name}");
            match reference.get(name) {
                Some(r) => {
                    assert_eq!(*shape, r.shape, "{name}");
                    let e = rel_err(vals, &r.f32());
                    assert!(e <= 1e-6, "{case} {name}: relative error {e:e}");
                    changed += 1;
                }
                None => assert_eq!(*bytes, base[name].3, "{case} {name}: not a byte copy"),
            }
        }
        assert_eq!(changed, reference.len(), "{case}");
        assert_eq!(v["tensors_merged_count"], changed);
        // F32 stores the f32 merge exactly.
        for t in v["merged_tensors"].as_array().unwrap() {
            assert_eq!(t["quant_rel_fro_error"], 0.0);
        }
    }
}

/// Per block of 32: the largest error Q8_0 (`d = amax/127` stored as f16, `q = round(x/d)`)
/// or Q4_0 (`d = max/-8`, one level clipped at the far end) can make.
pub(super) fn block_bound(ty: GgmlType, block: &[f32]) -> f32 {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    match ty {
        // Rounding (d/2) plus 127 steps of the f16 rounding of d (≤ d·2⁻¹¹).
        GgmlType::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.0001,
        // One clipped level (|d|) plus 8 steps of the f16 rounding of d.
        GgmlType::Q4_0 => amax / 8.0 * (1.0 + 8.0 / 2048.0) * 1.0001,
        _ => unreachable!(),
    }
}

/// Quantized bases: with `--outtype f32` the merge is the dequantized base plus PEFT's ΔW
/// (1e-6 relative); with `keep` each merged tensor is stored in its base type and differs from
/// that f32 merge by no more than the type's rounding, block by block, and the report states
/// that error.
#[test]
fn merge_into_quantized_gguf_keeps_types_within_their_rounding() {
    let f32_base = hf_view(&fixture("gguf/llama_f32.gguf"));
    let peft = read(&fixture("llama/merged/qv_r8.safetensors"));
    let adapter = fixture("llama/adapters/qv_r8");
    for (file, ty) in [
        ("llama_q8_0.gguf", GgmlType::Q8_0),
        ("llama_q4_0.gguf", GgmlType::Q4_0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let qbase = hf_view(&fixture(&format!("gguf/{file}")));
        // The exact merge of this base: its dequantized values plus PEFT's ΔW.
        let expected: BTreeMap<&String, Vec<f32>> = peft
            .iter()
            .map(|(name, r)| {
                let merged = r.f32();
                let delta = merged.iter().zip(&f32_base[name].2).map(|(m, b)| m - b);
                (
                    name,
                    qbase[name]
                        .2
                        .iter()
                        .zip(delta)
                        .map(|(q, d)| q + d)
                        .collect(),
                )
            })
            .collect();
        let f32_out = dir.path().join("f32.gguf");
        merge_json(g(file), s(&adapter), &f32_out, &["--outtype", "f32"]);
        let got = hf_view(&f32_out);
        for (name, want) in &expected {
            assert_eq!(got[*name].0, GgmlType::F32);
            let e = rel_err(&got[*name].2, want);
            assert!(e <= 1e-6, "{file} {name}: {e:e}");
        }
        let keep_out = dir.path().join("keep.gguf");
        let v = merge_json(g(file), s(&adapter), &keep_out, &[]);
        assert_eq!(v["outtype"], "keep");
        let got = hf_view(&keep_out);
        for (name, (t, _, vals, bytes)) in &got {
            assert_eq!(*t, qbase[name].0, "{name}: type kept");
            let Some(want) = expected.get(name) else {
                assert_eq!(*bytes, qbase[name].3, "{name}: byte copy");
                continue;
            };
            let mut max = 0f64;
            for (i, (gb, wb)) in vals.chunks(32).zip(want.chunks(32)).enumerate() {
                let bound = block_bound(ty, wb);
                for (x, y) in gb.iter().zip(wb) {
                    let e = (x - y).abs();
                    assert!(e <= bound, "{file} {name} block {i}: {e} > {bound}");
                    max = max.max(e as f64);
                }
            }
            let row = v["merged_tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| names::hf_name(r["name"].as_str().unwrap()).as_ref() == Some(name))
                .unwrap();
            let reported = row["quant_max_abs_error"].as_f64().unwrap();
            assert!(
                max > 0.0 && (reported - max).abs() <= 1e-6 * max + 1e-7,
                "{name}: {reported} vs {max}"
            );
            assert_eq!(row["type"], ty.name());
        }
    }
}

/// Merge then unmerge with --outtype f32 gives the base back (to f32 rounding).
#[test]
fn unmerge_from_a_gguf_restores_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/rslora_all");
    let (m, u) = (dir.path().join("m.gguf"), dir.path().join("u.gguf"));
    merge_json(g("llama_f32.gguf"), s(&adapter), &m, &[]);
    let v = merge_json(s(&m), s(&adapter), &u, &["--unmerge"]);
    assert_eq!(v["operation"], "unmerge");
    assert_restores(&u, &fixture("gguf/llama_f32.gguf"), "unmerged");
}

/// Refusals before anything is written: the output onto the base, an adapter whose modules
/// are not in the base, safetensors-only flags, --outtype on a safetensors base.
#[test]
fn gguf_merge_refusals_write_nothing() {
    let (dir, base) = scratch("base.gguf");
    std::fs::copy(fixture("gguf/llama_q8_0.gguf"), &base).unwrap();
    let before = std::fs::read(&base).unwrap();
    let qv = fixture("llama/adapters/qv_r8");
    let qv = s(&qv);
    let b = s(&base);
    let out = dir.path().join("o.gguf");
    let o = s(&out);
    let tiny = g("tiny.gguf");
    let hf_base = fixture("llama/base");
    let hf_base = s(&hf_base);
    // A safetensors output (not .gguf).
    let st_out = dir.path().join("merged");
    let st_out = s(&st_out);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["merge", "--base", b, "--adapter", qv, "--out", b],
            "output is also an input",
        ),
        (
            vec!["merge", "--base", &tiny, "--adapter", qv, "--out", o],
            "); pass --allow-unmatched to merge the rest",
        ),
        (
            vec![
                "merge",
                "--base",
                b,
                "--adapter",
                qv,
                "--out",
                o,
                "--dtype",
                "f16",
            ],
            "--dtype (use --outtype)",
        ),
        (
            vec![
                "merge",
                "--base",
                hf_base,
                "--adapter",
                qv,
                "--out",
                st_out,
                "--outtype",
                "q8_0",
            ],
            "--outtype sets the type of tensors merged into a GGUF base or written to a .gguf output",
        ),
    ];
    let allow = vec![
        "merge",
        "--base",
        &tiny,
        "--adapter",
        qv,
        "--out",
        o,
        "--allow-unmatched",
    ];
    let cases = cases
        .into_iter()
        .chain([(
            allow,
            "no adapter module matches a tensor of the GGUF base, so the merge would change nothing (--allow-unmatched never allows that): ",
        )]);
    for (args, want) in cases {
        let e = one_line_error(&run_err(&args));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let e = run_err([
        "merge",
        "--base",
        b,
        "--adapter",
        qv,
        "--out",
        o,
        "--outtype",
        "iq4_nl",
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown or unwritable GGUF type `iq4_nl`"));
    assert_eq!(std::fs::read(&base).unwrap(), before);
    assert_eq!(listing(dir.path()), ["base.gguf"]);
}

/// Split out and split in: `--max-shard-size` writes parts as gguf-py's `split_max_size` does
/// (here 4 parts of ≤ 100 kB of tensor data, `split.*` keys in each), they open as one model
/// equal to PEFT's merge, and unmerging from the split model gives the base back; `--dry-run`
/// plans the same parts and writes nothing.
#[test]
fn gguf_merge_splits_and_reads_its_split_output() {
    let (dir, out) = scratch("m.gguf");
    let adapter = fixture("llama/adapters/qv_r8");
    let v = merge_json(
        g("llama_f32.gguf"),
        s(&adapter),
        &out,
        &["--max-shard-size", "100KB"],
    );
    let files: Vec<String> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files[2].ends_with("m-00003-of-00004.gguf"));
    assert_eq!(
        listing(dir.path()),
        (1..=4)
            .map(|i| format!("m-0000{i}-of-00004.gguf"))
            .collect::<Vec<_>>()
    );
    let m = GgufModel::open(&files[3]).unwrap();
    for (i, f) in m.files.iter().enumerate() {
        let h = f.header();
        assert!(
            f.tensors().iter().map(|t| t.bytes).sum::<u64>() <= 100_000 || f.tensors().len() == 1
        );
        assert_eq!(h.get("split.no").and_then(|x| x.as_u64()), Some(i as u64));
        assert_eq!(
            h.get("split.tensors.count").and_then(|x| x.as_u64()),
            Some(21)
        );
    }
    let got = hf_view(Path::new(&files[0]));
    for (name, r) in read(&fixture("llama/merged/qv_r8.safetensors")) {
        let e = rel_err(&got[&name].2, &r.f32());
        assert!(e <= 1e-6, "{name}: {e:e}");
    }
    // --dry-run states the same layout and writes nothing.
    let dry = merge_json(
        g("llama_f32.gguf"),
        s(&adapter),
        &dir.path().join("dry.gguf"),
        &["--max-shard-size", "100KB", "--dry-run"],
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["files"].as_array().unwrap().len(), 4);
    assert_eq!(dry["tensors_merged_count"], 4);
    assert_eq!(listing(dir.path()).len(), 4);
    let back = dir.path().join("b.gguf");
    merge_json(&files[1], s(&adapter), &back, &["--unmerge"]);
    assert_restores(
        &back,
        &fixture("gguf/llama_f32.gguf"),
        "unmerged from the split model",
    );
}

/// Qwen2 (llama.cpp's Qwen2Model writes q/k unpermuted, attention biases kept): a BF16 GGUF
/// base merged with a PEFT adapter on q/k/v/o/down equals the float64 merge computed from the
/// files by the fixture generator — 1e-6 with `--outtype f32`, and within one bf16 rounding
/// (2⁻⁸ relative per element) with `keep`; biases and untouched tensors are byte copies.
#[test]
fn merge_into_a_qwen2_gguf_is_not_permuted() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/qwen2_lora");
    let expected = GgufModel::open(fixture("gguf/qwen2_lora.expected.gguf")).unwrap();
    let base = GgufModel::open(fixture("gguf/qwen2_bf16.gguf")).unwrap();
    for outtype in ["f32", "keep"] {
        let out = dir.path().join(format!("{outtype}.gguf"));
        let v = merge_json(
            g("qwen2_bf16.gguf"),
            s(&adapter),
            &out,
            &["--outtype", outtype],
        );
        assert_eq!(v["architecture"], "qwen2");
        assert_eq!(v["tensors_merged_count"], expected.len());
        let got = GgufModel::open(&out).unwrap();
        for (f, t) in got.tensors() {
            let Some((ef, et)) = expected.get(&t.name) else {
                let (bf, bt) = base.get(&t.name).unwrap();
                assert_eq!(f.view(t).data, bf.view(bt).data, "{}", t.name);
                continue;
            };
            let (x, y) = (f.dequantize(t).unwrap(), ef.dequantize(et).unwrap());
            if outtype == "f32" {
                let e = rel_err(&x, &y);
                assert!(e <= 1e-6, "{}: {e:e}", t.name);
            } else {
                assert_eq!(t.ty, GgmlType::BF16);
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= b.abs() / 256.0, "{}: {a} vs {b}", t.name);
                }
            }
        }
    }
}

/// Several weighted adapters with different tensor sets into one GGUF base: weighted_a at 0.7
/// and weighted_b at −0.4 equal PEFT's weighted `cat` merge (1e-6), as for safetensors bases.
#[test]
fn weighted_adapters_merge_into_a_gguf_as_peft_weighted_cat() {
    let (_dir, out) = scratch("m.gguf");
    let (a, b) = (
        fixture("llama/adapters/weighted_a"),
        fixture("llama/adapters/weighted_b"),
    );
    let weights = ["--weight", "0.7", "--adapter", s(&b), "--weight", "-0.4"];
    let extra = [&weights[..], &["--outtype", "f32"]].concat();
    let v = merge_json(g("llama_q8_0.gguf"), s(&a), &out, &extra);
    assert_eq!(v["adapters"][1]["weight"], -0.4);
    // Reference for this base: its dequantized values plus PEFT's weighted ΔW.
    let f32_base = hf_view(&fixture("gguf/llama_f32.gguf"));
    let q_base = hf_view(&fixture("gguf/llama_q8_0.gguf"));
    let got = hf_view(&out);
    let peft = read(&fixture("llama/merged/weighted.safetensors"));
    for (name, r) in &peft {
        let want: Vec<f32> = r
            .f32()
            .iter()
            .zip(&f32_base[name].2)
            .zip(&q_base[name].2)
            .map(|((m, b), q)| q + (m - b))
            .collect();
        let e = rel_err(&got[name].2, &want);
        assert!(e <= 1e-6, "{name}: {e:e}");
    }
    assert_eq!(v["tensors_merged_count"], peft.len());
}

/// A kohya file (underscored module names, `lora_down`/`lora_up`/`alpha`) merges into a GGUF
/// base by the Hugging Face names of the base's tensors, as into a safetensors base: qv_r8
/// written as kohya (an exact conversion, tested in `algebra/convert.rs`) gives the same
/// tensor bytes as the PEFT folder itself, q/k permutation and Q8_0 requantization included.
#[test]
fn a_kohya_file_merges_into_a_gguf_base_as_its_peft_folder() {
    let (dir, kohya) = scratch("qv_r8.safetensors");
    run_ok(convert_args(
        &fixture("llama/adapters/qv_r8"),
        "kohya",
        &kohya,
        &[],
    ));
    let (from_kohya, from_peft) = (dir.path().join("k.gguf"), dir.path().join("p.gguf"));
    let vk = merge_json(g("llama_q8_0.gguf"), s(&kohya), &from_kohya, &[]);
    merge_json(
        g("llama_q8_0.gguf"),
        fixture("llama/adapters/qv_r8"),
        &from_peft,
        &[],
    );
    assert_eq!(vk["tensors_merged_count"], 4, "{vk}");
    let (k, p) = (hf_view(&from_kohya), hf_view(&from_peft));
    assert_eq!(k.keys().collect::<Vec<_>>(), p.keys().collect::<Vec<_>>());
    for (name, t) in &k {
        assert_eq!(
            t.3, p[name].3,
            "{name}: bytes differ from the PEFT folder's merge"
        );
    }
}

/// A merge into a GGUF base writes one GGUF file: an output named like a safetensors file, or
/// like a folder (as a safetensors merge's output is), is refused before anything is written;
/// it held GGUF data under that name before (a newcomer's trial, 2026-12-06).
#[test]
fn gguf_merge_output_must_be_named_gguf() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["m.safetensors", "folder"] {
        let out = dir.path().join(name);
        let e = run_err(merge_args(
            &fixture("gguf/llama_q8_0.gguf"),
            &fixture("llama/adapters/qv_r8"),
            &out,
            &[],
        ));
        assert_mentions(
            &one_line_error(&e),
            &[name, "writes one GGUF file", "a name ending in .gguf"],
        );
    }
    assert!(listing(dir.path()).is_empty());
    let out = dir.path().join("M.GGUF");
    run_ok(merge_args(
        &fixture("gguf/llama_q8_0.gguf"),
        &fixture("llama/adapters/qv_r8"),
        &out,
        &["--quiet"],
    ));
    assert_eq!(listing(dir.path()), ["M.GGUF"]);
}

/// Merged tensors whose rows are not whole blocks of `--outtype` take llama-quantize's fallback
/// type: the table marks them and says why, as the JSON's `fallback_from` does (the fixture's
/// rows are 32 values, not whole 256-value Q4_K blocks: Q5_0).
#[test]
fn gguf_merge_table_says_why_a_tensor_took_the_fallback_type() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4.gguf");
    let text = run_ok(merge_args(
        &fixture("gguf/llama_q8_0.gguf"),
        &fixture("llama/adapters/qv_r8"),
        &out,
        &["--outtype", "q4_k"],
    ));
    assert_eq!(text.matches("Q8_0 → Q5_0*").count(), 4, "{text}");
    assert_mentions(
        &text,
        &["* 4 tensor(s) in llama-quantize's fallback type: their rows are not whole blocks of --outtype q4_k"],
    );
}

/// An unmerge says so in its summary, into a GGUF base and into a safetensors folder (it said
/// "tensors merged": a newcomer's trial, 2026-12-06).
#[test]
fn unmerge_summaries_say_unmerged() {
    let dir = tempfile::tempdir().unwrap();
    let qv = fixture("llama/adapters/qv_r8");
    let (g, st) = (dir.path().join("u.gguf"), dir.path().join("u"));
    let text = run_ok(merge_args(
        &fixture("gguf/llama_q8_0.gguf"),
        &qv,
        &g,
        &["--unmerge"],
    ));
    assert_mentions(&text, &["4 tensors unmerged (--outtype keep)"]);
    let text = run_ok(merge_args(&fixture("llama/base"), &qv, &st, &["--unmerge"]));
    assert_mentions(&text, &["4 tensors unmerged, 17 copied"]);
}

/// Issue #17: a GGUF merge pads its header (`lorakit.padding`, spaces) so that the untouched
/// tensors lie at their base offsets modulo the page (4096), whence the writer copies them by
/// direct I/O from the base's page cache. For a one-file and a split base, merged into one
/// file and into split files (and a merge of the output again, whose old padding goes): each
/// output file parses, every untouched tensor holds the base's bytes, and the copied bytes
/// whose offsets agree with their source's are at least those of any other disagreement (for
/// the one-file base into one file: all of them).
#[test]
fn gguf_merge_lines_untouched_tensors_up_with_the_base_pages() {
    const PAGE: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let qv = fixture("llama/adapters/qv_r8");
    let split_dir = dir.path().join("split_base");
    std::fs::create_dir(&split_dir).unwrap();
    merge_json(
        g("llama_q8_0.gguf"),
        &qv,
        &split_dir.join("b.gguf"),
        &["--max-shard-size", "40KB"],
    );
    let split_base = split_dir.join(&listing(&split_dir)[1]);
    let one = dir.path().join("one.gguf");
    merge_json(g("llama_q8_0.gguf"), &qv, &one, &[]);
    let cases: [(PathBuf, &[&str], bool); 5] = [
        (fixture("gguf/llama_q8_0.gguf"), &[], true),
        (
            fixture("gguf/llama_q8_0.gguf"),
            &["--max-shard-size", "20KB"],
            false,
        ),
        (split_base.clone(), &[], false),
        (split_base, &["--max-shard-size", "20KB"], false),
        (one, &[], true),
    ];
    let mut padded = 0;
    for (ci, (base, extra, all_agree)) in cases.iter().enumerate() {
        let out_dir = dir.path().join(format!("out{ci}"));
        std::fs::create_dir(&out_dir).unwrap();
        let v = merge_json(base, &qv, &out_dir.join("m.gguf"), extra);
        let merged: Vec<&str> = v["merged_tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(!merged.is_empty());
        let base = GgufModel::open(base).unwrap();
        let out = GgufModel::open(out_dir.join(&listing(&out_dir)[0])).unwrap();
        for f in &out.files {
            let h = f.header();
            let pads = h.metadata.iter().filter(|kv| kv.key == "lorakit.padding");
            match pads.map(|kv| &kv.value).collect::<Vec<_>>()[..] {
                [] => {}
                [lorakit::io::gguf::Value::String(s)] => {
                    assert!(s.bytes().all(|b| b == b' '), "case {ci}");
                    padded += 1;
                }
                ref other => panic!("case {ci}: padding entries {other:?}"),
            }
            // Copied bytes per disagreement (source − output offset, modulo the page).
            let mut by = BTreeMap::<u64, u64>::new();
            for t in &h.tensors {
                if merged.contains(&t.name.as_str()) {
                    continue;
                }
                let (bf, bt) = base.tensors().find(|(_, b)| b.name == t.name).unwrap();
                let (_, src, len) = bf.source(bt);
                let (_, at, _) = f.source(t);
                assert_eq!(f.view(t).data, bf.view(bt).data, "case {ci}: {}", t.name);
                *by.entry((src + PAGE - at % PAGE) % PAGE).or_default() += len;
            }
            let agree = by.get(&0).copied().unwrap_or(0);
            let what = format!("case {ci}, {}: {by:?}", f.path().display());
            assert!(by.values().all(|&n| n <= agree), "{what}");
            if *all_agree {
                assert_eq!(by.len(), 1, "{what}");
            }
        }
    }
    assert!(padded >= 3, "the fixtures' headers need padding");
}
