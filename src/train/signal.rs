//! SIGINT and SIGTERM as a stop flag.
//!
//! The first signal sets [`interrupted`] and records which one it was ([`received`]); the
//! training loop then writes a checkpoint and returns, and `vlm4vla train` exits with
//! [`exit_code`] (130 after SIGINT, 143 after SIGTERM). A second signal ends the process at
//! once with that code, unless a checkpoint is being written ([`SaveGuard`]): then the process
//! ends as soon as the save is complete, so no signal ever leaves a half-written checkpoint.
//!
//! The handler only touches atomics and calls `_exit`, both async-signal-safe. On other
//! platforms than Unix [`install_handlers`] does nothing and callers use
//! `Trainer::request_stop`.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The exit status after a SIGINT (Ctrl-C): 128 + 2.
pub const EXIT_SIGINT: i32 = 130;
/// The exit status after a SIGTERM (e.g. from a scheduler): 128 + 15.
pub const EXIT_SIGTERM: i32 = 143;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static SAVING: AtomicBool = AtomicBool::new(false);
static EXIT_AFTER_SAVE: AtomicBool = AtomicBool::new(false);

/// Whether a SIGINT or SIGTERM arrived since the handlers were installed (or the flag was
/// cleared).
pub fn interrupted() -> bool {
    RECEIVED.load(Ordering::SeqCst) != 0
}

/// The first signal received (2 = SIGINT, 15 = SIGTERM), if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status that reports the signal received: 128 + its number (130, 143).
pub fn exit_code() -> Option<i32> {
    received().map(|s| 128 + s)
}

/// Forget an earlier signal.
pub fn clear_interrupt() {
    RECEIVED.store(0, Ordering::SeqCst);
    EXIT_AFTER_SAVE.store(false, Ordering::SeqCst);
}

/// Marks a checkpoint save in progress: a second signal during it waits for the save, and the
/// process ends with [`exit_code`] when the guard is dropped.
pub struct SaveGuard(());

impl SaveGuard {
    pub fn new() -> SaveGuard {
        SAVING.store(true, Ordering::SeqCst);
        SaveGuard(())
    }
}

impl Default for SaveGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SaveGuard {
    fn drop(&mut self) {
        SAVING.store(false, Ordering::SeqCst);
        if EXIT_AFTER_SAVE.load(Ordering::SeqCst) {
            eprintln!("checkpoint complete; exiting on the second signal");
            std::process::exit(exit_code().unwrap_or(EXIT_SIGINT));
        }
    }
}

#[cfg(unix)]
mod imp {
    use super::{EXIT_AFTER_SAVE, RECEIVED, SAVING};
    use std::sync::atomic::Ordering;

    extern "C" fn on_signal(sig: libc::c_int) {
        if RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
        if SAVING.load(Ordering::SeqCst) {
            EXIT_AFTER_SAVE.store(true, Ordering::SeqCst);
            return;
        }
        let code = 128 + RECEIVED.load(Ordering::SeqCst);
        // SAFETY: `_exit` is async-signal-safe; no save is in progress, so every checkpoint on
        // disk is complete.
        unsafe { libc::_exit(code) }
    }

    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler has
            // the C signature `void (*)(int)` and touches only atomics and `_exit`.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }
}

/// Install the SIGINT and SIGTERM handlers (call once, from a binary; libraries and tests need
/// not).
pub fn install_handlers() {
    #[cfg(unix)]
    imp::install();
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn sigterm_sets_the_flag_and_the_exit_code() {
        super::install_handlers();
        assert!(!super::interrupted());
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        let start = std::time::Instant::now();
        while !super::interrupted() && start.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(super::received(), Some(15));
        assert_eq!(super::exit_code(), Some(super::EXIT_SIGTERM));
        super::clear_interrupt();
        assert!(!super::interrupted());
    }
}
