//! Stall detection for server processes: how late a timer that should fire every tick
//! actually fires, measured twice.
//!
//! - On the async runtime (`weir_runtime_tick_lag_seconds`): late when a task holds a
//!   runtime thread without yielding (blocking I/O, a long lock, a hot loop) or when the
//!   process is not scheduled at all.
//! - On a plain thread of its own (`weir_process_tick_lag_seconds`): late only when the
//!   process is not scheduled (the machine's CPUs are busy elsewhere, or the VM is paused).
//!
//! A lag of [`WARN_AFTER`] or more is logged at warn, naming the timer, so a latency spike in
//! a client can be matched to a stall in one process, or to all of them at once.

use std::time::{Duration, Instant};

/// How often each timer should fire.
pub const TICK: Duration = Duration::from_millis(10);
/// A lag this long or longer is logged.
pub const WARN_AFTER: Duration = Duration::from_millis(50);

/// Starts both detectors; they run for the life of the process. Call from within the
/// runtime.
pub fn spawn() {
    tokio::spawn(async {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            record("runtime", "weir_runtime_tick_lag_seconds", lag(&mut last));
        }
    });
    // A detector that cannot start costs its numbers, not the process.
    let _ = std::thread::Builder::new()
        .name("weir-stall".into())
        .spawn(|| {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(TICK);
                record("process", "weir_process_tick_lag_seconds", lag(&mut last));
            }
        });
}

/// Time past the tick since `last`, and moves `last` to now.
fn lag(last: &mut Instant) -> Duration {
    let now = Instant::now();
    let late = now.duration_since(*last).saturating_sub(TICK);
    *last = now;
    late
}

fn record(what: &str, histogram: &'static str, late: Duration) {
    metrics::histogram!(histogram).record(late);
    if late >= WARN_AFTER {
        tracing::warn!(
            stalled_ms = late.as_millis() as u64,
            "{what} stalled: a {} ms timer fired {} ms late",
            TICK.as_millis(),
            late.as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_time_past_the_tick_and_never_negative() {
        let mut last = Instant::now() - TICK - Duration::from_millis(70);
        let late = lag(&mut last);
        assert!(late >= Duration::from_millis(70), "{late:?}");
        assert!(
            late < Duration::from_millis(70) + Duration::from_secs(1),
            "{late:?}"
        );
        // early wake-ups count as no lag, and `last` moved to now
        let late = lag(&mut last);
        assert_eq!(late, Duration::ZERO);
    }
}
