//! The CPU backend's threads for its parallel loops: the calling thread plus persistent workers
//! that spin between loops.
//!
//! A training step runs hundreds of parallel loops (every GEMM, every large elementwise op) with
//! short serial stretches between them. rayon's idle workers sleep after a few dozen
//! `sched_yield`s, so nearly every loop woke a sleeping thread, and the caller slept until the
//! loop was done: about 1,500 context switches per `pg-4x4` step, against about 25 per step for
//! PyTorch, whose OpenMP threads spin between loops. On a virtual machine a sleeping vCPU takes
//! long to wake when the host is busy, and the step slowed by a third in such phases. Here the
//! workers spin for [`SPIN`] after each loop (then sleep until the next), the caller takes part
//! in the loop, and tasks are handed out by an atomic counter, so a late worker delays nothing:
//! the threads already running take its tasks.
//!
//! One loop runs at a time. A loop started inside a task, or by another thread while a loop runs
//! (a data-loading thread), runs its tasks itself, in order. Every task writes its own part of
//! the output and partial results are combined in task order, so results never depend on which
//! thread ran what.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next loop before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// One parallel loop: `tasks` calls of `f`, the next task index in `next`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    /// Workers allowed in (the caller's thread count, less the caller).
    helpers: usize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Run tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.tasks {
                return;
            }
            (self.f)(i);
        }
    }
}

struct Pool {
    workers: usize,
    /// The open loop, or null; a `Job` on the calling thread's stack, lifetime erased.
    job: AtomicPtr<Job<'static>>,
    /// Bumped for every loop, so a worker joins each loop once.
    generation: AtomicU64,
    /// Workers inside the open loop (entered and not yet left).
    active: AtomicUsize,
    /// Whether a loop is running (one at a time).
    busy: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

thread_local! {
    /// Whether this thread is running a task (a loop started here runs serially).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // As many threads as rayon's global pool (`RAYON_NUM_THREADS`, else the cores).
        let workers = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for index in 0..workers {
            std::thread::Builder::new()
                .name(format!("vlm4vla-cpu-{index}"))
                .spawn(move || worker(pool, index))
                .expect("spawning a CPU worker thread");
        }
        pool
    })
}

/// The number of threads a loop started here runs on: the caller's rayon thread count (so a
/// `rayon::ThreadPool::install` with one thread runs loops serially), at most the workers + 1.
pub(crate) fn count() -> usize {
    if IN_TASK.with(Cell::get) {
        return 1;
    }
    rayon::current_num_threads().min(pool().workers + 1).max(1)
}

fn worker(pool: &'static Pool, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new loop: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while pool.generation.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                continue;
            }
            // Let other runnable threads (data loading) have this core now and then.
            std::thread::yield_now();
            if start.elapsed() > SPIN {
                let mut guard = pool.lock.lock().unwrap_or_else(|e| e.into_inner());
                pool.sleepers.fetch_add(1, SeqCst);
                while pool.generation.load(SeqCst) == seen {
                    guard = pool.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                pool.sleepers.fetch_sub(1, SeqCst);
                drop(guard);
            }
        }
        seen = pool.generation.load(SeqCst);
        // Enter the loop if it is still open (see `Open::drop` for why this order is safe).
        pool.active.fetch_add(1, SeqCst);
        let job = pool.job.load(SeqCst);
        if !job.is_null() {
            // SAFETY: the loop's owner keeps the `Job` alive until `active` is back to zero
            // after closing it; this thread counted itself in before reading the pointer.
            let job = unsafe { &*job };
            if index < job.helpers {
                IN_TASK.with(|t| t.set(true));
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.work())).is_err() {
                    job.panicked.store(true, SeqCst);
                }
                IN_TASK.with(|t| t.set(false));
            }
        }
        pool.active.fetch_sub(1, SeqCst);
    }
}

/// Closes the open loop when the owner leaves (normally or by a panic): no worker enters it
/// any more, and the owner waits for those inside to leave before the `Job` goes away.
struct Open<'p> {
    pool: &'p Pool,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        // A worker counts itself in (`active`) before reading `job`, and this thread clears
        // `job` before reading `active` (all sequentially consistent): a worker that saw the job
        // is counted here, one counted later finds `job` null.
        self.pool.job.store(std::ptr::null_mut(), SeqCst);
        let mut spins = 0u32;
        while self.pool.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            }
        }
        self.pool.busy.store(false, SeqCst);
    }
}

/// Call `f(i)` for every `i` in `0..tasks`, on [`count`] threads (the caller among them);
/// returns when every call has returned. A panic in a task is raised here.
pub(crate) fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = count();
    let pool = pool();
    if tasks <= 1 || threads <= 1 || pool.busy.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        let was = IN_TASK.with(|t| t.replace(true));
        (0..tasks).for_each(f);
        IN_TASK.with(|t| t.set(was));
        return;
    }
    let job = Job { f, tasks, next: AtomicUsize::new(0), helpers: threads - 1, panicked: AtomicBool::new(false) };
    {
        let open = Open { pool };
        // SAFETY (lifetime erased): `open` clears the pointer and waits for every worker inside
        // before `job` is dropped, on every way out of this block.
        open.pool.job.store((&job as *const Job<'_>).cast_mut().cast(), SeqCst);
        pool.generation.fetch_add(1, SeqCst);
        if pool.sleepers.load(SeqCst) > 0 {
            let _guard = pool.lock.lock().unwrap_or_else(|e| e.into_inner());
            pool.wake.notify_all();
        }
        IN_TASK.with(|t| t.set(true));
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.work()));
        IN_TASK.with(|t| t.set(false));
        drop(open);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
    }
    assert!(!job.panicked.load(SeqCst), "a task of a parallel CPU loop panicked");
}

/// A pointer to distinct elements handed to distinct tasks.
struct Shared<U>(*mut U);
// SAFETY: each task dereferences only its own element (see the callers).
unsafe impl<U: Send> Sync for Shared<U> {}

impl<U> Shared<U> {
    /// Element `i` (a method, so closures capture the wrapper rather than the raw pointer).
    fn at(&self, i: usize) -> *mut U {
        self.0.wrapping_add(i)
    }
}

/// `f(i, &mut items[i])` for every item, in parallel; the results in item order.
pub(crate) fn map_mut<U: Send, R: Send>(items: &mut [U], f: impl Fn(usize, &mut U) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let (src, dst) = (Shared(items.as_mut_ptr()), Shared(out.as_mut_ptr()));
    run(items.len(), &|i| {
        // SAFETY: task `i` alone touches element `i` of both vectors, which outlive the loop.
        unsafe { *dst.at(i) = Some(f(i, &mut *src.at(i))) }
    });
    out.into_iter().map(|r| r.expect("every task ran")).collect()
}

/// `f(i)` for every `i` in `0..tasks`, in parallel; the results in order.
pub(crate) fn map<R: Send>(tasks: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    map_mut(&mut vec![(); tasks], |i, _| f(i))
}

/// `f(i, chunk)` for the `chunk`-long pieces of `data` (the last may be shorter), in parallel.
pub(crate) fn for_chunks_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let mut chunks: Vec<&mut [T]> = data.chunks_mut(chunk.max(1)).collect();
    map_mut(&mut chunks, |i, c| f(i, c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_results_keep_their_order() {
        for tasks in [0, 1, 2, 3, 17, 1000] {
            let out = map(tasks, |i| i * i);
            assert_eq!(out, (0..tasks).map(|i| i * i).collect::<Vec<_>>());
            let mut data = vec![0usize; tasks * 3 + 1];
            for_chunks_mut(&mut data, 3, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
            let want: Vec<usize> = (0..data.len()).map(|j| j / 3 + 1).collect();
            assert_eq!(data, want);
        }
    }

    #[test]
    fn nested_and_concurrent_loops_run_and_finish() {
        let out = map(8, |i| map(5, move |j| i * 10 + j).iter().sum::<usize>());
        assert_eq!(out, (0..8).map(|i| 50 * i + 10).collect::<Vec<_>>());
        let handles: Vec<_> =
            (0..4).map(|t| std::thread::spawn(move || map(200, |i| i + t).iter().sum::<usize>())).collect();
        for (t, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), (0..200).sum::<usize>() + 200 * t);
        }
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_threads_go_on() {
        let r = std::panic::catch_unwind(|| map(64, |i| if i == 40 { panic!("task 40") } else { i }));
        assert!(r.is_err());
        assert_eq!(map(64, |i| i).len(), 64);
    }
}
