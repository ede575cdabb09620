//! Ctrl-C as a flag: the first SIGINT sets [`interrupted`] (the training loop then writes a
//! checkpoint and returns); the handler also restores the default action, so a second Ctrl-C
//! ends the process at once.
//!
//! The handler only stores to an `AtomicBool` and calls `signal`, both async-signal-safe. It is
//! installed through the C library's `signal` (which std already links on Unix); on other
//! platforms [`install_sigint_handler`] does nothing and callers use `Trainer::request_stop`.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a SIGINT arrived since the handler was installed (or the flag was cleared).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Forget an earlier SIGINT.
pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

#[cfg(unix)]
mod imp {
    use super::INTERRUPTED;
    use std::os::raw::c_int;
    use std::sync::atomic::Ordering;

    const SIGINT: c_int = 2;
    const SIG_DFL: usize = 0;

    extern "C" {
        fn signal(signum: c_int, handler: usize) -> usize;
    }

    extern "C" fn on_sigint(_: c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
        // SAFETY: `signal` is async-signal-safe; SIG_DFL makes a second Ctrl-C terminate.
        unsafe {
            signal(SIGINT, SIG_DFL);
        }
    }

    pub fn install() {
        let handler: extern "C" fn(c_int) = on_sigint;
        // SAFETY: the handler has the C signature `void (*)(int)` and touches only an atomic.
        unsafe {
            signal(SIGINT, handler as usize);
        }
    }
}

/// Install the SIGINT handler (call once, from a binary; libraries and tests need not).
pub fn install_sigint_handler() {
    #[cfg(unix)]
    imp::install();
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn sigint_sets_the_flag() {
        super::install_sigint_handler();
        assert!(!super::interrupted());
        let status = std::process::Command::new("kill")
            .args(["-INT", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        let start = std::time::Instant::now();
        while !super::interrupted() && start.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(super::interrupted());
        super::clear_interrupt();
        assert!(!super::interrupted());
    }
}
