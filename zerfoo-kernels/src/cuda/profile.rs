//! Where a GPU program's time goes: with the environment variable
//! `ZERFOO_CUDA_PROFILE=1` set when a [`CudaDevice`](super::CudaDevice) is
//! opened, every kernel launch, cuBLAS product and host copy on it is
//! bracketed by a pair of CUDA events, and
//! [`CudaDevice::profile_report`](super::CudaDevice::profile_report) sums
//! the GPU time per name (`op/kernel`, or `matmul/gemm_<dtype> MxKxN ...`)
//! next to the wall time since the device opened. Work is still queued
//! asynchronously (the events only read the GPU's clock), so the difference
//! between the wall time and the GPU's busy time is the host's overhead.
//! The host time spent inside each call (launch, cuBLAS's own work, a copy
//! that waits) is summed too. A GPU interval includes any time the GPU sat
//! idle between its start event and the work, so a call made after the
//! host waited (a copy to the host) also counts its own host time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

use super::error::{cuda_call, CudaError};

/// Events resolved (and freed) in batches of this many pairs.
const FOLD_EVERY: usize = 4096;

/// Per name: calls, GPU ms, host ms.
#[derive(Default)]
struct Totals {
    calls: u64,
    gpu_ms: f64,
    host_ms: f64,
}

/// GPU time per name, and the event pairs not yet read.
pub(crate) struct Profile {
    pending: Vec<(String, CudaEvent, CudaEvent, f64)>,
    totals: HashMap<String, Totals>,
    started: Instant,
}

impl Profile {
    /// A profile if `ZERFOO_CUDA_PROFILE` is set to anything but `0`.
    pub(crate) fn from_env() -> Option<Profile> {
        let on = std::env::var("ZERFOO_CUDA_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
        on.then(|| Profile {
            pending: Vec::new(),
            totals: HashMap::new(),
            started: Instant::now(),
        })
    }

    /// Runs `f` between two events recorded on `stream`, charged to `name`.
    pub(crate) fn time<R>(
        &mut self,
        stream: &Arc<CudaStream>,
        name: String,
        f: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = cuda_call("cuEventRecord", || stream.record_event(flags))?;
        let host = Instant::now();
        let r = f()?;
        let host_ms = host.elapsed().as_secs_f64() * 1e3;
        let end = cuda_call("cuEventRecord", || stream.record_event(flags))?;
        self.pending.push((name, start, end, host_ms));
        if self.pending.len() >= FOLD_EVERY {
            self.fold()?;
        }
        Ok(r)
    }

    /// Reads every pending pair (waiting for the GPU) into the totals.
    fn fold(&mut self) -> Result<(), CudaError> {
        for (name, start, end, host_ms) in self.pending.drain(..) {
            let ms = cuda_call("cuEventElapsedTime", || start.elapsed_ms(&end))?;
            let t = self.totals.entry(name).or_default();
            t.calls += 1;
            t.gpu_ms += f64::from(ms);
            t.host_ms += host_ms;
        }
        Ok(())
    }

    /// The table: GPU ms, calls, GPU and host µs per call and share per
    /// name, busiest first, under a line with the wall and GPU totals.
    pub(crate) fn report(&mut self) -> Result<String, CudaError> {
        self.fold()?;
        let wall = self.started.elapsed().as_secs_f64() * 1e3;
        let busy: f64 = self.totals.values().map(|t| t.gpu_ms).sum();
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1.gpu_ms.total_cmp(&a.1.gpu_ms));
        let mut out = format!(
            "CUDA profile: {wall:.1} ms wall since the device opened, {busy:.1} ms of it in GPU intervals\n\
             {:>10} {:>8} {:>9} {:>9} {:>6}  name\n",
            "gpu_ms", "calls", "gpu_us", "host_us", "share"
        );
        for (name, t) in rows {
            let per = |ms: f64| ms * 1e3 / t.calls as f64;
            out += &format!(
                "{:>10.2} {:>8} {:>9.1} {:>9.1} {:>5.1}%  {name}\n",
                t.gpu_ms,
                t.calls,
                per(t.gpu_ms),
                per(t.host_ms),
                100.0 * t.gpu_ms / busy.max(f64::MIN_POSITIVE)
            );
        }
        Ok(out)
    }
}
