//! A run directory belongs to one run.
//!
//! - [`RunLock`]: an advisory lock on `<output_dir>/run.lock` (`flock`, so a killed run never
//!   leaves it held), holding the holder's pid, host and start time for the message a second
//!   run gets;
//! - [`holds_run`]: whether a directory already holds a run (a `latest`, a `metrics.jsonl` or a
//!   checkpoint), which a fresh run refuses; [`clear_run`] removes such a run's files for an
//!   explicit overwrite;
//! - [`recover`]: the leftovers of a save that was killed half-way (see
//!   [`checkpoint::write_dir`](super::checkpoint::write_dir)) completed or removed, and a
//!   `latest` that names no complete checkpoint pointed back at the newest complete one.

use super::checkpoint::{self, Checkpoint, LATEST_FILE};
use super::trainer::{LOSS_PLOT_FILE, METRICS_FILE};
use crate::engine::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file in a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// The advisory lock on a run directory, held until dropped (the file is then removed).
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: Option<File>,
}

impl RunLock {
    /// Take the lock on `dir` (created if missing), or fail naming the run that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(LOCK_FILE);
        // A holder removes the file before unlocking, so a lock won on a file that is no longer
        // at `path` is worthless: try again on the new one.
        for _ in 0..16 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            if !imp::try_lock(&file).map_err(|e| Error::io(format!("locking {}", path.display()), e))? {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process (it is still starting)" } else { holder };
                return Err(Error::file(
                    &path,
                    format!(
                        "{} is in use by another run: {holder}; wait for it to end, stop it, or train into \
                         another --output-dir",
                        dir.display()
                    ),
                ));
            }
            if !imp::same_file(&file, &path) {
                continue;
            }
            let info = format!(
                "pid {} on host {}, started {} (unix time)\n",
                std::process::id(),
                imp::hostname(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
            );
            use std::io::Write;
            file.set_len(0)
                .and_then(|_| (&file).write_all(info.as_bytes()))
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            return Ok(RunLock { path, file: Some(file) });
        }
        Err(Error::file(&path, "could not be locked: it kept being replaced by other runs"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Remove first, then unlock (closing the file), so nobody locks a file we still own.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

#[cfg(unix)]
mod imp {
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    /// `flock(LOCK_EX | LOCK_NB)`: Ok(false) when another open file holds it.
    pub fn try_lock(file: &File) -> std::io::Result<bool> {
        // SAFETY: `file` owns a valid descriptor for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        }
    }

    pub fn same_file(file: &File, path: &Path) -> bool {
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    pub fn hostname() -> String {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for `len` bytes; gethostname NUL-terminates within it or
        // truncates (we stop at the first NUL or the end).
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "unknown".into();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

#[cfg(not(unix))]
mod imp {
    use std::fs::File;
    use std::path::Path;

    pub fn try_lock(_: &File) -> std::io::Result<bool> {
        Ok(true)
    }

    pub fn same_file(_: &File, _: &Path) -> bool {
        true
    }

    pub fn hostname() -> String {
        std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into())
    }
}

/// The step of a `checkpoint-<step>` directory name.
fn checkpoint_step(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-")?.parse().ok()
}

/// A leftover of an interrupted save: `.checkpoint-<step>.<tmp|old>-<pid>`.
fn leftover(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix(".checkpoint-")?;
    let (step, kind) = rest.split_once('.')?;
    let kind = kind.split_once('-').map_or(kind, |(k, _)| k);
    matches!(kind, "tmp" | "old").then_some(())?;
    Some((step.parse().ok()?, kind))
}

/// A temporary file of an atomic write of one of the run's own files
/// (`.<name>.<pid>.<n>.tmp`, see `engine::io::write_atomic`).
fn stale_temp_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else { return false };
    [LATEST_FILE, METRICS_FILE, LOSS_PLOT_FILE, "finetune.toml"].iter().any(|f| {
        rest.strip_prefix(f).and_then(|r| r.strip_prefix('.')).is_some_and(|r| {
            let mut parts = r.split('.');
            matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
                if a.parse::<u32>().is_ok() && b.parse::<u64>().is_ok())
        })
    })
}

/// What of a run `dir` holds: `latest`, `metrics.jsonl` and checkpoint directories (complete or
/// not), by name; empty when `dir` is missing or holds no run.
pub fn holds_run(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == LATEST_FILE || n == METRICS_FILE || checkpoint_step(n).is_some() || leftover(n).is_some())
        .collect();
    found.sort();
    found
}

/// Refuse a fresh run into `dir` when it holds one, naming the ways out.
pub fn refuse_if_holds_run(dir: &Path) -> Result<()> {
    let found = holds_run(dir);
    if found.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = found.iter().take(4).map(String::as_str).collect();
    let more = if found.len() > 4 { format!(" and {} more", found.len() - 4) } else { String::new() };
    Err(Error::file(
        dir,
        format!(
            "already holds a run ({}{more}); a fresh run would overwrite it. Continue it with `--resume {}`, \
             train into another --output-dir, or pass --overwrite to replace it",
            shown.join(", "),
            dir.display()
        ),
    ))
}

/// Remove the run in `dir` (its checkpoints, leftovers of interrupted saves, `latest`, the
/// metrics, the loss curve and `finetune.toml`), under its lock; other files stay. Returns the
/// names removed.
pub fn clear_run(dir: &Path) -> Result<Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let _lock = RunLock::acquire(dir)?;
    let mut removed = holds_run(dir);
    for extra in [LOSS_PLOT_FILE, "finetune.toml"] {
        if dir.join(extra).exists() {
            removed.push(extra.to_string());
        }
    }
    for name in &removed {
        let p = dir.join(name);
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
    }
    Ok(removed)
}

/// Put `dir` (whose lock the caller holds) back into a consistent state after a killed save:
/// a complete `.checkpoint-N.tmp-*` or `.checkpoint-N.old-*` becomes `checkpoint-N` when that is
/// missing, other leftovers are removed, and a `latest` naming no complete checkpoint is pointed
/// at the newest complete one (or removed). Returns one line per repair, for the log.
pub fn recover(dir: &Path) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(notes) };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    // Newer copies (tmp) are preferred over the copies being replaced (old).
    names.sort_by_key(|n| leftover(n).map(|(_, k)| k != "tmp"));
    for name in &names {
        if stale_temp_file(name) {
            let p = dir.join(name);
            std::fs::remove_file(&p).map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
            notes.push(format!("removed {}, the leftover of an interrupted write", p.display()));
            continue;
        }
        let Some((step, _)) = leftover(name) else { continue };
        let p = dir.join(name);
        let dst = dir.join(checkpoint::dir_name(step));
        if !dst.exists() && Checkpoint::open(&p).is_ok() {
            std::fs::rename(&p, &dst)
                .map_err(|e| Error::io(format!("renaming {} to {}", p.display(), dst.display()), e))?;
            notes.push(format!("recovered {} from the interrupted save {name}", dst.display()));
        } else {
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
            notes.push(format!("removed {}, the leftover of an interrupted save", p.display()));
        }
    }
    let latest = dir.join(LATEST_FILE);
    if latest.exists() {
        let named = std::fs::read_to_string(&latest).unwrap_or_default().trim().to_string();
        let ok = checkpoint_step(&named).is_some() && Checkpoint::open(dir.join(&named)).is_ok();
        if !ok {
            match newest_complete(dir) {
                Some(name) => {
                    crate::engine::io::write_atomic(&latest, format!("{name}\n").as_bytes())?;
                    notes.push(format!(
                        "{} named `{named}`, which is not a complete checkpoint; it now names {name}",
                        latest.display()
                    ));
                }
                None => {
                    std::fs::remove_file(&latest)
                        .map_err(|e| Error::io(format!("removing {}", latest.display()), e))?;
                    notes.push(format!(
                        "removed {}: it named `{named}` and no complete checkpoint exists",
                        latest.display()
                    ));
                }
            }
        }
    }
    Ok(notes)
}

/// The name of the complete checkpoint with the highest step in `dir`.
pub fn newest_complete(dir: &Path) -> Option<String> {
    let mut steps: Vec<usize> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| checkpoint_step(&e.file_name().to_string_lossy()))
        .collect();
    steps.sort_unstable();
    steps.into_iter().rev().map(checkpoint::dir_name).find(|n| Checkpoint::open(dir.join(n)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_parse() {
        assert_eq!(leftover(".checkpoint-12.tmp-345"), Some((12, "tmp")));
        assert_eq!(leftover(".checkpoint-12.old-345"), Some((12, "old")));
        assert_eq!(leftover(".checkpoint-x.tmp-345"), None);
        assert_eq!(leftover(".latest.1.2.tmp"), None);
        assert!(stale_temp_file(".latest.1.2.tmp") && stale_temp_file(".loss.png.10.0.tmp"));
        assert!(!stale_temp_file(".latest.tmp") && !stale_temp_file(".other.1.2.tmp"));
        assert_eq!(checkpoint_step("checkpoint-7"), Some(7));
        assert_eq!(checkpoint_step("checkpoint-"), None);
    }

    #[test]
    fn a_second_lock_names_the_holder_and_the_lock_is_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("vlm4vla-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let lock = RunLock::acquire(&dir).unwrap();
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("run.lock"), "{e}");
        drop(lock);
        assert!(!dir.join(LOCK_FILE).exists());
        drop(RunLock::acquire(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
