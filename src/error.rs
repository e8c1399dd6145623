//! Error kinds that carry the file and the tensor they are about.
//!
//! Every failure caused by an input file is an [`InputError`]: its message is one line that
//! names the file (and the tensor where there is one), lowercase, with no trailing period.
//! The binary maps them to exit status 2; see `main.rs` for the full exit-code table.

use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with a safetensors file. Each variant is one malformed-file case; the
/// hostile-input tests hold one file per variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {0} bytes, too short for the 8-byte header length")]
    TooShort(u64),
    #[error("header length is 0")]
    EmptyHeader,
    #[error("header length {0} exceeds the 100000000-byte limit")]
    HeaderTooLarge(u64),
    #[error("header length {header} runs past the end of the {file}-byte file")]
    HeaderBeyondFile { header: u64, file: u64 },
    #[error("header is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("header is not valid JSON: {0}")]
    NotJson(String),
    #[error("header is not a JSON object")]
    NotObject,
    #[error("header has duplicate key `{0}`")]
    DuplicateKey(String),
    #[error("`__metadata__` must map strings to strings: {0}")]
    BadMetadata(String),
    #[error("tensor `{tensor}`: {msg}")]
    BadEntry { tensor: String, msg: String },
    #[error("tensor `{tensor}`: unknown dtype `{dtype}`")]
    UnknownDtype { tensor: String, dtype: String },
    #[error("tensor `{tensor}`: element count of shape {shape:?} overflows")]
    ShapeOverflow { tensor: String, shape: Vec<u64> },
    #[error("tensor `{tensor}`: shape {shape:?} of {dtype} needs {expected} bytes, data_offsets give {actual}")]
    LengthMismatch {
        tensor: String,
        shape: Vec<usize>,
        dtype: String,
        expected: u128,
        actual: u64,
    },
    #[error("tensor `{tensor}`: data_offsets [{start}, {end}] are reversed")]
    ReversedOffsets {
        tensor: String,
        start: u64,
        end: u64,
    },
    #[error("tensor `{tensor}`: data_offsets [{start}, {end}] overlap or leave a gap after the previous tensor (which ends at {expected})")]
    NonContiguous {
        tensor: String,
        start: u64,
        end: u64,
        expected: u64,
    },
    #[error("tensor `{tensor}`: data_offsets end {end} is beyond the {data}-byte data section")]
    OutOfBounds { tensor: String, end: u64, data: u64 },
    #[error("tensors cover {covered} bytes but the data section holds {data}")]
    DataNotCovered { covered: u64, data: u64 },
    #[error("file changed size while in use: expected {expected} bytes, found {actual}")]
    SizeChanged { expected: u64, actual: u64 },
}

/// An error about one input (or output) file: the path, optionally a tensor, and what is wrong.
#[derive(Debug)]
pub struct InputError {
    pub path: PathBuf,
    pub kind: InputErrorKind,
}

/// The cause of an [`InputError`].
#[derive(Debug, thiserror::Error)]
pub enum InputErrorKind {
    /// Boxed: keeps `Result<_, InputError>` small on the happy path.
    #[error(transparent)]
    Format(Box<FormatError>),
    /// A malformed GGUF file (boxed for the same reason).
    #[error(transparent)]
    Gguf(Box<crate::io::gguf::GgufError>),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The destination could not be written (a temporary file, a rename, a folder, a lock):
    /// exit status 3, whatever the I/O error was.
    #[error("cannot write: {0}")]
    Write(std::io::Error),
    /// Anything else about the file's content, already phrased (names the tensor if any).
    #[error("{0}")]
    Invalid(String),
}

impl From<FormatError> for InputErrorKind {
    fn from(e: FormatError) -> Self {
        InputErrorKind::Format(Box::new(e))
    }
}

impl From<crate::io::gguf::GgufError> for InputErrorKind {
    fn from(e: crate::io::gguf::GgufError) -> Self {
        InputErrorKind::Gguf(Box::new(e))
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

/// No `source()`: the message already ends with the cause (an I/O or format error), and
/// reporters that walk the chain (`anyhow`'s `{:#}`) would print it twice. The cause stays
/// reachable through [`InputError::kind`].
impl std::error::Error for InputError {}

impl InputError {
    pub fn new(path: impl AsRef<Path>, kind: impl Into<InputErrorKind>) -> Self {
        InputError {
            path: path.as_ref().to_path_buf(),
            kind: kind.into(),
        }
    }

    /// A content error with a message (it should name the tensor or key it is about).
    pub fn invalid(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Self::new(path, InputErrorKind::Invalid(msg.into()))
    }

    pub fn io(path: impl AsRef<Path>, e: std::io::Error) -> Self {
        Self::new(path, InputErrorKind::Io(e))
    }

    /// Writing the output at `path` failed (exit status 3).
    pub fn write(path: impl AsRef<Path>, e: std::io::Error) -> Self {
        Self::new(path, InputErrorKind::Write(e))
    }

    /// Whether this is a failure to write the destination (exit status 3).
    pub fn is_write_failure(&self) -> bool {
        match &self.kind {
            InputErrorKind::Write(_) => true,
            InputErrorKind::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// A result whose error is an [`InputError`].
pub type InputResult<T> = Result<T, InputError>;

/// `s` as one printable line: newlines, carriage returns, ESC and every other control
/// character are written as Rust escapes (`\n`, `\r`, `\u{1b}`), as `{:?}` does. Error and
/// warning lines pass through it, so a tensor, shard or path name read from a file can never
/// split a message or drive the terminal.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
