//! What the bench binaries share: a heap counter, repetition, medians and the result table.
//!
//! Run them with `cargo run --release -p lifecycle-benches --bin <name>`; each prints a markdown
//! table with the baseline and ratios against it, all measured in the same process.

use std::time::Duration;

use peak_alloc::PeakAlloc;

/// Counts every heap byte the process holds, and the peak since the last reset.
#[global_allocator]
pub static HEAP: PeakAlloc = PeakAlloc;

/// One measurement of one variant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// How long it took.
    pub time: Duration,
    /// Peak heap bytes above the starting point, divided by the unit count.
    pub bytes_per_unit: f64,
}

/// Heap bytes now.
pub fn heap_now() -> usize {
    HEAP.current_usage()
}

/// Restarts peak tracking from the current usage.
pub fn reset_peak() {
    HEAP.reset_peak_usage();
}

/// Peak heap bytes since the last reset.
pub fn heap_peak() -> usize {
    HEAP.peak_usage()
}

/// CPU time (user and system) used so far by this process's threads named `name` (all of them
/// with `None`), in seconds, from `/proc/self/task`: the scheduler's own count, to the
/// nanosecond, where the kernel shows it (`sched`), otherwise the 10 ms ticks of `stat`.
pub fn cpu_seconds(name: Option<&str>) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            name.is_none_or(|name| {
                std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
            })
        })
        .map(|task| exact_cpu_seconds(&task.path()).unwrap_or_else(|| tick_cpu_seconds(&task.path())))
        .sum()
}

/// A task's time on a CPU from `sched` (`se.sum_exec_runtime`, in milliseconds), if shown.
fn exact_cpu_seconds(task: &std::path::Path) -> Option<f64> {
    let sched = std::fs::read_to_string(task.join("sched")).ok()?;
    let line = sched.lines().find(|line| line.starts_with("se.sum_exec_runtime"))?;
    let milliseconds: f64 = line.rsplit(':').next()?.trim().parse().ok()?;
    Some(milliseconds / 1e3)
}

/// A task's user and system time from `stat`, in ticks of 10 ms.
fn tick_cpu_seconds(task: &std::path::Path) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is the 3rd field, utime the 14th, stime the 15th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (field(14) + field(15)) / ticks_per_second
}

/// The median of `values` (which must not be empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// A fresh multi-threaded runtime with two workers, as on the machines this project runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("cannot build a tokio runtime: {error}"),
    }
}

/// Formats a duration in the unit that reads best.
pub fn human(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.1} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}
