//! Session 16's PEFT-name and `check` findings (review rev16b) fixed on branch fixp16
//! (fixtures/gen/review16_peft.py): `check` without `--base` judging only Llama-named adapters by
//! the Llama module list; adapters PEFT saved under the module names transformers 5 gives a
//! checkpoint at load (conversion_mapping.py) placed on the on-disk names.

use super::check::{check_json, fired, target};
use super::common::*;

/// `check --target vllm` (and SGLang, LoRAX) without `--base` on `all-linear` adapters of Phi-3
/// (fused `qkv_proj`, `gate_up_proj`) and OPT (`out_proj`, `fc1`, `fc2`): vLLM adapts every
/// `LinearBase` of the model (`get_supported_lora_modules`), and these are Phi-3's and OPT's own
/// linear layers; the Llama list cannot judge them without the base. Before: every such module
/// `vllm.unsupported_module` (FAILS), while the same folder with `--base` LOADS.
#[test]
fn check_without_base_judges_only_llama_names_by_the_llama_list() {
    for case in ["phi3_nobase", "opt_nobase"] {
        let adapter = fixture(&format!("review16/peft/{case}/adapter"));
        let (_, report) = check_json(&adapter, &["--target", "vllm,sglang,lorax"]);
        for t in ["vllm", "sglang", "lorax"] {
            let rule = format!("{t}.unsupported_module");
            assert!(
                !fired(target(&report, t)).contains(&rule),
                "{case}: {rule} fired: {report}"
            );
        }
    }
}
