//! Encoded frames of one camera, back to back: in memory up to a limit, beyond it spilled to an
//! unlinked temporary file that is memory-mapped, so a dataset larger than memory opens with
//! bounded resident memory (the page cache holds what the loader touches).

use crate::engine::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Bytes of encoded frames kept on the heap per camera before spilling (1 GiB).
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 30;

enum Store {
    Memory(Vec<u8>),
    Spilling { file: std::io::BufWriter<std::fs::File>, path: PathBuf, len: usize },
    Mapped(memmap2::Mmap),
}

pub(crate) struct FrameStore {
    store: Store,
    ends: Vec<usize>,
    limit: usize,
}

impl std::fmt::Debug for FrameStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.store {
            Store::Memory(_) => "memory",
            Store::Spilling { .. } => "spilling",
            Store::Mapped(_) => "mapped",
        };
        f.debug_struct("FrameStore").field("frames", &self.ends.len()).field("store", &how).finish()
    }
}

static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl FrameStore {
    pub(crate) fn new(limit: usize) -> FrameStore {
        FrameStore { store: Store::Memory(Vec::new()), ends: Vec::new(), limit }
    }

    /// Frames stored.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes stored.
    pub(crate) fn bytes(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Append one frame's bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<()> {
        if let Store::Memory(mem) = &mut self.store {
            if mem.len() + bytes.len() <= self.limit {
                mem.extend_from_slice(bytes);
                self.ends.push(mem.len());
                return Ok(());
            }
            let n = SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("vlm4vla-frames-{}-{n}.bin", std::process::id()));
            let io = |e: std::io::Error| Error::io(format!("spilling frames to {}", path.display()), e);
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io)?;
            let mut file = std::io::BufWriter::new(file);
            file.write_all(mem).map_err(io)?;
            let len = mem.len();
            self.store = Store::Spilling { file, path, len };
        }
        match &mut self.store {
            Store::Spilling { file, path, len } => {
                file.write_all(bytes).map_err(|e| Error::io(format!("spilling frames to {}", path.display()), e))?;
                *len += bytes.len();
                self.ends.push(*len);
                Ok(())
            }
            Store::Mapped(_) => Err(Error::invalid("FrameStore", "frames added after the store was finished")),
            Store::Memory(_) => unreachable!("handled above"),
        }
    }

    /// Done adding: a spilled store is mapped (and its file unlinked: nothing is left behind).
    pub(crate) fn finish(&mut self) -> Result<()> {
        let Store::Spilling { .. } = &self.store else { return Ok(()) };
        let Store::Spilling { file, path, len } = std::mem::replace(&mut self.store, Store::Memory(Vec::new())) else {
            unreachable!("checked above")
        };
        let io = |e: std::io::Error| Error::io(format!("mapping spilled frames {}", path.display()), e);
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        // SAFETY: the file is ours alone (created above, unlinked right after mapping) and never
        // written again, so the mapping cannot change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let _ = std::fs::remove_file(&path);
        if map.len() != len || len != self.bytes() {
            return Err(Error::invalid("FrameStore", format!("spilled {len} bytes, mapped {}", map.len())));
        }
        self.store = Store::Mapped(map);
        Ok(())
    }

    /// Whether the frames live in a mapped file rather than on the heap.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Mapped(_))
    }

    /// Frame `i`'s bytes.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let all: &[u8] = match &self.store {
            Store::Memory(m) => m,
            Store::Mapped(m) => m,
            Store::Spilling { .. } => return None,
        };
        all.get(start..end)
    }
}

impl Drop for FrameStore {
    fn drop(&mut self) {
        if let Store::Spilling { path, .. } = &self.store {
            let _ = std::fs::remove_file(path);
        }
    }
}
