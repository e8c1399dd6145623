//! Error kinds that carry the file and the tensor they are about.
//!
//! Every failure caused by an input file is an [`InputError`]: its message is one line that
//! names the file (and the tensor where there is one), lowercase, with no trailing period.
//! The binary maps them to exit status 2; see `main.rs` for the full exit-code table.
//!
//! Must not print or choose exit codes (the binary does), nor spell a command-line flag: an error
//! about options names them as [`Opt`]s inside an [`OptionError`], which the binary renders with
//! its flags.

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
    /// A malformed GGUF file (boxed for the same reason). Held as a trait object so that this
    /// module depends on no reader: `io` converts `io::gguf::GgufError` into it (`From` in
    /// `io/mod.rs`), and the cause stays reachable by `downcast_ref`.
    #[error(transparent)]
    Gguf(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The destination could not be written (a temporary file, a rename, a folder, a lock):
    /// exit status 3, whatever the I/O error was.
    #[error("cannot write: {0}")]
    Write(std::io::Error),
    /// Anything else about the file's content, already phrased (names the tensor if any).
    #[error("{0}")]
    Invalid(String),
    /// The file cannot be used with the options chosen; the message names those options
    /// (see [`OptionError`]).
    #[error("{0}")]
    Option(OptionError),
}

impl From<OptionError> for InputErrorKind {
    fn from(e: OptionError) -> Self {
        InputErrorKind::Option(e)
    }
}

impl From<FormatError> for InputErrorKind {
    fn from(e: FormatError) -> Self {
        InputErrorKind::Format(Box::new(e))
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

/// An option of a library operation, under the library's own name: the field of the
/// operation's `Options` (or the argument of its `Plan::new`) it stands for. The library never
/// spells a command-line flag; a front end maps each option to its own spelling (the `lorakit`
/// binary: `cli::flag`), so the user of the binary still reads `--save-changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Opt {
    AdamEps,
    /// A merge's adapter (`adapters` of the merge options).
    Adapter,
    AllowUnmatched,
    Alpha,
    AsTrainedOn,
    Base,
    Batch,
    Beta1,
    Beta2,
    Device,
    Density,
    DoraRank,
    Embeddings,
    Exclude,
    /// What a merge does with a base weight narrower than an adapter's (`expand_base`).
    ExpandBase,
    Format,
    /// The llama.cpp pre-tokenizer named for a GGUF output (`tokenizer_pre` of the GGUF merge).
    GgufTokenizerPre,
    Generate,
    GradClip,
    InitAdapter,
    InputIds,
    Logits,
    Lr,
    MaxAbs,
    MaxPowerIters,
    MaxShardSize,
    Method,
    Out,
    Outtype,
    Part,
    Plot,
    PowerIters,
    Prefix,
    Prompt,
    Quant,
    Rank,
    Rslora,
    /// The rank of the LoRA a saved embedding or head becomes (`check --fix`).
    SavedRank,
    /// The rank other algorithms are lowered to (`check --fix` for the diffusion loaders).
    LowerRank,
    SaveChanged,
    Seed,
    SeqLen,
    Spectrum,
    Steps,
    Stride,
    Targets,
    Tensors,
    /// What a merge does to an embedding tied to lm_head (`tied_embeddings` of the merge).
    TiedEmbeddings,
    /// The target of a conversion (`convert`'s `to`).
    To,
    Tokenizer,
    Tolerance,
    Tuned,
    Weight,
    WeightDecay,
}

impl Opt {
    /// The library's name of the option: the `Options` field (or `Plan::new` argument).
    pub fn name(self) -> &'static str {
        match self {
            Opt::AdamEps => "adam_eps",
            Opt::AllowUnmatched => "allow_unmatched",
            Opt::Alpha => "alpha",
            Opt::AsTrainedOn => "as_trained_on",
            Opt::Base => "base",
            Opt::Batch => "batch",
            Opt::Beta1 => "beta1",
            Opt::Beta2 => "beta2",
            Opt::Adapter => "adapter",
            Opt::Device => "device",
            Opt::Density => "density",
            Opt::DoraRank => "dora_rank",
            Opt::Embeddings => "embeddings",
            Opt::Exclude => "exclude",
            Opt::ExpandBase => "expand_base",
            Opt::Format => "format",
            Opt::GgufTokenizerPre => "gguf_tokenizer_pre",
            Opt::Generate => "generate",
            Opt::GradClip => "grad_clip",
            Opt::InitAdapter => "init_adapter",
            Opt::InputIds => "input_ids",
            Opt::Logits => "logits",
            Opt::Lr => "lr",
            Opt::MaxAbs => "max_abs",
            Opt::MaxShardSize => "max_shard_size",
            Opt::Method => "method",
            Opt::Out => "out",
            Opt::Outtype => "outtype",
            Opt::PowerIters => "power_iters",
            Opt::MaxPowerIters => "max_power_iters",
            Opt::Part => "part",
            Opt::Plot => "plot",
            Opt::Prefix => "prefix",
            Opt::Prompt => "prompt",
            Opt::Quant => "quant",
            Opt::Rank => "rank",
            Opt::Rslora => "rslora",
            Opt::SavedRank => "saved.rank",
            Opt::LowerRank => "lower_rank",
            Opt::SaveChanged => "save_changed",
            Opt::Seed => "seed",
            Opt::SeqLen => "seq_len",
            Opt::Spectrum => "spectrum",
            Opt::Steps => "steps",
            Opt::Stride => "stride",
            Opt::Targets => "targets",
            Opt::Tensors => "tensors",
            Opt::TiedEmbeddings => "tied_embeddings",
            Opt::To => "to",
            Opt::Tokenizer => "tokenizer",
            Opt::Tolerance => "tolerance",
            Opt::Tuned => "tuned",
            Opt::Weight => "weight",
            Opt::WeightDecay => "weight_decay",
        }
    }
}

/// How the options in an [`OptionError`] are spelled: a function from an option and an
/// optional value (`Some("kohya")` for "format kohya") to text.
pub type Spell<'a> = &'a dyn Fn(Opt, Option<&str>) -> String;

/// Names options inside an [`OptionError`]'s message, in whatever spelling it is rendered with.
pub struct OptNames<'a>(Spell<'a>);

impl OptNames<'_> {
    /// The option alone (the library: `` `save_changed` ``; the binary: `--save-changed`).
    pub fn opt(&self, o: Opt) -> String {
        (self.0)(o, None)
    }

    /// The option set to a value (the library: `` `format = kohya` ``; the binary:
    /// `--format kohya`).
    pub fn set(&self, o: Opt, value: impl fmt::Display) -> String {
        (self.0)(o, Some(&value.to_string()))
    }
}

type Message = dyn Fn(&OptNames) -> String + Send + Sync;

/// A usage error that names options of the operation: the message is kept as a function of the
/// options' spelling, so that the library displays the options by their library names
/// ([`Opt::name`]) and a front end renders the same sentence with its own flags
/// ([`OptionError::render`]). One line, lowercase, no trailing period, like every error here.
pub struct OptionError(Box<Message>);

impl OptionError {
    /// `message` builds the sentence, naming each option through [`OptNames`]:
    /// `OptionError::new(|o| format!("{} must be at least 1", o.opt(Opt::Rank)))`.
    pub fn new(message: impl Fn(&OptNames) -> String + Send + Sync + 'static) -> Self {
        OptionError(Box::new(message))
    }

    /// The message with each option spelled by `spell`.
    pub fn render(&self, spell: Spell) -> String {
        (self.0)(&OptNames(spell))
    }

    /// The options the message names, in order of appearance (with repeats).
    pub fn options(&self) -> Vec<Opt> {
        let seen = std::cell::RefCell::new(Vec::new());
        self.render(&|o, _| {
            seen.borrow_mut().push(o);
            String::new()
        });
        seen.into_inner()
    }

    /// The library's own spelling: `` `name` `` and `` `name = value` ``.
    fn library_spelling(o: Opt, value: Option<&str>) -> String {
        match value {
            None => format!("`{}`", o.name()),
            Some(v) => format!("`{} = {v}`", o.name()),
        }
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&OptionError::library_spelling))
    }
}

impl fmt::Debug for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OptionError")
            .field(&self.to_string())
            .finish()
    }
}

impl std::error::Error for OptionError {}

impl InputError {
    /// The file cannot be used with the options chosen (see [`OptionError`]).
    pub fn option(
        path: impl AsRef<Path>,
        message: impl Fn(&OptNames) -> String + Send + Sync + 'static,
    ) -> Self {
        Self::new(path, OptionError::new(message))
    }

    /// This error's message with the options spelled by `spell` (as its `Display` otherwise).
    pub fn render(&self, spell: Spell) -> String {
        match &self.kind {
            InputErrorKind::Option(o) => format!("{}: {}", self.path.display(), o.render(spell)),
            _ => self.to_string(),
        }
    }
}

#[cfg(test)]
mod option_tests {
    use super::*;

    #[test]
    fn options_are_named_by_the_library_and_spelled_by_the_front_end() {
        let e = OptionError::new(|o| {
            format!(
                "{} cannot hold full tensors; drop {}",
                o.set(Opt::Format, "kohya"),
                o.opt(Opt::SaveChanged)
            )
        });
        assert_eq!(
            e.to_string(),
            "`format = kohya` cannot hold full tensors; drop `save_changed`"
        );
        let flag = |o: Opt, v: Option<&str>| match v {
            None => format!("--{}", o.name().replace('_', "-")),
            Some(v) => format!("--{} {v}", o.name().replace('_', "-")),
        };
        assert_eq!(
            e.render(&flag),
            "--format kohya cannot hold full tensors; drop --save-changed"
        );
        assert_eq!(e.options(), vec![Opt::Format, Opt::SaveChanged]);
        let i = InputError::option("a/b", |o| format!("use {}", o.opt(Opt::Base)));
        assert_eq!(i.to_string(), "a/b: use `base`");
        assert_eq!(i.render(&flag), "a/b: use --base");
    }
}
