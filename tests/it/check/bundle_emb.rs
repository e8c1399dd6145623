//! A kohya LoRA with textual-inversion embeddings bundled as A1111 reads them
//! (`bundle_emb.{name}.string_to_param.*`; fixtures/gen/bundle_emb_fixtures.py on the tiny SD1
//! pipeline's kohya file). Every lorakit command refused such a file ("not a LoRA/LyCORIS
//! tensor"); now the LoRA is read and the embeddings are left out, saying so.

use super::{check_json, fired, fixture, outcome, read_json, s, target};
use crate::it::common::{merge_args, ok_stderr, read_checkpoint, scratch_all};

const KEYS: [&str; 2] = [
    "bundle_emb.mytoken.string_to_param.*",
    "bundle_emb.other.string_to_param.*",
];

/// diffusers 0.42.1 raised on the bundle file ("… contain `'lora'` substring": the `bundle_emb`
/// keys have no SD prefix, so the file is not converted, and have no `lora`) and loaded the
/// same file without them (MANIFEST `diffusers_load`); ComfyUI skips each embedding key with
/// "lora key not loaded" (`comfy/lora.py` `load_lora`) and applies the rest.
#[test]
fn bundled_embeddings_fail_diffusers_and_warn_in_comfy() {
    let rec = read_json(fixture("bundle_emb/MANIFEST.json"));
    let did = &rec["diffusers_load"];
    assert_eq!(did["bundle"]["outcome"], "raised", "{did}");
    assert!(did["bundle"]["error"].as_str().unwrap().contains("'lora'"));
    assert_eq!(did["kohya"]["outcome"], "ok", "{did}");
    for (file, diffusers, comfy) in [
        (
            "bundle_emb/bundle.safetensors",
            "fails",
            "loads_with_warnings",
        ),
        ("pipeline_sd1/kohya.safetensors", "", "loads"),
    ] {
        let (_, r) = check_json(&fixture(file), &["--target", "diffusers,comfy"]);
        assert_eq!(r["modules_count"], 5, "{file}: {r}");
        let d = target(&r, "diffusers");
        let c = target(&r, "comfy");
        assert_eq!(c["verdict"], comfy, "{file}: {c}");
        let bundled = file.starts_with("bundle_emb");
        assert_eq!(
            fired(d).contains(&"diffusers.key_without_lora".to_owned()),
            bundled,
            "{file}: {d}"
        );
        assert_eq!(
            fired(c) == ["comfy.bundled_embeddings"],
            bundled,
            "{file}: {c}"
        );
        if bundled {
            assert_eq!(outcome(d), diffusers, "{file}: {d}");
            for f in [d, c]
                .iter()
                .flat_map(|t| t["findings"].as_array().unwrap())
            {
                if f["rule"] == "diffusers.key_without_lora"
                    || f["rule"] == "comfy.bundled_embeddings"
                {
                    assert_eq!(f["items"], serde_json::json!(KEYS), "{f}");
                }
            }
            // The file is not converted: no rule of converted SD files fires.
            for rule in ["diffusers.alpha_lost", "diffusers.te_key"] {
                assert!(!fired(d).contains(&rule.to_owned()), "{file}: {d}");
            }
        }
    }
}

/// Beside diffusers' own names (never converted): the Flux loader wants `lora` in any key, not
/// every one, and loads the file (MANIFEST: all 5 modules; `check` had called it refused); the
/// SD loader wants it in every key and raises (`check` had said it loads).
#[test]
fn a_bundled_embedding_beside_diffusers_names_fails_as_the_pipelines_loader_does() {
    let rec = read_json(fixture("bundle_emb/MANIFEST.json"));
    for (case, layers) in [("flux_aitk_bundle", Some(5)), ("sd_diffusers_bundle", None)] {
        let did = &rec["diffusers_load"][case];
        let (_, r) = check_json(
            &fixture(&format!("bundle_emb/{case}.safetensors")),
            &["--target", "diffusers"],
        );
        let d = target(&r, "diffusers");
        match layers {
            Some(n) => {
                assert_eq!(
                    (&did["outcome"], &did["lora_layers"]),
                    (&"ok".into(), &n.into())
                );
                assert_eq!(outcome(d), "loads", "{case}: {d}");
            }
            None => {
                assert_eq!(did["outcome"], "raised", "{did}");
                assert_eq!(outcome(d), "fails", "{case}: {d}");
                assert_eq!(fired(d), ["diffusers.key_without_lora"], "{case}: {d}");
            }
        }
    }
}

/// `merge` of the bundle file writes the same bytes as the file without the embeddings, and
/// warns naming them; `inspect` lists them.
#[test]
fn merge_leaves_bundled_embeddings_out_and_says_so() {
    let r = crate::it::common::inspect_json(&fixture("bundle_emb/bundle.safetensors"), &[]);
    assert_eq!(r["bundled_embeddings"], serde_json::json!(KEYS), "{r}");
    assert_eq!(r["modules"].as_array().map(Vec::len), Some(5), "{r}");
    let (_dir, [with, without]) = scratch_all(["with", "without"]);
    let unet = fixture("pipeline_sd1/unet");
    let mut stderr = String::new();
    for (adapter, out) in [
        ("bundle_emb/bundle.safetensors", &with),
        ("pipeline_sd1/kohya.safetensors", &without),
    ] {
        // The text-encoder modules are not the UNet's.
        let args = merge_args(&unet, &fixture(adapter), out, &["--allow-unmatched"]);
        stderr = ok_stderr(args);
        if adapter.starts_with("bundle_emb") {
            assert!(
                stderr.contains("2 bundled textual-inversion embedding tensor(s) (mytoken, other)"),
                "{stderr}"
            );
        }
    }
    assert!(!stderr.contains("bundled"), "{stderr}");
    // The same tensors, byte for byte (the provenance metadata names each adapter).
    let tensors = |d: &std::path::Path| {
        read_checkpoint(d)
            .into_iter()
            .map(|(k, t)| (k, t.dtype, t.shape, t.data))
            .collect::<Vec<_>>()
    };
    let (a, b) = (tensors(&with), tensors(&without));
    assert!(!a.is_empty() && a == b, "{} vs {}", s(&with), s(&without));
    // The other commands that write an adapter say so too (review 2026-12-07).
    let bundle = fixture("bundle_emb/bundle.safetensors");
    let (dir, [r, c]) = scratch_all(["r.safetensors", "c.safetensors"]);
    let kohya = fixture("pipeline_sd1/kohya.safetensors");
    for args in [
        vec!["resize", s(&bundle), "--rank", "1", "--out", s(&r)],
        vec![
            "combine",
            "--adapter",
            s(&bundle),
            "--adapter",
            s(&kohya),
            "--method",
            "cat",
            "--out",
            s(&c),
        ],
    ] {
        let err = ok_stderr(&args);
        assert!(err.contains("bundled textual-inversion"), "{args:?}: {err}");
    }
    // A file of embeddings only: no adapter, said so.
    let only = dir.path().join("only.safetensors");
    let zeros = [0u8; 16];
    crate::it::common::write_views(
        &only,
        &[(KEYS[0], safetensors::Dtype::F32, &[1, 4], &zeros)],
    );
    let out = crate::it::common::run_exit(["check", s(&only)], 2);
    let err = crate::it::common::one_line_error(&out);
    assert!(err.contains("only textual-inversion embeddings"), "{err}");
    // A NaN in a bundled embedding (A1111 would load it): refused by check, naming it.
    let nan = dir.path().join("nan.safetensors");
    let mut bytes = std::fs::read(&bundle).unwrap();
    // Its first value, found through the safetensors header.
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let v: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
    let start = v[KEYS[0]]["data_offsets"][0].as_u64().unwrap() as usize + 8 + header;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&nan, bytes).unwrap();
    let out = crate::it::common::run_exit(["check", s(&nan), "--target", "comfy"], 2);
    let err = crate::it::common::one_line_error(&out);
    assert!(err.contains(KEYS[0]) && err.contains("not finite"), "{err}");
}
