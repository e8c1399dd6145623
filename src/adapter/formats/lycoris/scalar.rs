//! Reading the one-element tensors of kohya-named files (`.alpha`, IA3's `.on_input`,
//! OneTrainer's `oft_R.scaled_oft`) as f64, whatever numeric dtype their writer chose. The leaf
//! the module reader ([`super::module`]) takes them through.
//!
//! Must not: check a value's meaning (finite alpha, 0/1 flag) or its shape; the reader does.

use crate::dtype::Dtype;
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;

/// Reads a one-element tensor of any numeric dtype as f64 (diffusers writes kohya alphas as
/// I64, kohya itself as F16/F32).
pub(crate) fn read_scalar(file: &SafetensorsFile, key: &str) -> InputResult<f64> {
    let v = file.view(key)?;
    let d = v.data;
    let le = |n: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&d[..n]);
        b
    };
    Ok(match v.dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => v.to_f32()[0] as f64,
        Dtype::I64 => i64::from_le_bytes(le(8)) as f64,
        Dtype::I32 => i32::from_le_bytes(le(4)[..4].try_into().expect("4")) as f64,
        Dtype::I16 => i16::from_le_bytes([d[0], d[1]]) as f64,
        Dtype::I8 => d[0] as i8 as f64,
        Dtype::U8 | Dtype::BOOL => d[0] as f64,
        other => {
            return Err(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{key}`: alpha has unsupported dtype {}",
                    crate::dtype::name(other)
                ),
            ))
        }
    })
}
