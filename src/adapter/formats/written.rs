//! The form an adapter tensor is written in, whatever the format: the dtype and bytes
//! ([`encoded`]: a stored tensor copied byte for byte when its dtype is kept), the shape a stored
//! tensor keeps ([`stored_shape`]), and the on-disk shapes of a LoRA module's `A` and `B`
//! ([`factor_shapes`], one layout for PEFT, kohya and diffusers files). The leaf that the PEFT,
//! kohya/LyCORIS and diffusers writers share.
//!
//! Must not: name a tensor, write a file, or know one format's rules (key names, alphas,
//! configs: those are each format's writer's).

use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule, ModuleKind};
use crate::error::InputResult;

/// On-disk shapes of a module's `A` and `B` (conv: `[r, in, kh, kw]` and `[out, r, 1, 1]`;
/// kohya uses the same layouts).
pub fn factor_shapes(m: &LoraModule) -> (Vec<usize>, Vec<usize>) {
    match &m.kind {
        ModuleKind::Conv { kernel } => {
            let mut ash = vec![
                m.rank,
                m.in_features / kernel.iter().product::<usize>().max(1),
            ];
            ash.extend(kernel);
            let mut bsh = vec![m.out_features, m.rank];
            bsh.extend(kernel.iter().map(|_| 1));
            (ash, bsh)
        }
        _ => (vec![m.rank, m.in_features], vec![m.out_features, m.rank]),
    }
}

/// The dtype and bytes a tensor is written with. A stored tensor (not transposed) whose dtype
/// is kept (`dtype` is `None` or its own) is copied byte for byte, so a conversion changes no
/// factor; anything else is encoded from its canonical `f32` values into `dtype` (F32 when
/// `None`). Values are checked to be finite either way.
pub fn encoded(
    adapter: &Adapter,
    data: &Data,
    dtype: Option<crate::dtype::Dtype>,
) -> InputResult<(crate::dtype::Dtype, Vec<u8>)> {
    let values = adapter.values(data)?;
    if let (
        Data::Stored {
            key,
            transpose: false,
        },
        Some(src),
    ) = (data, adapter.source.as_ref())
    {
        let view = src.view(key)?;
        if dtype.is_none_or(|d| d == view.dtype) && crate::dtype::is_float_storage(view.dtype) {
            return Ok((view.dtype, view.data.to_vec()));
        }
    }
    let dt = dtype.unwrap_or(crate::dtype::Dtype::F32);
    Ok((dt, crate::dtype::encode(dt, &values)))
}

/// The shape a tensor is written with: a stored tensor keeps the shape it was stored with
/// (LyCORIS and PEFT write a LoHa conv's `hada_w1_b` flattened), so conversions are exact;
/// anything else its canonical shape.
pub fn stored_shape(adapter: &Adapter, data: &Data, canonical: Vec<usize>) -> Vec<usize> {
    match (data, adapter.source.as_ref()) {
        (
            Data::Stored {
                key,
                transpose: false,
            },
            Some(src),
        ) => src.info(key).map_or(canonical, |i| i.shape.clone()),
        _ => canonical,
    }
}
