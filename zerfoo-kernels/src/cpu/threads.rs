//! Keeping the CPU pool's workers awake between kernels.

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
