//! The central directory of a zip archive, as `torch.save` writes one (PyTorch ≥ 1.6,
//! `_use_new_zipfile_serialization`): every entry stored uncompressed, Zip64 records where the
//! archive passes 4 GiB. Read with `pread`s of the end records and the directory only; each
//! entry's data offset is taken from its own local header, as `zipfile`/miniz do.
//!
//! Must not: trust a size or offset before checking it against the file's length, accept a
//! compressed or encrypted entry (its bytes could not be mapped as a tensor's), or read more
//! than the directory's bytes (capped) to list the entries.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// One stored entry: its name and where its bytes lie in the file.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub name: String,
    /// Absolute offset of the entry's first data byte.
    pub start: u64,
    pub len: u64,
}

/// The largest central directory read (entries × ~100 bytes): a checkpoint of a million
/// tensors stays under it.
const MAX_DIRECTORY: u64 = 256 << 20;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at(file: &File, at: u64, len: u64, file_len: u64, what: &str) -> Result<Vec<u8>, String> {
    if at.checked_add(len).is_none_or(|e| e > file_len) {
        return Err(format!(
            "zip {what} at byte {at} ({len} bytes) lies past the end of the {file_len}-byte file (truncated?)"
        ));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, at)
        .map_err(|e| format!("reading the zip {what}: {e}"))?;
    Ok(buf)
}

/// Lists the entries of the zip archive `file` (`file_len` bytes).
pub(super) fn entries(file: &File, file_len: u64) -> Result<Vec<Entry>, String> {
    // The end-of-central-directory record: 22 bytes and a comment of up to 65,535.
    let tail_len = file_len.min(22 + 65_535);
    let tail = read_at(file, file_len - tail_len, tail_len, file_len, "end records")?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&tail, i) == 0x0605_4b50)
        .ok_or("no zip end-of-central-directory record (truncated archive?)")?;
    let eocd_at = file_len - tail_len + eocd as u64;
    let e = &tail[eocd..];
    if u16_at(e, 4) != 0 || u16_at(e, 6) != 0 {
        return Err("a multi-disk zip archive".into());
    }
    let mut count = u64::from(u16_at(e, 10));
    let mut dir_len = u64::from(u32_at(e, 12));
    let mut dir_at = u64::from(u32_at(e, 16));
    if count == 0xFFFF || dir_len == 0xFFFF_FFFF || dir_at == 0xFFFF_FFFF {
        // Zip64: the locator sits just before the record and points at the Zip64 record.
        let loc_at = eocd_at
            .checked_sub(20)
            .ok_or("a Zip64 archive without its locator")?;
        let loc = read_at(file, loc_at, 20, file_len, "Zip64 locator")?;
        if u32_at(&loc, 0) != 0x0706_4b50 {
            return Err("a Zip64 archive without its locator".into());
        }
        let rec_at = u64_at(&loc, 8);
        let rec = read_at(file, rec_at, 56, file_len, "Zip64 end record")?;
        if u32_at(&rec, 0) != 0x0606_4b50 {
            return Err(format!("no Zip64 end record at byte {rec_at}"));
        }
        count = u64_at(&rec, 32);
        dir_len = u64_at(&rec, 40);
        dir_at = u64_at(&rec, 48);
    }
    if dir_len > MAX_DIRECTORY {
        return Err(format!(
            "a zip central directory of {dir_len} bytes (over {MAX_DIRECTORY})"
        ));
    }
    let dir = read_at(file, dir_at, dir_len, file_len, "central directory")?;
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut seen = std::collections::HashSet::new();
    let mut at = 0usize;
    for n in 0..count {
        let head = dir.get(at..at + 46).filter(|h| u32_at(h, 0) == 0x0201_4b50);
        let Some(h) = head else {
            return Err(format!(
                "zip central directory entry {n} of {count} is not where the directory says"
            ));
        };
        let flags = u16_at(h, 8);
        let method = u16_at(h, 10);
        let mut csize = u64::from(u32_at(h, 20));
        let mut usize_ = u64::from(u32_at(h, 24));
        let (name_len, extra_len, comment_len) = (
            usize::from(u16_at(h, 28)),
            usize::from(u16_at(h, 30)),
            usize::from(u16_at(h, 32)),
        );
        let mut local = u64::from(u32_at(h, 42));
        let end = at + 46 + name_len + extra_len + comment_len;
        let Some(name) = dir.get(at + 46..at + 46 + name_len) else {
            return Err(format!(
                "zip central directory entry {n} runs past the directory"
            ));
        };
        let name = String::from_utf8_lossy(name).into_owned();
        // torch.load reads the first of two same-named entries; a reader keeping the last
        // would see other bytes than torch does.
        if !seen.insert(name.clone()) {
            return Err(format!("zip entry `{name}` appears twice"));
        }
        let extra = dir
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or_else(|| {
                format!("zip entry `{name}`: its extra field runs past the directory")
            })?;
        // The Zip64 extra field holds, in this order, the fields whose 32-bit value is all ones.
        let mut x = 0usize;
        while x + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, x), usize::from(u16_at(extra, x + 2)));
            let body = extra
                .get(x + 4..x + 4 + len)
                .ok_or_else(|| format!("zip entry `{name}`: a malformed extra field"))?;
            if id == 1 {
                let mut k = 0usize;
                let mut next = |v: &mut u64| -> Result<(), String> {
                    if *v == 0xFFFF_FFFF {
                        *v = body
                            .get(k..k + 8)
                            .map(|b| u64_at(b, 0))
                            .ok_or_else(|| format!("zip entry `{name}`: a short Zip64 field"))?;
                        k += 8;
                    }
                    Ok(())
                };
                next(&mut usize_)?;
                next(&mut csize)?;
                next(&mut local)?;
            }
            x += 4 + len;
        }
        if flags & 1 != 0 {
            return Err(format!("zip entry `{name}` is encrypted"));
        }
        if method != 0 || csize != usize_ {
            return Err(format!(
                "zip entry `{name}` is compressed (method {method}); torch.save stores every entry uncompressed"
            ));
        }
        let lh = read_at(file, local, 30, file_len, "local header")?;
        if u32_at(&lh, 0) != 0x0403_4b50 {
            return Err(format!(
                "zip entry `{name}`: no local header at byte {local}"
            ));
        }
        let start = local + 30 + u64::from(u16_at(&lh, 26)) + u64::from(u16_at(&lh, 28));
        if start.checked_add(csize).is_none_or(|e| e > file_len) {
            return Err(format!(
                "zip entry `{name}` ({csize} bytes at byte {start}) lies past the end of the {file_len}-byte file (truncated?)"
            ));
        }
        out.push(Entry {
            name,
            start,
            len: csize,
        });
        at = end;
    }
    Ok(out)
}
