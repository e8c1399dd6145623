//! Hugging Face module names ↔ GGUF tensor names, and llama.cpp's q/k row permutation, for the
//! architectures lorakit maps (Llama and Mistral as `llama`, Qwen2, Qwen3, Gemma, Gemma2, Gemma3,
//! Phi-3/3.5/4 as `phi3`).
//!
//! Names follow llama.cpp `gguf-py/gguf/tensor_mapping.py` (`TensorNameMap` for
//! `MODEL_ARCH.LLAMA`, `QWEN2`, `QWEN3`, `GEMMA`, `GEMMA2`, `GEMMA3`, `PHI3`:
//! `model.layers.N.self_attn.q_proj` → `blk.N.attn_q`, `model.embed_tokens` → `token_embd`,
//! `lm_head` → `output`, …), restricted to the tensors `constants.py`'s `MODEL_TENSORS[arch]`
//! lists ([`block_extra`], [`why_unmapped`]); the functions without an architecture
//! ([`gguf_module`], [`hf_name`]) use the Llama table. Gemma's converters also add 1 to every
//! `*norm.weight` (`GemmaModel.modify_tensors`, `Gemma3Model.norm_shift`, `conversion/gemma.py`):
//! a ΔW added to a GGUF norm is added to HF's norm + 1, so additive merges need no shift. The
//! permutation is
//! `LlamaModel.permute` of llama.cpp `conversion/llama.py` (formerly `convert_hf_to_gguf.py`),
//! applied by `LlamaModel.modify_tensors` to `q_proj` with `n_head` heads and to `k_proj` with
//! `n_head_kv` heads, and only by the `LlamaModel` converter (HF `LlamaForCausalLM`,
//! `MistralForCausalLM`, …: GGUF architecture `llama`); `Qwen2Model` writes q/k unpermuted.
//! Phi-3's fused projections ([`block_extra`]) are written whole: `Phi3MiniModel`
//! (`conversion/phi.py:39-211`) has no `modify_tensors`, so `TextModel.modify_tensors`
//! (`conversion/base.py:685-744`; its q/k/v fusion, `--fuse-qkv`, is off by default) maps them unsplit and
//! unpermuted, as the adapter converter does with their LoRA pairs.
//!
//! Must not read tensor data or guess a name: a module or an architecture outside these maps is
//! reported as unmapped (with [`why_unmapped`]'s reason) and the callers refuse it.

/// Block-level module suffixes and their GGUF names (`tensor_mapping.py`).
const BLOCK: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// Block-level modules of the architectures that have them beyond [`BLOCK`] (looked up first,
/// so they override it): Qwen3's and Gemma3's q/k norms (`ATTN_Q_NORM`, `ATTN_K_NORM`), and
/// Gemma2/3's sandwich norms, where `MODEL_TENSORS` lists `ATTN_POST_NORM` and `FFN_PRE_NORM`
/// instead of `FFN_NORM`: `post_attention_layernorm` → `post_attention_norm`,
/// `pre_feedforward_layernorm` → `ffn_norm`, `post_feedforward_layernorm` → `post_ffw_norm`;
/// Phi-3's fused `self_attn.qkv_proj` → `attn_qkv` (`ATTN_QKV`, `tensor_mapping.py:245`) and
/// `mlp.gate_up_proj` → `ffn_up` (`FFN_UP`, `tensor_mapping.py:515`: gate rows then up rows, as
/// llama.cpp's phi3 graph splits them).
fn block_extra(arch: &str) -> &'static [(&'static str, &'static str)] {
    const QK_NORM: [(&str, &str); 2] = [
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
    ];
    const SANDWICH: [(&str, &str); 3] = [
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
    ];
    const FUSED: [(&str, &str); 2] = [
        ("self_attn.qkv_proj", "attn_qkv"),
        ("mlp.gate_up_proj", "ffn_up"),
    ];
    match arch {
        "phi3" => &FUSED,
        "qwen3" => &QK_NORM,
        "gemma2" => &SANDWICH,
        "gemma3" => &[
            QK_NORM[0],
            QK_NORM[1],
            SANDWICH[0],
            SANDWICH[1],
            SANDWICH[2],
        ],
        _ => &[],
    }
}

/// Why `hf` has no GGUF tensor in `arch` where the reason is the converter's, not a gap in the
/// table: `GemmaModel` and `Gemma2Model` drop `lm_head.weight` (`filter_tensors`: the output
/// is tied to `token_embd`; `MODEL_TENSORS` has no `OUTPUT`), and `convert_lora_to_gguf.py`
/// then drops an lm_head LoRA without a word.
pub fn why_unmapped(arch: &str, hf: &str) -> Option<&'static str> {
    (matches!(arch, "gemma" | "gemma2") && hf == "lm_head").then_some(
        "llama.cpp's Gemma models have no output tensor (it is tied to token_embd) and its converter silently drops lm_head LoRAs",
    )
}

/// Whether GGUF tensor `g` (`ffn_gate`, …, without the block prefix) is missing from
/// `MODEL_TENSORS[arch]` although [`BLOCK`] names it: Phi-3 has no `FFN_GATE`
/// (`constants.py:3083-3098`; its gate is the first half of `ffn_up`), so a `gate_proj` there
/// is unmapped as the converter's `format_tensor_name` would refuse it.
fn missing(arch: &str, g: &str) -> bool {
    arch == "phi3" && g == "ffn_gate"
}

/// Model-level modules and their GGUF names.
const TOP: &[(&str, &str)] = &[
    ("embed_tokens", "token_embd"),
    ("norm", "output_norm"),
    ("lm_head", "output"),
];

/// The GGUF architectures whose tensor names this module maps, and whether their converter
/// permutes q/k rows.
pub const ARCHITECTURES: &[(&str, bool)] = &[
    ("llama", true),
    ("qwen2", false),
    ("qwen3", false),
    ("gemma", false),
    ("gemma2", false),
    ("gemma3", false),
    ("phi3", false),
];

/// Whether `arch` is mapped, and if so whether q/k rows are permuted.
pub fn permutes(arch: &str) -> Option<bool> {
    ARCHITECTURES
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|&(_, p)| p)
}

/// [`permutes`], or the error for a file (`path`) of an architecture this module does not map,
/// naming those it does: what every GGUF reader and merge says of an unknown architecture.
pub fn permutes_or_refuse(arch: &str, path: &std::path::Path) -> crate::error::InputResult<bool> {
    permutes(arch).ok_or_else(|| {
        crate::error::InputError::invalid(
            path,
            format!(
                "{}: lorakit maps module names for {} only",
                if arch.is_empty() {
                    "no general.architecture string".to_owned()
                } else {
                    format!("GGUF architecture `{arch}`")
                },
                ARCHITECTURES
                    .iter()
                    .map(|(a, _)| *a)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// Which projection a module is, for the permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rope {
    Q,
    K,
    None,
}

/// The GGUF tensor (without `.weight`) of a Hugging Face module path
/// (`model.layers.3.self_attn.q_proj` → `blk.3.attn_q`), and whether it is a q or k projection.
/// `None` for modules outside the map. The Llama table: see [`gguf_module_in`].
pub fn gguf_module(hf: &str) -> Option<(String, Rope)> {
    gguf_module_in("llama", hf)
}

/// [`gguf_module`] for GGUF architecture `arch`.
pub fn gguf_module_in(arch: &str, hf: &str) -> Option<(String, Rope)> {
    let name = hf.strip_prefix("model.").unwrap_or(hf);
    if why_unmapped(arch, name).is_some() {
        return None;
    }
    if let Some(&(_, g)) = TOP.iter().find(|(h, _)| *h == name) {
        return Some((g.to_owned(), Rope::None));
    }
    let rest = name.strip_prefix("layers.")?;
    let (n, module) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let &(_, g) = block_extra(arch)
        .iter()
        .chain(BLOCK)
        .find(|(h, _)| *h == module)
        .filter(|(_, g)| !missing(arch, g))?;
    let rope = match g {
        "attn_q" => Rope::Q,
        "attn_k" => Rope::K,
        _ => Rope::None,
    };
    Some((format!("blk.{n}.{g}"), rope))
}

/// The Hugging Face module of a GGUF tensor (inverse of [`gguf_module`]; `.weight` and
/// `.bias` suffixes are kept). The Llama table: see [`hf_name_in`].
pub fn hf_name(gguf: &str) -> Option<String> {
    hf_name_in("llama", gguf)
}

/// [`hf_name`] for GGUF architecture `arch` (inverse of [`gguf_module_in`]).
pub fn hf_name_in(arch: &str, gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if let Some(&(h, _)) = TOP
        .iter()
        .find(|(h, g)| *g == stem && why_unmapped(arch, h).is_none())
    {
        let pre = if h == "lm_head" { "" } else { "model." };
        return Some(format!("{pre}{h}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (n, g) = rest.split_once('.')?;
    let &(h, _) = block_extra(arch)
        .iter()
        .chain(BLOCK)
        .find(|(_, gg)| *gg == g && !missing(arch, g))?;
    Some(format!("model.layers.{n}.{h}.{suffix}"))
}

/// Row `r` of the permuted tensor comes from row `source_row(r)` of the Hugging Face one:
/// `w.reshape(n_head, 2, rows / n_head / 2, …).swapaxes(1, 2)` sends HF row
/// `h·hd + j·hd/2 + i` to GGUF row `h·hd + 2i + j` (hd = rows / n_head).
pub fn source_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head;
    let half = hd / 2;
    let (h, within) = (r / hd, r % hd);
    let (i, j) = (within / 2, within % 2);
    h * hd + j * half + i
}

/// Whether `rows` can be permuted with `n_head` heads (`rows` a multiple of `2·n_head`).
pub fn permutable(rows: usize, n_head: usize) -> bool {
    n_head > 0 && rows.is_multiple_of(2 * n_head)
}

/// Applies `LlamaModel.permute` to the rows of a row-major `rows × cols` matrix.
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    move_rows(w, rows, cols, |r| (r, source_row(r, rows, n_head)))
}

/// Undoes [`permute_rows`].
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    move_rows(w, rows, cols, |r| (source_row(r, rows, n_head), r))
}

/// A copy of `w` (`rows × cols`) with, for each `r`, `(to, from) = pair(r)`: row `from` of `w`
/// as row `to`.
fn move_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    pair: impl Fn(usize) -> (usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        let (to, from) = pair(r);
        out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layer 1's `hf` module of `arch` is GGUF's `blk.1.{g}` and back; returns its rope.
    fn layer_maps_both_ways(arch: &str, hf: &str, g: &str) -> Rope {
        let hf = format!("model.layers.1.{hf}");
        let (got, rope) = gguf_module_in(arch, &hf).unwrap();
        assert_eq!(got, format!("blk.1.{g}"));
        assert_eq!(
            hf_name_in(arch, &format!("blk.1.{g}.weight")).unwrap(),
            format!("{hf}.weight")
        );
        rope
    }

    #[test]
    fn names_map_both_ways() {
        for (hf, g) in [
            ("model.layers.12.self_attn.q_proj", "blk.12.attn_q"),
            ("model.layers.0.mlp.down_proj", "blk.0.ffn_down"),
            ("model.embed_tokens", "token_embd"),
            ("lm_head", "output"),
        ] {
            assert_eq!(gguf_module(hf).unwrap().0, g);
            assert_eq!(
                hf_name(&format!("{g}.weight")).unwrap(),
                format!("{hf}.weight")
            );
        }
        assert_eq!(
            gguf_module("model.layers.1.self_attn.k_proj").unwrap().1,
            Rope::K
        );
        assert_eq!(gguf_module("model.layers.x.self_attn.k_proj"), None);
        assert_eq!(gguf_module("model.layers.1.mlp.fc1"), None);
        assert_eq!(gguf_module("model.layers.1.self_attn.q_norm"), None);
        assert_eq!(
            gguf_module_in("qwen3", "model.layers.1.self_attn.k_norm").unwrap(),
            ("blk.1.attn_k_norm".into(), Rope::None)
        );
        assert_eq!(
            hf_name_in("qwen3", "blk.0.attn_q_norm.weight").unwrap(),
            "model.layers.0.self_attn.q_norm.weight"
        );
        // tensor_mapping.py under MODEL_TENSORS[GEMMA2]: no FFN_NORM, so
        // post_attention_layernorm is ATTN_POST_NORM and ffn_norm is FFN_PRE_NORM's name.
        for (arch, hf, g) in [
            ("gemma", "post_attention_layernorm", "ffn_norm"),
            ("gemma2", "post_attention_layernorm", "post_attention_norm"),
            ("gemma2", "pre_feedforward_layernorm", "ffn_norm"),
            ("gemma3", "post_feedforward_layernorm", "post_ffw_norm"),
            ("gemma3", "self_attn.k_norm", "attn_k_norm"),
        ] {
            layer_maps_both_ways(arch, hf, g);
        }
        assert_eq!(gguf_module_in("gemma2", "lm_head"), None);
        assert_eq!(hf_name_in("gemma", "output.weight"), None);
        assert_eq!(gguf_module_in("gemma3", "lm_head").unwrap().0, "output");
        assert_eq!(
            gguf_module_in("gemma2", "model.layers.0.self_attn.q_norm"),
            None
        );
        // tensor_mapping.py: qkv_proj → ATTN_QKV, gate_up_proj → FFN_UP; no FFN_GATE in
        // MODEL_TENSORS[PHI3].
        for (hf, g) in [
            ("self_attn.qkv_proj", "attn_qkv"),
            ("mlp.gate_up_proj", "ffn_up"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
        ] {
            assert_eq!(layer_maps_both_ways("phi3", hf, g), Rope::None);
        }
        assert_eq!(gguf_module_in("phi3", "model.layers.0.mlp.gate_proj"), None);
        assert_eq!(hf_name_in("phi3", "blk.0.ffn_gate.weight"), None);
        assert_eq!(gguf_module_in("phi3", "lm_head").unwrap().0, "output");
        assert_eq!(
            gguf_module_in("llama", "model.layers.0.self_attn.qkv_proj"),
            None
        );
        assert_eq!(permutes("phi3"), Some(false));
    }

    /// `LlamaModel.permute` on 8 rows, 2 heads: within each head of 4 rows, the two halves
    /// interleave (`[0, 2, 1, 3]`).
    #[test]
    fn permutation_interleaves_the_halves_of_each_head() {
        let w: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let p = permute_rows(&w, 8, 1, 2);
        assert_eq!(p, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_rows(&p, 8, 1, 2), w);
    }
}
