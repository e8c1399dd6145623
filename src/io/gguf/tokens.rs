//! The token table every GGUF vocabulary builder fills ([`super::spm`], [`super::bpe`],
//! [`super::vocab`]): gguf-py's token types and the `(tokens, scores, types)` triple. A leaf, so
//! the builders and the vocabulary writer that calls them do not import each other in a circle.
//!
//! Must not: read files or write GGUF keys.

/// gguf-py `TokenType` (sentencepiece's piece types).
pub(crate) const NORMAL: i32 = 1;
pub(crate) const UNKNOWN: i32 = 2;
pub(crate) const CONTROL: i32 = 3;
pub(crate) const USER_DEFINED: i32 = 4;
pub(crate) const UNUSED: i32 = 5;
pub(crate) const BYTE: i32 = 6;

/// `(tokens, scores, token types)` of a vocabulary.
pub(crate) type Tokens = (Vec<String>, Vec<f32>, Vec<i32>);
