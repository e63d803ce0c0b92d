//! Keeping the CPU pool's workers awake between kernels, and sharing a
//! kernel's tasks out among them without putting the caller to sleep.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// While alive, the CPU pool's other workers wait for the next kernel by
/// spinning instead of going to sleep.
///
/// Between two parallel kernels of a training step the calling thread
/// runs serial work (autograd bookkeeping, ops too small to split). Left
/// alone, rayon's idle workers yield for a few microseconds, then sleep
/// in the kernel, and the next kernel pays a wake-up per worker: on a
/// small model that is a context switch every few tens of microseconds.
/// A `WarmWorkers` hands each other worker a job that steals and runs the
/// kernels' work as soon as it appears (as OpenMP's spin-wait does). The
/// spinning ends when the guard drops, or after 1 ms without work, so an
/// idle program does not burn its CPUs. Results do not change: the same
/// jobs run, only sooner.
///
/// ```
/// let warm = zerfoo_kernels::cpu::WarmWorkers::start();
/// let total: u64 = rayon::prelude::ParallelIterator::sum(
///     rayon::prelude::IntoParallelIterator::into_par_iter(0..1000u64),
/// );
/// drop(warm);
/// assert_eq!(total, 499_500);
/// ```
#[derive(Debug)]
pub struct WarmWorkers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WarmWorkers {
    /// How long a spinning worker waits for work before it goes back to
    /// rayon's ordinary sleep.
    const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(1);

    /// Starts one spinning job per other worker of the current pool.
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let owner = std::thread::current().id();
        for _ in 1..rayon::current_num_threads() {
            let stop = stop.clone();
            rayon::spawn(move || {
                // The starting thread can pick this job up while it waits
                // inside a kernel; spinning there would stall its own work.
                if std::thread::current().id() == owner {
                    return;
                }
                let mut last_work = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => last_work = std::time::Instant::now(),
                        Some(rayon::Yield::Idle) => {
                            if last_work.elapsed() > Self::IDLE_LIMIT {
                                return;
                            }
                            std::hint::spin_loop();
                        }
                        None => return,
                    }
                }
            });
        }
        WarmWorkers { stop }
    }
}

impl Drop for WarmWorkers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `task(i)` once for every `i` in `0..n`, on the calling thread and
/// on the other workers of its rayon pool, and returns when all are done.
///
/// Like `(0..n).into_par_iter().for_each(task)`, except for how the caller
/// waits: rayon's join lets a thread whose half is done yield a few times
/// and then sleep on a futex until the other half ends, and that wake-up
/// costs 20-60 us on a small model's kernels (a third of a 128 x 512 x 768
/// product). Here each thread has a home: one contiguous share of the
/// tasks (the caller the first, as rayon's halving gives it the first
/// half: consecutive kernels then find their rows in the same core's
/// cache), cut into up to [`UNITS_PER_THREAD`] units that it claims from
/// the front; a thread whose home is done takes units from the back of
/// the others', so a thread that runs slower (its data further away, its
/// core shared) is helped out instead of waited for. The caller spins
/// (running any other pending rayon jobs meanwhile) until the last helper
/// has finished. Each task runs exactly once, so results do not depend on
/// which thread ran it. A panic in a task is re-raised on the caller once
/// every helper is done.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let sum = AtomicUsize::new(0);
/// zerfoo_kernels::cpu::threads::run_tasks(100, |i| {
///     sum.fetch_add(i, Ordering::Relaxed);
/// });
/// assert_eq!(sum.into_inner(), 4950);
/// ```
pub fn run_tasks<F: Fn(usize) + Sync>(n: usize, task: F) {
    let threads = rayon::current_num_threads().min(n);
    if threads <= 1 {
        (0..n).for_each(task);
        return;
    }
    if rayon::current_thread_index().is_none() {
        // Outside the pool there is no local queue to spin on: rayon's
        // own split is as good.
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(&task);
        return;
    }
    let units = n.min(threads * UNITS_PER_THREAD);
    let shared = Shared {
        n,
        units,
        homes: (0..threads)
            .map(|t| AtomicU64::new(Shared::pack(units * t / threads, units * (t + 1) / threads)))
            .collect(),
        next_home: AtomicUsize::new(1),
        helpers: AtomicUsize::new(threads - 1),
        task: &task,
        panic: Mutex::new(None),
    };
    // The helpers outlive nothing: this function returns only after every
    // one of them has left `claim_all` (`helpers` back at 0).
    let at = &shared as *const Shared<'_> as usize;
    for _ in 1..threads {
        rayon::spawn(move || {
            // SAFETY: `shared` lives until `helpers` reaches 0, which
            // happens only after this job's last access (the decrement).
            let shared = unsafe { &*(at as *const Shared<'_>) };
            // Helpers take homes 1..threads in the order they arrive.
            shared.claim_all(shared.next_home.fetch_add(1, Ordering::Relaxed));
            shared.helpers.fetch_sub(1, Ordering::Release);
        });
    }
    shared.claim_all(0);
    while shared.helpers.load(Ordering::Acquire) > 0 {
        // A helper nobody stole yet is still in this thread's queue:
        // running it here (it finds no task left) keeps this from waiting
        // on a busy pool.
        if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
            std::hint::spin_loop();
        }
    }
    if let Some(p) = shared.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// Runs `body((i, chunk))` for every `size`-long chunk of `out` (the last
/// one may be shorter) through [`run_tasks`]: the chunks of
/// `out.par_chunks_mut(size).enumerate().for_each(body)`, without the
/// sleeping wait.
///
/// ```
/// let mut v = vec![0usize; 10];
/// zerfoo_kernels::cpu::threads::for_each_chunk_mut(&mut v, 4, |(i, c)| c.fill(i));
/// assert_eq!(v, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
/// ```
pub fn for_each_chunk_mut<T: Send, F: Fn((usize, &mut [T])) + Sync>(
    out: &mut [T],
    size: usize,
    body: F,
) {
    assert!(size > 0, "for_each_chunk_mut: chunk size 0");
    let len = out.len();
    let base = SyncPtr(out.as_mut_ptr());
    run_tasks(len.div_ceil(size), |i| {
        let lo = i * size;
        // SAFETY: chunk `i` is `lo..min(lo + size, len)` of `out`, which
        // this call borrows mutably; each index runs once, so no two
        // chunks handed out alias.
        let chunk =
            unsafe { core::slice::from_raw_parts_mut(base.get().add(lo), size.min(len - lo)) };
        body((i, chunk));
    });
}

/// [`for_each_chunk_mut`] over two slices cut into the same number of
/// chunks (`size_a` and `size_b` long): `body((i, a_chunk, b_chunk))`.
///
/// ```
/// let (mut a, mut b) = (vec![0; 6], vec![0; 3]);
/// zerfoo_kernels::cpu::threads::for_each_chunk_pair_mut(&mut a, 2, &mut b, 1, |(i, x, y)| {
///     x.fill(i);
///     y[0] = 10 * i;
/// });
/// assert_eq!((a, b), (vec![0, 0, 1, 1, 2, 2], vec![0, 10, 20]));
/// ```
pub fn for_each_chunk_pair_mut<A: Send, B: Send, F>(
    a: &mut [A],
    size_a: usize,
    b: &mut [B],
    size_b: usize,
    body: F,
) where
    F: Fn((usize, &mut [A], &mut [B])) + Sync,
{
    assert!(
        size_a > 0 && size_b > 0,
        "for_each_chunk_pair_mut: chunk size 0"
    );
    let n = a.len().div_ceil(size_a);
    assert_eq!(
        n,
        b.len().div_ceil(size_b),
        "for_each_chunk_pair_mut: chunk counts differ"
    );
    let (la, lb) = (a.len(), b.len());
    let (pa, pb) = (SyncPtr(a.as_mut_ptr()), SyncPtr(b.as_mut_ptr()));
    run_tasks(n, |i| {
        let (lo_a, lo_b) = (i * size_a, i * size_b);
        // SAFETY: as in `for_each_chunk_mut`, for each slice.
        let (ca, cb) = unsafe {
            (
                core::slice::from_raw_parts_mut(pa.get().add(lo_a), size_a.min(la - lo_a)),
                core::slice::from_raw_parts_mut(pb.get().add(lo_b), size_b.min(lb - lo_b)),
            )
        };
        body((i, ca, cb));
    });
}

/// `out`'s `size`-long chunks mapped in order:
/// `out.par_chunks_mut(size).enumerate().map(f).collect()` through
/// [`run_tasks`].
///
/// ```
/// let mut v = vec![1, 2, 3, 4, 5];
/// let sums = zerfoo_kernels::cpu::threads::map_chunks_mut(&mut v, 2, |(_, c)| {
///     c.iter_mut().for_each(|x| *x *= 10);
///     c.iter().sum::<i32>()
/// });
/// assert_eq!((v, sums), (vec![10, 20, 30, 40, 50], vec![30, 70, 50]));
/// ```
pub fn map_chunks_mut<T: Send, R: Send, F>(out: &mut [T], size: usize, f: F) -> Vec<R>
where
    F: Fn((usize, &mut [T])) -> R + Sync,
{
    assert!(size > 0, "map_chunks_mut: chunk size 0");
    let mut res: Vec<Option<R>> = (0..out.len().div_ceil(size)).map(|_| None).collect();
    for_each_chunk_pair_mut(out, size, &mut res, 1, |(i, c, r)| r[0] = Some(f((i, c))));
    res.into_iter()
        .map(|r| r.expect("map_chunks_mut: every chunk ran"))
        .collect()
}

/// `(0..n).map(f)` collected in order, the calls shared out by [`run_tasks`].
///
/// ```
/// let squares = zerfoo_kernels::cpu::threads::map_tasks(5, |i| i * i);
/// assert_eq!(squares, [0, 1, 4, 9, 16]);
/// ```
pub fn map_tasks<R: Send, F: Fn(usize) -> R + Sync>(n: usize, f: F) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for_each_chunk_mut(&mut out, 1, |(i, slot)| slot[0] = Some(f(i)));
    out.into_iter()
        .map(|r| r.expect("map_tasks: every task ran"))
        .collect()
}

/// A buffer's start shared with the tasks of [`run_tasks`], which write
/// disjoint parts of it.
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: the tasks write disjoint parts of a buffer of `T: Send`.
unsafe impl<T: Send> Sync for SyncPtr<T> {}
// SAFETY: as above; moving the pointer to a task moves no `T`.
unsafe impl<T: Send> Send for SyncPtr<T> {}
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// How many units [`run_tasks`] cuts each thread's share of the tasks into
/// (fewer where there are fewer tasks): the grain at which a thread that
/// finished its own share helps with another's.
pub const UNITS_PER_THREAD: usize = 16;

/// The state the caller of [`run_tasks`] shares with its helpers.
struct Shared<'a> {
    n: usize,
    /// Contiguous runs of tasks claimed one at a time: unit `u` is tasks
    /// `n * u / units..n * (u + 1) / units`.
    units: usize,
    /// Each thread's home, the units `lo..hi` not yet claimed, packed as
    /// `lo << 32 | hi` ([`Shared::pack`]): its owner claims from the
    /// front, the others from the back.
    homes: Vec<AtomicU64>,
    /// The home of the next helper to arrive (the caller's is 0).
    next_home: AtomicUsize,
    /// Helpers that have not finished yet.
    helpers: AtomicUsize,
    task: &'a (dyn Fn(usize) + Sync),
    /// The first panic of a task, re-raised by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Shared<'_> {
    /// Units `lo..hi` as one word.
    fn pack(lo: usize, hi: usize) -> u64 {
        ((lo as u64) << 32) | hi as u64
    }

    /// Claims one unit of home `h`: its first (`front`) or last unclaimed one.
    fn claim(&self, h: usize, front: bool) -> Option<usize> {
        let home = &self.homes[h];
        let mut v = home.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = ((v >> 32) as usize, (v & 0xffff_ffff) as usize);
            if lo >= hi {
                return None;
            }
            let (next, unit) = if front {
                (Self::pack(lo + 1, hi), lo)
            } else {
                (Self::pack(lo, hi - 1), hi - 1)
            };
            match home.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(unit),
                Err(now) => v = now,
            }
        }
    }

    /// Runs the units of home `h` from the front, then those left in the
    /// other homes from their backs, until none is left.
    fn claim_all(&self, h: usize) {
        let homes = self.homes.len();
        loop {
            let unit = self
                .claim(h, true)
                .or_else(|| (1..homes).find_map(|d| self.claim((h + d) % homes, false)));
            let Some(u) = unit else {
                return;
            };
            for i in self.n * u / self.units..self.n * (u + 1) / self.units {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.task)(i))) {
                    let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_pool() {
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for n in [0, 1, 2, 3, 7, 64, 100, 1000] {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.install(|| {
                    run_tasks(n, |i| {
                        // Nested: each task shares out its own tasks too.
                        run_tasks(3, |_| {});
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    })
                });
                assert!(
                    counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {n} tasks"
                );
            }
        }
        // Outside any pool (the global one then runs it).
        let counts: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
        run_tasks(9, |i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    /// A thread done with its own share runs what is left of a slower
    /// one's: here the caller's share (the first half) is slow, so the
    /// helper, once through its fast half, takes units from the back of
    /// the caller's.
    #[test]
    fn an_idle_thread_takes_over_the_rest_of_a_slower_share() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let n = 2 * UNITS_PER_THREAD;
        let ran_by: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(usize::MAX)).collect();
        let caller = pool.install(|| {
            run_tasks(n, |i| {
                if i < n / 2 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                let me = rayon::current_thread_index().unwrap();
                ran_by[i].store(me, Ordering::Relaxed);
            });
            rayon::current_thread_index().unwrap()
        });
        let ran_by: Vec<usize> = ran_by.iter().map(|r| r.load(Ordering::Relaxed)).collect();
        assert!(ran_by.iter().all(|&t| t < 2), "every task ran: {ran_by:?}");
        // The caller starts on its own share; if the helper ran anything
        // (it may not have been scheduled in time), it also helped with
        // the caller's slow share, from its back.
        assert_eq!(ran_by[0], caller, "{ran_by:?}");
        if ran_by.iter().any(|&t| t != caller) {
            assert_ne!(ran_by[n / 2 - 1], caller, "{ran_by:?}");
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_after_the_others() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                run_tasks(8, |i| {
                    if i == 3 {
                        panic!("task 3");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
        }));
        let msg = r.unwrap_err().downcast::<&str>().map(|b| *b).unwrap_or("");
        assert_eq!(msg, "task 3");
        assert_eq!(done.load(Ordering::Relaxed), 7);
    }
}
