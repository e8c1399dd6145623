//! One output file written on its own thread while the caller computes the next tensor.
//!
//! [`pipelined`] moves a [`FileWriter`] to a scoped thread and hands the caller a [`Pipe`]:
//! each tensor sent is written (or kernel-copied) there in order, and the file is finished
//! (flushed, fsynced) when the caller's body returns `Ok`. The channel is a rendezvous: a send
//! waits until the writer has taken the tensor, so at most one tensor is being written while
//! the next is computed — the memory bound of a streamed merge (3 × the largest tensor) holds.
//! Errors keep their type: a write error (a full disk) is returned as the writer raised it.
//! Must not reorder, drop or alter bytes: it only moves them to another thread.

use super::FileWriter;
use crate::backend::profile::{self, Stage};
use crate::error::InputResult;
use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};

enum Msg<'a> {
    Tensor(String, Vec<u8>),
    Copy {
        name: String,
        src: &'a File,
        path: &'a Path,
        at: u64,
        len: u64,
    },
    Finish,
}

/// The caller's end of a pipelined file (see the module doc).
pub struct Pipe<'a> {
    tx: SyncSender<Msg<'a>>,
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

    /// [`FileWriter::write_tensor`] on the writer thread.
    pub fn write_tensor(&mut self, name: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.send(Msg::Tensor(name.to_owned(), data))
    }

    /// [`FileWriter::copy_tensor`] on the writer thread.
    pub fn copy_tensor(
        &mut self,
        name: &str,
        src: &'a File,
        path: &'a Path,
        at: u64,
        len: u64,
    ) -> anyhow::Result<()> {
        self.send(Msg::Copy {
            name: name.to_owned(),
            src,
            path,
            at,
            len,
        })
    }
}

/// Runs `body` with a [`Pipe`] into `w`, then finishes the file (fsync); returns its byte count.
/// When `body` fails the file is left unfinished (the [`super::Output`] removes it) and the
/// body's error is returned, unless the writer failed first: then the writer's error is.
pub fn pipelined<'a>(
    mut w: FileWriter<'_>,
    body: impl FnOnce(&mut Pipe<'a>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (tx, rx) = sync_channel::<Msg<'a>>(0);
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> InputResult<Option<u64>> {
            for m in rx {
                match m {
                    Msg::Tensor(name, data) => {
                        let _t = profile::time(Stage::Write);
                        w.write_tensor(&name, &data)?;
                    }
                    Msg::Copy {
                        name,
                        src,
                        path,
                        at,
                        len,
                    } => {
                        let _t = profile::time(Stage::Copy);
                        w.copy_tensor(&name, src, path, at, len)?;
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
        let mut pipe = Pipe { tx };
        let result = body(&mut pipe).and_then(|()| pipe.send(Msg::Finish));
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
