//! One output file written on its own thread while the caller computes the next tensor.
//!
//! [`pipelined`] moves a file's writer (a [`Sink`]: a safetensors [`FileWriter`] or a GGUF
//! writer) to a scoped thread and hands the caller a [`Pipe`]: each tensor sent is written (or
//! kernel-copied) there in order, and the file is finished (flushed, fsynced) when the caller's
//! body returns `Ok`. Messages queue in order, but at most one piece of owned bytes is ever
//! queued or being written: sending the next one waits until the writer has written the last
//! (`acks`), so at most one tensor is being written while the next is computed — the memory
//! bound of a streamed merge (3 × the largest tensor) holds. Kernel copies of untouched
//! tensors hold no bytes and never wait, so the caller computes the next merged tensor while
//! the copies before it are still being made (a GGUF model is mostly copies between its few
//! merged tensors, issue #17).
//! A tensor produced in pieces (a GPU merge's readback) goes as [`Pipe::begin_tensor`] and
//! [`Pipe::write_chunk`]s (owned) or [`Pipe::write_borrowed`]s (written from the caller's
//! buffer while the caller waits), one piece in flight at a time, so it is never whole on the
//! host.
//! Errors keep their type: a write error (a full disk) is returned as the writer raised it.
//! Must not reorder, drop or alter bytes: it only moves them to another thread.

use super::file::{Extent, FileWriter};
use crate::backend::profile::{self, Stage};
use crate::error::InputResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// A file's writer that [`pipelined`] drives on its own thread: tensors in their declared
/// order, whole, in pieces, or copied by the kernel from an input file.
pub trait Sink: Send {
    /// Writes the whole of the next tensor, which must be `name`.
    fn write_tensor(&mut self, name: &str, data: &[u8]) -> InputResult<()>;
    /// Starts the next tensor, which must be `name`; its bytes follow as result chunks.
    fn begin(&mut self, name: &str) -> InputResult<()>;
    /// Appends the next bytes of the tensor begun last.
    fn write_result_chunk(&mut self, data: &[u8]) -> InputResult<()>;
    /// Writes the whole of the next tensor, `name`, as opaque bytes, unchecked: packed codes
    /// stored under a float dtype (bitsandbytes' `bnb_4bit_quant_storage`), not float values.
    fn write_packed(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        self.write_tensor(name, data)
    }
    /// Writes the whole of the next tensor, `name`, as the bytes of `src`.
    fn copy_tensor(&mut self, name: &str, src: Extent) -> InputResult<()>;
    /// Flushes and fsyncs; returns the bytes written.
    fn finish(self) -> InputResult<u64>
    where
        Self: Sized;
    /// The output's final path, for errors.
    fn dest(&self) -> &std::path::Path;
}

impl Sink for FileWriter<'_> {
    fn dest(&self) -> &std::path::Path {
        self.stream.dest()
    }
    fn write_tensor(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        FileWriter::write_tensor(self, name, data)
    }
    fn begin(&mut self, name: &str) -> InputResult<()> {
        FileWriter::begin(self, name)
    }
    fn write_result_chunk(&mut self, data: &[u8]) -> InputResult<()> {
        FileWriter::write_result_chunk(self, data)
    }
    fn write_packed(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        FileWriter::begin(self, name)?;
        FileWriter::write_chunk(self, data)
    }
    fn copy_tensor(&mut self, name: &str, src: Extent) -> InputResult<()> {
        FileWriter::copy_tensor(self, name, src)
    }
    fn finish(self) -> InputResult<u64> {
        FileWriter::finish(self)
    }
}

enum Msg<'a> {
    Tensor(String, Vec<u8>),
    Packed(String, Vec<u8>),
    Begin(String),
    Chunk(Vec<u8>),
    /// Bytes the sender keeps owning; it waits on `done` before they may change or go.
    Borrowed(Lent, SyncSender<bool>),
    Copy {
        name: String,
        src: Extent<'a>,
    },
    Finish,
}

/// A slice lent to the writer thread by [`Pipe::write_borrowed`], which does not return (nor
/// let the bytes change) until the writer has signalled that it no longer reads them.
struct Lent {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a `Lent` is only a pointer to bytes that stay valid and unmodified until the writer
// answers on the message's `done` channel (see `Pipe::write_borrowed`); reading them from the
// writer thread meanwhile is a shared borrow, which `&[u8]: Send` already allows.
unsafe impl Send for Lent {}

/// The caller's end of a pipelined file (see the module doc).
pub struct Pipe<'a> {
    tx: Sender<Msg<'a>>,
    /// One message per owned piece the writer has written.
    acks: Receiver<()>,
    /// Whether an owned piece was sent whose ack has not been taken yet.
    owed: bool,
}

/// Marker error of a send to a writer that has stopped; replaced by the writer's own error.
#[derive(Debug, thiserror::Error)]
#[error("the output writer stopped")]
struct Stopped;

impl<'a> Pipe<'a> {
    fn send(&mut self, m: Msg<'a>) -> anyhow::Result<()> {
        // A closed channel: the writer stopped on an error, which `pipelined` returns.
        self.tx.send(m).map_err(|_| Stopped.into())
    }

    /// Sends a message holding owned bytes, once the previous one has been written.
    fn send_owned(&mut self, m: Msg<'a>) -> anyhow::Result<()> {
        if self.owed {
            let _t = profile::time(Stage::Wait);
            self.acks.recv().map_err(|_| Stopped)?;
        }
        self.send(m)?;
        self.owed = true;
        Ok(())
    }

    /// [`FileWriter::write_tensor`] on the writer thread.
    pub fn write_tensor(&mut self, name: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.send_owned(Msg::Tensor(name.to_owned(), data))
    }

    /// [`Sink::write_packed`] on the writer thread: opaque packed codes, not checked as floats.
    pub fn write_packed(&mut self, name: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.send_owned(Msg::Packed(name.to_owned(), data))
    }

    /// [`FileWriter::begin`] on the writer thread: a result tensor whose bytes follow in pieces
    /// ([`Self::write_chunk`]), for a producer that never holds it whole.
    pub fn begin_tensor(&mut self, name: &str) -> anyhow::Result<()> {
        self.send(Msg::Begin(name.to_owned()))
    }

    /// [`FileWriter::write_result_chunk`] on the writer thread: the next bytes of the tensor
    /// begun last, checked as a whole result is.
    pub fn write_chunk(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.send_owned(Msg::Chunk(data))
    }

    /// [`Self::write_chunk`] without a copy: the writer thread writes straight from `data`
    /// (a GPU readback still mapped), and this call returns once it has, so only one piece is
    /// in flight and the caller's buffer is reused at once.
    pub fn write_borrowed(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let (done, wait) = sync_channel(1);
        let lent = Lent {
            ptr: data.as_ptr(),
            len: data.len(),
        };
        self.send(Msg::Borrowed(lent, done))?;
        // The writer answers after its last read of `data`. A closed channel means it
        // unwound (a panic) and dropped `done` on the way, also after its last read. Either
        // way `data`, borrowed for this whole call, outlived every read.
        let _t = profile::time(Stage::Wait);
        match wait.recv() {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(Stopped.into()),
        }
    }

    /// [`FileWriter::copy_tensor`] on the writer thread.
    pub fn copy_tensor(&mut self, name: &str, src: Extent<'a>) -> anyhow::Result<()> {
        self.send(Msg::Copy {
            name: name.to_owned(),
            src,
        })
    }
}

/// Runs `body` with a [`Pipe`] into `w`, then finishes the file (fsync); returns its byte count.
/// When `body` fails the file is left unfinished (the [`super::Output`] removes it), what is
/// still queued is dropped unwritten, and the body's error is returned, unless the writer
/// failed first: then the writer's error is.
pub fn pipelined<'a, W: Sink>(
    mut w: W,
    body: impl FnOnce(&mut Pipe<'a>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (tx, rx) = channel::<Msg<'a>>();
    // Capacity 1: the pipe takes each ack before it sends the next owned piece.
    let (ack, acks) = sync_channel::<()>(1);
    // Set when the body fails: the writer drops what is still queued instead of writing it.
    let abandoned = AtomicBool::new(false);
    let dest = w.dest().to_path_buf();
    std::thread::scope(|s| {
        let abandoned = &abandoned;
        // A thread that cannot be started (its stack not mapped under `ulimit -v`: EAGAIN) is an
        // error naming the output, not `thread::scope`'s panic.
        let spawned = std::thread::Builder::new()
            .name("lorakit-writer".into())
            .spawn_scoped(s, move || -> InputResult<Option<u64>> {
                for m in rx {
                    if abandoned.load(Ordering::Relaxed) {
                        break;
                    }
                    match m {
                        Msg::Tensor(name, data) => {
                            let _t = profile::time(Stage::Write);
                            w.write_tensor(&name, &data)?;
                            let _ = ack.send(());
                        }
                        Msg::Packed(name, data) => {
                            let _t = profile::time(Stage::Write);
                            w.write_packed(&name, &data)?;
                            let _ = ack.send(());
                        }
                        Msg::Begin(name) => w.begin(&name)?,
                        Msg::Chunk(data) => {
                            let _t = profile::time(Stage::Write);
                            w.write_result_chunk(&data)?;
                            let _ = ack.send(());
                        }
                        Msg::Borrowed(lent, done) => {
                            let _t = profile::time(Stage::Write);
                            // SAFETY: the sender keeps the bytes alive and unchanged until `done`
                            // is answered or dropped (see `Pipe::write_borrowed`); `data` is not
                            // used after either.
                            let data = unsafe { std::slice::from_raw_parts(lent.ptr, lent.len) };
                            let r = w.write_result_chunk(data);
                            let _ = done.send(r.is_ok());
                            r?;
                        }
                        Msg::Copy { name, src } => {
                            let _t = profile::time(Stage::Copy);
                            w.copy_tensor(&name, src)?;
                        }
                        Msg::Finish => {
                            let _t = profile::time(Stage::Fsync);
                            return w.finish().map(Some);
                        }
                    }
                }
                // The body failed: nothing to finish.
                Ok(None)
            });
        let writer = match spawned {
            Ok(w) => w,
            Err(e) => {
                let why = format!("cannot start the writer thread: {e}");
                let e = std::io::Error::new(e.kind(), why);
                return Err(crate::error::InputError::write(&dest, e).into());
            }
        };
        let mut pipe = Pipe {
            tx,
            acks,
            owed: false,
        };
        let result = body(&mut pipe).and_then(|()| pipe.send(Msg::Finish));
        if result.is_err() {
            abandoned.store(true, Ordering::Relaxed);
        }
        drop(pipe);
        let written = match writer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match (result, written) {
            (_, Err(e)) => Err(e.into()),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(n)) => Ok(n.unwrap_or(0)),
        }
    })
}
