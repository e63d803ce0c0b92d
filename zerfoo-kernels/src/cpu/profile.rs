//! Where a CPU program's time goes: with `ZERFOO_PROFILE=1` in the
//! environment (or after [`enable`]), every kernel the [`Cpu`](crate::Cpu)
//! device runs is timed and summed per name, and [`report`] prints the sums
//! next to the wall time since profiling began and how much of it some
//! kernel was running. The rest is the time spent outside the kernels: the
//! framework's own work between them (graph bookkeeping, allocation,
//! dispatch), data loading, the program's code.
//!
//! Names are `family/kernel dtype`, with the unary and binary op's name
//! (`unary/gelu forward f32`) and a product's operand dims
//! (`matmul/gemm_batched f32 8x256x384 · 384x1152ᵀ`, `ᵀ` marking an operand
//! read transposed), so each product shape of a model gets its own row.
//!
//! - A kernel that calls another device kernel (a composed default) counts
//!   as the outer one only.
//! - Kernels called from several threads at once (data-parallel replicas,
//!   the two gradient products of a large product's backward, see
//!   [`MatmulKernels::gradients_side_by_side`](crate::device::MatmulKernels::gradients_side_by_side))
//!   are all summed, so the kernel time can exceed the wall time.
//! - Off, a kernel call costs one relaxed atomic load.
//! - A `CudaDevice` has its own profile (`ZERFOO_CUDA_PROFILE`, GPU time
//!   from CUDA events).
//!
//! ```
//! use zerfoo_kernels::cpu::profile;
//! use zerfoo_kernels::device::SoftmaxKernels;
//! use zerfoo_kernels::{Cpu, Layout};
//!
//! profile::enable();
//! let x = vec![1.0f32, 2.0, 3.0, 4.0];
//! let y = Cpu.softmax_forward::<f32, false>(&x, &Layout::contiguous(&[2, 2]), 1).unwrap();
//! assert!((y[0] + y[1] - 1.0).abs() < 1e-6);
//! let table = profile::report().expect("profiling is on");
//! assert!(table.contains("softmax/forward f32"));
//! profile::disable();
//! assert!(profile::report().is_none());
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::{DType, Layout};

/// Not decided yet: the first kernel reads `ZERFOO_PROFILE`.
const UNSET: u8 = 0;
/// Kernels are not timed.
const OFF: u8 = 1;
/// Kernels are timed.
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// The sums since profiling began.
static TOTALS: Mutex<Option<Totals>> = Mutex::new(None);

/// How many [`Totals`] have been started: each one's number, so that a
/// kernel that began under an earlier one (before an [`enable`]) does not
/// end a later one's covered time.
static STARTS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Kernels running on this thread (the outer one is the one timed).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// One name's calls.
#[derive(Clone)]
struct Calls {
    /// How many.
    count: u64,
    /// Their total seconds.
    secs: f64,
    /// The fastest one's seconds.
    fastest: f64,
    /// How many took each [`Durations`] bucket's time.
    durations: Durations,
}

/// Counts of call times in buckets 1/64 of an octave wide (1.1%), from
/// 2^-24 s (60 ns) to 2^8 s: a median to within 0.6% in 8 KiB per name,
/// however many calls a long run makes.
#[derive(Clone)]
struct Durations(Box<[u32; Durations::BUCKETS]>);

impl Durations {
    const PER_OCTAVE: f64 = 64.0;
    const LOWEST_OCTAVE: f64 = -24.0;
    const BUCKETS: usize = 32 * 64;

    fn new() -> Self {
        Durations(Box::new([0; Self::BUCKETS]))
    }

    /// Counts one call of `secs` seconds (the end buckets take the rest).
    fn add(&mut self, secs: f64) {
        let at = ((secs.log2() - Self::LOWEST_OCTAVE) * Self::PER_OCTAVE).floor();
        // (A float's cast saturates, and NaN casts to 0.)
        let b = (at as usize).min(Self::BUCKETS - 1);
        self.0[b] = self.0[b].saturating_add(1);
    }

    /// The median call's seconds: the middle of the bucket it fell in.
    fn median(&self) -> Option<f64> {
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        let mut seen = 0;
        let b = self.0.iter().position(|&c| {
            seen += u64::from(c);
            2 * seen >= total.max(1)
        })?;
        Some(((b as f64 + 0.5) / Self::PER_OCTAVE + Self::LOWEST_OCTAVE).exp2())
    }
}

/// Per name: its calls; when the sums began; and how much of the wall
/// time since then some kernel was running.
struct Totals {
    /// Its number (see [`STARTS`]).
    number: u64,
    started: Instant,
    by_name: HashMap<String, Calls>,
    /// Outer kernels running now, on any thread.
    running: u32,
    /// Since when `running` has been above zero.
    busy_since: Instant,
    /// Seconds with `running` above zero, up to `busy_since`.
    covered: f64,
}

impl Totals {
    fn new() -> Self {
        let now = Instant::now();
        Totals {
            number: STARTS.fetch_add(1, Ordering::Relaxed) + 1,
            started: now,
            by_name: HashMap::new(),
            running: 0,
            busy_since: now,
            covered: 0.0,
        }
    }

    /// An outer kernel starts at `now`; returns these sums' number, which
    /// its [`leave`](Self::leave) passes back.
    fn enter(&mut self, now: Instant) -> u64 {
        if self.running == 0 {
            self.busy_since = now;
        }
        self.running += 1;
        self.number
    }

    /// An outer kernel that entered these sums numbered `number` ends at
    /// `now` (one that entered earlier sums, before an [`enable`], is not
    /// counted here).
    fn leave(&mut self, now: Instant, number: u64) {
        if number != self.number || self.running == 0 {
            return;
        }
        self.running -= 1;
        if self.running == 0 {
            self.covered += now.saturating_duration_since(self.busy_since).as_secs_f64();
        }
    }

    /// Seconds of the wall time up to `now` during which some kernel ran.
    fn covered(&self, now: Instant) -> f64 {
        let open = if self.running > 0 {
            now.saturating_duration_since(self.busy_since).as_secs_f64()
        } else {
            0.0
        };
        self.covered + open
    }
}

fn totals() -> std::sync::MutexGuard<'static, Option<Totals>> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether kernels are being timed: after [`enable`], or when
/// `ZERFOO_PROFILE` is set to anything but empty or `0` (read once, by the
/// first call, unless [`enable`] or [`disable`] came first).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var("ZERFOO_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
            if on {
                // Only the first to decide starts the clock.
                if STATE
                    .compare_exchange(UNSET, ON, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    *totals() = Some(Totals::new());
                }
            } else {
                let _ = STATE.compare_exchange(UNSET, OFF, Ordering::Relaxed, Ordering::Relaxed);
            }
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Starts timing kernels, from empty sums and a fresh wall clock (also
/// when profiling was already on: a new measurement, e.g. after warm-up).
pub fn enable() {
    *totals() = Some(Totals::new());
    STATE.store(ON, Ordering::Relaxed);
}

/// Stops timing kernels and drops the sums.
pub fn disable() {
    STATE.store(OFF, Ordering::Relaxed);
    *totals() = None;
}

/// The table so far, busiest first: total ms, calls, µs per call (the
/// mean), the median call's µs (to within 0.6%), the fastest call's µs and
/// the share of the wall time per name, under a line with the wall time
/// since profiling began, how much of it some kernel was running (the rest
/// is spent outside them) and the kernels' summed times (more than the
/// wall time when kernels run side by side on several threads). On a shared
/// machine the fastest call shows what a kernel costs undisturbed, and the
/// median what it usually costs: a mean well above the median is a few
/// calls that the machine (or cold caches) slowed down, a median well
/// above the fastest is most of them. `None` when profiling is off.
pub fn report() -> Option<String> {
    if !enabled() {
        return None;
    }
    let guard = totals();
    let t = guard.as_ref()?;
    let now = Instant::now();
    let wall = now.saturating_duration_since(t.started).as_secs_f64() * 1e3;
    let covered = t.covered(now) * 1e3;
    let busy: f64 = t.by_name.values().map(|c| c.secs * 1e3).sum();
    let mut rows: Vec<_> = t.by_name.iter().collect();
    rows.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs).then(a.0.cmp(b.0)));
    let share = |ms: f64| 100.0 * ms / wall.max(f64::MIN_POSITIVE);
    let mut out = format!(
        "CPU profile: {wall:.1} ms wall since profiling began; kernels running during \
         {covered:.1} ms of it ({:.1}%), {:.1} ms outside them; kernel times sum to \
         {busy:.1} ms ({:.1}%)\n{:>10} {:>8} {:>10} {:>10} {:>10} {:>6}  name\n",
        share(covered),
        (wall - covered).max(0.0),
        share(busy),
        "ms",
        "calls",
        "us/call",
        "median",
        "fastest",
        "share"
    );
    for (name, c) in rows {
        let ms = c.secs * 1e3;
        // (Never below the fastest call, which the bucket's middle can be.)
        let median = c.durations.median().map_or(c.fastest, |m| m.max(c.fastest));
        out += &format!(
            "{ms:>10.2} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>5.1}%  {name}\n",
            c.count,
            ms * 1e3 / c.count as f64,
            median * 1e6,
            c.fastest * 1e6,
            share(ms)
        );
    }
    Some(out)
}

/// Runs the kernel `f`, and when profiling is on and no other kernel is
/// running on this thread, adds its time to `name()` (called only then,
/// after `f`).
#[inline]
pub(crate) fn time<R>(name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let depth = DEPTH.with(|d| {
        let v = d.get();
        d.set(v + 1);
        v
    });
    /// Leaves the kernel on this thread even if it unwinds (and then, for
    /// an outer one, ends its share of the covered time).
    struct Leave {
        /// The number of the sums an outer kernel entered.
        entered: Option<u64>,
    }
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
            if let (Some(number), true) = (self.entered, std::thread::panicking()) {
                if let Some(t) = totals().as_mut() {
                    t.leave(Instant::now(), number);
                }
            }
        }
    }
    let start = Instant::now();
    let entered = if depth == 0 {
        totals().as_mut().map(|t| t.enter(start))
    } else {
        None
    };
    let _leave = Leave { entered };
    let r = f();
    if depth == 0 {
        let end = Instant::now();
        let secs = end.saturating_duration_since(start).as_secs_f64();
        let name = name();
        if let Some(t) = totals().as_mut() {
            if let Some(number) = entered {
                t.leave(end, number);
            }
            let e = t.by_name.entry(name).or_insert_with(|| Calls {
                count: 0,
                secs: 0.0,
                fastest: f64::INFINITY,
                durations: Durations::new(),
            });
            e.count += 1;
            e.secs += secs;
            e.fastest = e.fastest.min(secs);
            e.durations.add(secs);
        }
    }
    r
}

/// A kernel's name: `kernel dtype`.
pub(crate) fn name(kernel: &str, dtype: DType) -> String {
    format!("{kernel} {dtype}")
}

/// A product's name: `matmul/kernel dtype A · B`, each operand's
/// [`dims`].
pub(crate) fn product(kernel: String, dtype: DType, la: &Layout, lb: &Layout) -> String {
    format!("matmul/{kernel} {dtype} {} · {}", dims(la), dims(lb))
}

/// An operand's dims for a name, `x`-separated, with `ᵀ` when its last two
/// axes are read transposed (the next-to-last steps by one element).
pub(crate) fn dims(l: &Layout) -> String {
    let (shape, strides) = (l.shape(), l.strides());
    let mut s = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let r = shape.len();
    if r >= 2 && shape[r - 1] > 1 && shape[r - 2] > 1 && strides[r - 2] == 1 {
        s.push('ᵀ');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{MatmulKernels, SoftmaxKernels};
    use crate::Cpu;

    /// The numbers of the row named `name` in `table`: total ms, calls,
    /// µs per call, the median and the fastest call's µs, the share in %.
    fn row(table: &str, name: &str) -> [f64; 6] {
        let line = table
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("no row `{name}` in\n{table}"));
        let nums: Vec<f64> = line
            .split_whitespace()
            .take(6)
            .map(|w| w.trim_end_matches('%').parse().unwrap_or(f64::NAN))
            .collect();
        nums.try_into()
            .unwrap_or_else(|_| panic!("a short row `{name}` in\n{table}"))
    }

    /// The calls of the row named `name` in `table`.
    fn calls(table: &str, name: &str) -> u64 {
        row(table, name)[1] as u64
    }

    /// The one test that switches profiling (the state is process-wide).
    /// Its names carry dims or words no other test uses, so concurrent
    /// tests' kernels cannot change the counts read here.
    #[test]
    fn profile_counts_outer_kernels_by_name() {
        enable();
        let (la, lb) = (Layout::contiguous(&[7, 13]), Layout::contiguous(&[5, 13]));
        let lbt = lb.permute(&[1, 0]);
        let a: Vec<f64> = (0..91).map(|i| i as f64 * 0.01).collect();
        let b: Vec<f64> = (0..65).map(|i| 1.0 - i as f64 * 0.01).collect();
        for _ in 0..3 {
            Cpu.gemm_batched(&a, &la, &b, &lbt).unwrap();
        }
        // A composed default is not a kernel of its own: the kernel it
        // calls is timed.
        Cpu.gemm_batched_maybe_bias(&a, &la, &b, &lbt, None)
            .unwrap();
        Cpu.softmax_forward::<f64, true>(&a, &la, 1).unwrap();
        // A kernel inside another counts as the outer one only.
        let x = time(
            || "test/outer".into(),
            || time(|| "test/inner".into(), || 1 + 1),
        );
        assert_eq!(x, 2);
        let table = report().expect("on");
        assert!(table.starts_with("CPU profile: "), "{table}");
        // The header's wall time, the part of it with kernels running (ms
        // and % of the wall) and the rest: some, no more than the wall
        // time, and the two parts add up to it (each rounded to 0.1).
        let header: Vec<f64> = table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .filter_map(|w| w.trim_matches(|c| "(%),".contains(c)).parse().ok())
            .collect();
        let [wall, covered, percent, outside, ..] = header[..] else {
            panic!("header {table}")
        };
        assert!(percent > 0.0 && percent <= 100.0, "{table}");
        assert!(covered <= wall, "{table}");
        assert!((covered + outside - wall).abs() <= 0.2, "{table}");
        assert_eq!(calls(&table, "matmul/gemm_batched f64 7x13 · 13x5ᵀ"), 4);
        // The fastest of the four calls took no longer than their mean
        // (both rounded to 0.1 µs), and some time; the median (the second
        // fastest of four, at most 4/3 of their mean, give or take its
        // bucket's 0.6%) is no faster than the fastest.
        let [_, _, mean, median, fastest, _] = row(&table, "matmul/gemm_batched f64 7x13 · 13x5ᵀ");
        assert!(fastest > 0.0 && fastest <= mean, "{table}");
        assert!(fastest <= median && median <= 1.4 * mean + 0.1, "{table}");
        assert_eq!(calls(&table, "test/outer"), 1);
        assert!(!table.contains("test/inner"), "{table}");
        assert!(!table.contains("maybe_bias"), "{table}");
        assert!(table.contains("softmax/log_forward f64"), "{table}");

        // A new measurement starts from empty sums.
        enable();
        assert!(!report().unwrap().contains("7x13"));
        disable();
        assert!(report().is_none());
        Cpu.gemm_batched(&a, &la, &b, &lbt).unwrap();
        enable();
        assert!(!report().unwrap().contains("7x13"));
        disable();
    }

    #[test]
    fn durations_give_the_median_within_a_bucket() {
        let mut d = Durations::new();
        assert_eq!(d.median(), None);
        // 5 calls of 1 ms, 4 of 10 ms: the median is 1 ms.
        for _ in 0..5 {
            d.add(1e-3);
        }
        for _ in 0..4 {
            d.add(1e-2);
        }
        let m = d.median().unwrap();
        assert!((m / 1e-3 - 1.0).abs() < 0.006, "{m}");
        // Two more of 10 ms: now it is 10 ms.
        d.add(1e-2);
        d.add(1e-2);
        let m = d.median().unwrap();
        assert!((m / 1e-2 - 1.0).abs() < 0.006, "{m}");
        // Times past either end land in the end buckets, never a panic.
        let mut ends = Durations::new();
        for secs in [0.0, 1e-12, f64::NAN, 1e6, f64::INFINITY] {
            ends.add(secs);
        }
        assert_eq!(ends.0[0] + ends.0[Durations::BUCKETS - 1], 5);
    }

    #[test]
    fn covered_time_counts_overlapping_kernels_once() {
        use std::time::Duration;
        let mut t = Totals::new();
        let at = |ms: u64| t.started + Duration::from_millis(ms);
        let (t1, t2, t3, t5, t7, t8, t10, t11, t12) = (
            at(1),
            at(2),
            at(3),
            at(5),
            at(7),
            at(8),
            at(10),
            at(11),
            at(12),
        );
        let n = t.number;
        // A leave with no kernel running.
        t.leave(t1, n);
        // Two kernels side by side over 1..5 ms, then one over 7..8 ms.
        assert_eq!(t.enter(t1), n);
        t.enter(t2);
        // One that entered earlier sums (before an `enable`) ends nothing.
        t.leave(t3, n - 1);
        t.leave(t3, n);
        assert_eq!(t.covered(t3), 2e-3);
        t.leave(t5, n);
        assert_eq!(t.covered(t5), 4e-3);
        t.enter(t7);
        t.leave(t8, n);
        let ms = |s: f64| (s * 1e3 * 1e6).round() / 1e6;
        assert_eq!(ms(t.covered(t10)), 5.0);
        // One still running counts up to now.
        t.enter(t11);
        assert_eq!(ms(t.covered(t12)), 6.0);
    }

    #[test]
    fn dims_mark_transposed_operands() {
        let l = Layout::contiguous(&[8, 256, 384]);
        assert_eq!(dims(&l), "8x256x384");
        assert_eq!(
            dims(&Layout::contiguous(&[1152, 384]).permute(&[1, 0])),
            "384x1152ᵀ"
        );
        // A single column or row is the same either way.
        assert_eq!(
            dims(&Layout::contiguous(&[1, 384]).permute(&[1, 0])),
            "384x1"
        );
    }
}
