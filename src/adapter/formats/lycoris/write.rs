//! The tensors a module is written as in a kohya-named (LyCORIS) file, the inverse of
//! [`super::module`]. Never reads a file; names and alphas are the writer's ([`crate::adapter::formats::kohya`]).

use crate::adapter::algo::{Factors, KronHalf};
use crate::adapter::data::Data;
use crate::adapter::formats::written::factor_shapes;
use crate::adapter::model::{DoraRule, LoraModule, ModuleKind};

/// An OFT or BOFT module's tensors: `oft_blocks` (BOFT's with a leading stage axis), then its
/// `rescale` where it has one.
fn oft_tensors<'a>(
    blocks: &'a Data,
    shape: Vec<usize>,
    rescale: Option<&'a Data>,
    rescale_shape: Vec<usize>,
) -> Vec<(&'static str, &'a Data, Vec<usize>)> {
    let mut v = vec![("oft_blocks", blocks, shape)];
    if let Some(r) = rescale {
        v.push(("rescale", r, rescale_shape));
    }
    v
}

/// The tensors a module is written as in a kohya-named file: suffix, data and canonical shape
/// (LyCORIS' own layouts, as [`super::module`] reads them). The alpha is not included.
pub fn tensors(m: &LoraModule) -> Vec<(&'static str, &Data, Vec<usize>)> {
    let (d, k) = (m.out_features, m.in_features);
    let kernel: Vec<usize> = match &m.kind {
        ModuleKind::Conv { kernel } => kernel.clone(),
        _ => Vec::new(),
    };
    let kk: usize = kernel.iter().product::<usize>().max(1);
    let with_kernel = |mut s: Vec<usize>| {
        s.extend(&kernel);
        s
    };
    let ones = |mut s: Vec<usize>| {
        s.extend(kernel.iter().map(|_| 1));
        s
    };
    let r = m.rank;
    let mut v: Vec<(&'static str, &Data, Vec<usize>)> = match &m.factors {
        Factors::Lora { a, b } => {
            let (ash, bsh) = factor_shapes(m);
            vec![("lora_down.weight", a, ash), ("lora_up.weight", b, bsh)]
        }
        Factors::LoraTucker { up, mid, down } => vec![
            ("lora_up.weight", up, vec![d, r, 1, 1]),
            ("lora_down.weight", down, vec![r, k / kk, 1, 1]),
            ("lora_mid.weight", mid, with_kernel(vec![r, r])),
        ],
        Factors::Loha {
            w1a,
            w1b,
            w2a,
            w2b,
            tucker: None,
        } => vec![
            ("hada_w1_a", w1a, vec![d, r]),
            ("hada_w1_b", w1b, vec![r, k]),
            ("hada_w2_a", w2a, vec![d, r]),
            ("hada_w2_b", w2b, vec![r, k]),
        ],
        Factors::Loha {
            w1a,
            w1b,
            w2a,
            w2b,
            tucker: Some((t1, t2)),
        } => vec![
            ("hada_w1_a", w1a, vec![r, d]),
            ("hada_w1_b", w1b, vec![r, k / kk]),
            ("hada_w2_a", w2a, vec![r, d]),
            ("hada_w2_b", w2b, vec![r, k / kk]),
            ("hada_t1", t1, with_kernel(vec![r, r])),
            ("hada_t2", t2, with_kernel(vec![r, r])),
        ],
        Factors::Lokr {
            w1,
            w2,
            w1_shape: (a, c),
            w2_shape: (b, dd),
        } => {
            let mut v = Vec::new();
            match w1 {
                KronHalf::Whole(x) => v.push(("lokr_w1", x, vec![*a, *c])),
                KronHalf::LowRank { a: x, b: y, rank } => {
                    v.push(("lokr_w1_a", x, vec![*a, *rank]));
                    v.push(("lokr_w1_b", y, vec![*rank, *c]));
                }
                KronHalf::Tucker { .. } => unreachable!("the reader refuses lokr_t1"),
            }
            match w2 {
                KronHalf::Whole(x) => v.push(("lokr_w2", x, with_kernel(vec![*b, *dd]))),
                KronHalf::LowRank { a: x, b: y, rank } => {
                    v.push(("lokr_w2_a", x, vec![*b, *rank]));
                    v.push(("lokr_w2_b", y, with_kernel(vec![*rank, *dd])));
                }
                KronHalf::Tucker {
                    t,
                    a: x,
                    b: y,
                    rank,
                } => {
                    v.push(("lokr_w2_a", x, vec![*rank, *b]));
                    v.push(("lokr_w2_b", y, vec![*rank, *dd]));
                    v.push(("lokr_t2", t, with_kernel(vec![*rank, *rank])));
                }
            }
            v
        }
        Factors::Full { diff } => vec![("diff", diff, with_kernel(vec![d, k / kk]))],
        Factors::Norm { w } => vec![("w_norm", w, vec![d])],
        Factors::Boft {
            blocks,
            rescale,
            stages,
            block_num,
            block_size,
            ..
        } => {
            let shape = vec![*stages, *block_num, *block_size, *block_size];
            oft_tensors(blocks, shape, rescale.as_ref(), ones(vec![d, 1]))
        }
        Factors::Oft {
            blocks,
            rescale,
            block_num,
            block_size,
            ..
        } => {
            let shape = vec![*block_num, *block_size, *block_size];
            oft_tensors(blocks, shape, rescale.as_ref(), ones(vec![d, 1]))
        }
        // OneTrainer's single-file form (PEFT's own is refused by the kohya writer first); its
        // `scaled_oft` flag is the writer's.
        Factors::PeftOft {
            weight,
            block_size,
            blocks,
            ..
        } => vec![(
            "oft_R.weight",
            weight,
            vec![*blocks, block_size * (block_size - 1) / 2],
        )],
        Factors::Glora { a1, a2, b1, b2, .. } => {
            let c = k / kk;
            vec![
                ("a1.weight", a1, ones(vec![c, r])),
                ("a2.weight", a2, ones(vec![r, c])),
                ("b1.weight", b1, ones(vec![d, r])),
                ("b2.weight", b2, with_kernel(vec![r, c])),
            ]
        }
        Factors::Ia3 {
            weight, on_input, ..
        } => {
            let n = if *on_input { k } else { d };
            vec![(
                "weight",
                weight,
                if kernel.is_empty() {
                    vec![n]
                } else {
                    ones(vec![1, n])
                },
            )]
        }
        // PEFT's own tuners (VeRA, HRA, BOFT, …: `Factors::peft_only`) have no kohya/LyCORIS
        // form: the kohya writer refuses them first, and a PEFT folder holds them only under
        // their own peft_type, never written.
        f => {
            debug_assert!(f.peft_only());
            Vec::new()
        }
    };
    if let Some(b) = &m.bias {
        let role = if matches!(m.factors, Factors::Norm { .. }) {
            "b_norm"
        } else {
            "diff_b"
        };
        v.push((role, b, vec![d]));
    }
    if let (Some(s), DoraRule::Lycoris { per_input }) = (&m.dora_magnitude, m.dora_rule) {
        let shape = if per_input {
            // A flattened LoHa conv does not say its kernel: the magnitude's length does.
            match s {
                Data::Owned(v) => ones(vec![1, v.len()]),
                Data::Stored { .. } => ones(vec![1, k / kk]),
            }
        } else {
            ones(vec![d, 1])
        };
        v.push(("dora_scale", s, shape));
    }
    v
}
