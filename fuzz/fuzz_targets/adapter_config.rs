//! The PEFT adapter_config.json parser and its rank/alpha pattern matching (user-supplied
//! regexes). Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit::adapter::formats::peft::PeftConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = PeftConfig::parse(std::path::Path::new("adapter_config.json"), data) {
        for name in ["model.layers.0.self_attn.q_proj", "lm_head", "a.b_c", ""] {
            let _ = cfg.rank_for(name);
            let _ = cfg.alpha_for(name);
        }
    }
});
