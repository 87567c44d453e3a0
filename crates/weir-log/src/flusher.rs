//! Group commit: one flusher thread per disk fsyncs, in rounds, every file that was written
//! since the previous round, across all partitions that share it.
//!
//! An appender writes its batch, registers the file with [`Flusher::submit`] and, under the
//! default policy, waits for the round that covers it. Appends that arrive while a round's
//! fsyncs run all join the next round, so one fsync per file acknowledges many appends.
//! Under the relaxed policy the appender does not wait; its file is due `ms` later.
//!
//! A failed fsync poisons the flusher: the kernel may have dropped the dirty pages, so no
//! later fsync can be trusted to cover them. Every waiter and every later submit fails.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_types::Offset;

use crate::error::{LogError, Result};

/// A partition's durable end offset, advanced by the flusher after a round.
#[derive(Debug, Default)]
pub struct DurableMark {
    state: Mutex<MarkState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct MarkState {
    /// Bumped on truncation, so a round that started before it cannot move the mark past the
    /// truncated end.
    generation: u64,
    offset: Offset,
}

impl DurableMark {
    pub fn new(offset: Offset) -> DurableMark {
        DurableMark {
            state: Mutex::new(MarkState {
                generation: 0,
                offset,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MarkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn offset(&self) -> Offset {
        self.lock().offset
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn advance(&self, generation: u64, offset: Offset) {
        let mut state = self.lock();
        if state.generation == generation && state.offset < offset {
            state.offset = offset;
        }
    }

    /// Called after truncating the log to `end` (already fsynced).
    pub fn reset(&self, end: Offset) {
        let mut state = self.lock();
        state.generation += 1;
        state.offset = state.offset.min(end);
    }

    /// Called when data up to `offset` is known durable by other means (sealing a segment).
    pub fn raise(&self, offset: Offset) {
        let mut state = self.lock();
        if state.offset < offset {
            state.offset = offset;
        }
    }
}

/// What a waiter waits for: the round that will include its write.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Ticket {
    round: u64,
}

#[derive(Debug)]
struct Pending {
    file: Arc<File>,
    due: Instant,
    marks: Vec<(Arc<DurableMark>, u64, Offset)>,
    /// Bytes of the file to drop from the page cache once the round has fsynced it.
    uncache: Option<Range<u64>>,
}

/// Called once with the outcome of the round it waits for, on the flusher's thread (or the
/// caller's, when that round is already over).
pub type Completion = Box<dyn FnOnce(Result<()>) + Send>;

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// Completions by the round they wait for, in the order they were registered.
    completions: Vec<(u64, Completion)>,
    started: u64,
    completed: u64,
    failed: Option<String>,
    shutdown: bool,
    rounds: u64,
    fsyncs: u64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("pending", &self.pending.len())
            .field("completions", &self.completions.len())
            .field("started", &self.started)
            .field("completed", &self.completed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    observer: std::sync::OnceLock<RoundObserver>,
}

/// Told, on the flusher's thread, how long each round's fsyncs took and how many files they
/// covered (for a latency histogram). It must be quick.
pub type RoundObserver = Box<dyn Fn(Duration, usize) + Send + Sync>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .field("observed", &self.observer.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub rounds: u64,
    pub fsyncs: u64,
}

/// The group-commit flusher for one disk. Dropping it flushes what is pending and stops the
/// thread.
#[derive(Debug)]
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub fn spawn(name: &str) -> Result<Arc<Flusher>> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name(format!("weir-flush-{name}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let name = name.to_string();
                move || run(&shared, &name)
            })
            .map_err(LogError::io("spawn flusher thread"))?;
        Ok(Arc::new(Flusher {
            shared,
            thread: Some(thread),
        }))
    }

    /// Registers `file` (identified by `file_id`) to be fsynced no later than `delay` from now,
    /// after which `mark` advances to `end` unless its generation moved on, and the bytes in
    /// `uncache` (written before this call) leave the page cache.
    pub fn submit(
        &self,
        file_id: u64,
        file: &Arc<File>,
        mark: &Arc<DurableMark>,
        end: Offset,
        delay: Duration,
        uncache: Option<Range<u64>>,
    ) -> Result<Ticket> {
        let generation = mark.generation();
        let due = Instant::now() + delay;
        let mut state = self.shared.lock();
        if let Some(reason) = &state.failed {
            return Err(LogError::FlushFailed(reason.clone()));
        }
        let pending = state.pending.entry(file_id).or_insert_with(|| Pending {
            file: Arc::clone(file),
            due,
            marks: Vec::new(),
            uncache: None,
        });
        pending.due = pending.due.min(due);
        if let Some(more) = uncache {
            pending.uncache = Some(match pending.uncache.take() {
                Some(had) => had.start.min(more.start)..had.end.max(more.end),
                None => more,
            });
        }
        match pending
            .marks
            .iter_mut()
            .find(|(m, g, _)| Arc::ptr_eq(m, mark) && *g == generation)
        {
            Some((_, _, e)) => *e = (*e).max(end),
            None => pending.marks.push((Arc::clone(mark), generation, end)),
        }
        let ticket = Ticket {
            round: state.started + 1,
        };
        drop(state);
        self.shared.work.notify_one();
        Ok(ticket)
    }

    /// Blocks until the round named by `ticket` has fsynced.
    pub fn wait(&self, ticket: Ticket) -> Result<()> {
        let mut state = self.shared.lock();
        loop {
            if let Some(reason) = &state.failed {
                return Err(LogError::FlushFailed(reason.clone()));
            }
            if state.completed >= ticket.round {
                return Ok(());
            }
            state = self
                .shared
                .done
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Calls `done` once the round named by `ticket` has fsynced (or failed), without a
    /// thread blocked on it: from the flusher's thread when the round ends, or at once if it
    /// has. `done` must be quick (it runs between rounds); dropping the flusher drops the
    /// completions still waiting.
    pub fn on_complete(&self, ticket: Ticket, done: Completion) {
        let mut state = self.shared.lock();
        if let Some(reason) = &state.failed {
            let reason = reason.clone();
            drop(state);
            return done(Err(LogError::FlushFailed(reason)));
        }
        if state.completed >= ticket.round {
            drop(state);
            return done(Ok(()));
        }
        state.completions.push((ticket.round, done));
    }

    /// Sets the observer told of every round from now on; only the first call sets one.
    pub fn observe(&self, observer: RoundObserver) {
        let _ = self.shared.observer.set(observer);
    }

    pub fn stats(&self) -> FlushStats {
        let state = self.shared.lock();
        FlushStats {
            rounds: state.rounds,
            fsyncs: state.fsyncs,
        }
    }

    /// Flushes everything pending now and waits for it.
    pub fn flush_all(&self) -> Result<()> {
        let ticket = {
            let mut state = self.shared.lock();
            let now = Instant::now();
            for pending in state.pending.values_mut() {
                pending.due = now;
            }
            Ticket {
                round: state.started + 1,
            }
        };
        self.shared.work.notify_one();
        self.wait(ticket)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, name: &str) {
    let mut lanes = Lanes::new(name);
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        let next_due = state.pending.values().map(|p| p.due).min();
        let ready = match next_due {
            Some(due) => due <= now || state.shutdown,
            None => false,
        };
        if !ready {
            if state.shutdown {
                return;
            }
            state = match next_due {
                Some(due) => {
                    shared
                        .work
                        .wait_timeout(state, due - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => shared.work.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
            continue;
        }
        // Everything pending goes in this round, due or not: an early fsync costs little
        // more, and it covers the relaxed partitions' data sooner.
        let mut batch: Vec<Pending> = state.pending.drain().map(|(_, p)| p).collect();
        state.started += 1;
        let round = state.started;
        drop(state);

        let started = Instant::now();
        let failure = lanes.sync_all(&batch);
        if let Some(observe) = shared.observer.get() {
            observe(started.elapsed(), batch.len());
        }

        state = shared.lock();
        state.rounds += 1;
        state.fsyncs += batch.len() as u64;
        match failure {
            Some(reason) => {
                state.failed = Some(reason);
                state.pending.clear();
            }
            None => {
                for pending in &mut batch {
                    for (mark, generation, end) in pending.marks.drain(..) {
                        mark.advance(generation, end);
                    }
                }
            }
        }
        state.completed = round;
        let outcome = state.failed.clone();
        let due: Vec<Completion> = if outcome.is_some() {
            state.completions.drain(..).map(|(_, done)| done).collect()
        } else {
            let (due, later) = std::mem::take(&mut state.completions)
                .into_iter()
                .partition(|(r, _)| *r <= round);
            state.completions = later;
            due.into_iter().map(|(_, done)| done).collect()
        };
        shared.done.notify_all();
        if !due.is_empty() {
            // outside the lock: a completion may submit again
            drop(state);
            for done in due {
                done(match &outcome {
                    Some(reason) => Err(LogError::FlushFailed(reason.clone())),
                    None => Ok(()),
                });
            }
            state = shared.lock();
        }
        if outcome.is_none() {
            // after the answers, outside the lock: only memory is at stake here
            drop(state);
            uncache(&batch);
            state = shared.lock();
        }
    }
}

/// Drops from the page cache what a round's files no longer keep cached. Advice only: a
/// failure costs memory, not data, so it is not reported.
fn uncache(batch: &[Pending]) {
    for pending in batch {
        if let Some(range) = &pending.uncache {
            let _ = crate::segment::drop_cached(&pending.file, range.clone());
        }
    }
}

fn sync_one(file: &File) -> std::io::Result<()> {
    let covered = weir_faults::journal::before_sync(file);
    file.sync_data()?;
    covered.synced();
    Ok(())
}

/// Files fsynced concurrently within one round. The device queues concurrent flushes and the
/// filesystem journal commits them together, so a round costs about one fsync, not one per file.
const ROUND_PARALLELISM_MAX: usize = 8;

/// Threads that fsync a round's files beside the flusher's own, spawned when a round first
/// needs them and kept for the flusher's life: a thread per file per round cost a clone, a
/// stack mapping and an exit each, hundreds of times a second under load.
struct Lanes {
    name: String,
    helpers: Vec<Helper>,
}

struct Helper {
    jobs: mpsc::Sender<Vec<Arc<File>>>,
    done: mpsc::Receiver<std::io::Result<()>>,
    thread: JoinHandle<()>,
}

impl Lanes {
    fn new(name: &str) -> Lanes {
        Lanes {
            name: name.to_string(),
            helpers: Vec::new(),
        }
    }

    /// Helper `i`, spawned if it does not exist yet (`None` if it cannot be).
    fn helper(&mut self, i: usize) -> Option<&Helper> {
        while self.helpers.len() <= i {
            let (jobs, inbox) = mpsc::channel::<Vec<Arc<File>>>();
            let (outcome, done) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!(
                    "weir-fsync-{}-{}",
                    self.name,
                    self.helpers.len() + 1
                ))
                .spawn(move || {
                    for files in inbox {
                        let result = files.iter().try_for_each(|f| sync_one(f));
                        if outcome.send(result).is_err() {
                            return;
                        }
                    }
                })
                .ok()?;
            self.helpers.push(Helper { jobs, done, thread });
        }
        self.helpers.get(i)
    }

    /// Fsyncs every file of a round, spreading them over up to `ROUND_PARALLELISM_MAX`
    /// threads (this one included); the first failure, if any.
    fn sync_all(&mut self, batch: &[Pending]) -> Option<String> {
        if batch.len() == 1 {
            return sync_one(&batch[0].file).err().map(|e| e.to_string());
        }
        let lanes = batch.len().min(ROUND_PARALLELISM_MAX);
        let per_lane = batch.len().div_ceil(lanes);
        let mut chunks = batch.chunks(per_lane);
        let own = chunks.next().unwrap_or_default();
        let mut handed = Vec::new();
        let mut inline = Vec::new();
        for (i, chunk) in chunks.enumerate() {
            let files: Vec<Arc<File>> = chunk.iter().map(|p| Arc::clone(&p.file)).collect();
            match self.helper(i) {
                Some(helper) if helper.jobs.send(files).is_ok() => handed.push(i),
                _ => inline.push(chunk),
            }
        }
        let mut failure = None;
        for pending in own.iter().chain(inline.into_iter().flatten()) {
            if let Err(e) = sync_one(&pending.file) {
                failure.get_or_insert(e.to_string());
            }
        }
        for i in handed {
            let outcome = self.helpers[i]
                .done
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread stopped")));
            if let Err(e) = outcome {
                failure.get_or_insert(e.to_string());
            }
        }
        failure
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for helper in self.helpers.drain(..) {
            drop(helper.jobs);
            let _ = helper.thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observer_hears_of_every_round_and_its_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<Arc<File>> = (0..3)
            .map(|i| Arc::new(File::create(dir.path().join(format!("f{i}"))).expect("create")))
            .collect();
        let flusher = Flusher::spawn("test").expect("spawn");
        let heard = Arc::new(Mutex::new(Vec::new()));
        flusher.observe(Box::new({
            let heard = Arc::clone(&heard);
            move |took, files| heard.lock().expect("lock").push((took, files))
        }));
        let mark = Arc::new(DurableMark::new(Offset(0)));
        // three files due together make one round; then one alone
        let mut last = None;
        for (i, file) in files.iter().enumerate() {
            let due = Duration::from_millis(if i == 2 { 0 } else { 5_000 });
            last = Some(
                flusher
                    .submit(i as u64, file, &mark, Offset(1), due, None)
                    .expect("submit"),
            );
        }
        flusher.wait(last.expect("ticket")).expect("wait");
        let ticket = flusher
            .submit(0, &files[0], &mark, Offset(2), Duration::ZERO, None)
            .expect("submit");
        flusher.wait(ticket).expect("wait");
        let heard = heard.lock().expect("lock").clone();
        let counts: Vec<usize> = heard.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [3, 1]);
        assert!(
            heard
                .iter()
                .all(|(took, _)| *took < Duration::from_secs(10))
        );
    }

    #[test]
    fn waiters_return_after_their_round_and_marks_advance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let flusher = Flusher::spawn("test").expect("spawn");
        let mark = Arc::new(DurableMark::new(Offset(0)));
        let ticket = flusher
            .submit(1, &file, &mark, Offset(5), Duration::ZERO, None)
            .expect("submit");
        flusher.wait(ticket).expect("wait");
        assert_eq!(mark.offset(), Offset(5));

        // a truncation between submit and round keeps the mark from advancing
        let ticket = flusher
            .submit(1, &file, &mark, Offset(9), Duration::from_millis(50), None)
            .expect("submit");
        mark.reset(Offset(3));
        flusher.flush_all().expect("flush");
        flusher.wait(ticket).expect("wait");
        assert_eq!(mark.offset(), Offset(3));
    }

    #[test]
    fn completions_are_called_once_their_round_is_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let flusher = Flusher::spawn("test").expect("spawn");
        let mark = Arc::new(DurableMark::new(Offset(0)));
        let (tx, rx) = std::sync::mpsc::channel();
        for end in 1..=100 {
            // spread over many rounds, so completions are registered while rounds run
            std::thread::sleep(Duration::from_micros(100));
            let ticket = flusher
                .submit(1, &file, &mark, Offset(end), Duration::ZERO, None)
                .expect("submit");
            let (tx, mark) = (tx.clone(), Arc::clone(&mark));
            // the mark has moved by the time the completion runs
            flusher.on_complete(
                ticket,
                Box::new(move |r| {
                    let _ = tx.send((end, r.is_ok(), mark.offset()));
                }),
            );
        }
        drop(tx);
        let seen: Vec<_> = (0..100)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a completion never ran")
            })
            .collect();
        for (end, ok, mark) in seen {
            assert!(ok);
            assert!(
                mark >= Offset(end),
                "completion for {end} ran before its round: {mark:?}"
            );
        }
        assert!(
            flusher.stats().rounds > 2,
            "one round: {:?}",
            flusher.stats()
        );
        // a round already over completes at once, on the caller's thread
        let ticket = flusher
            .submit(1, &file, &mark, Offset(101), Duration::ZERO, None)
            .expect("submit");
        flusher.wait(ticket).expect("wait");
        let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = Arc::clone(&called);
        flusher.on_complete(
            ticket,
            Box::new(move |r| c.store(r.is_ok(), std::sync::atomic::Ordering::SeqCst)),
        );
        assert!(called.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// Threads of this process whose name starts with `prefix` (Linux).
    fn threads_named(prefix: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with(prefix))
            .count()
    }

    #[test]
    fn a_round_of_many_files_uses_kept_threads_and_fails_on_any_of_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flusher = Flusher::spawn("lanes").expect("spawn");
        let files: Vec<_> = (0..16)
            .map(|i| Arc::new(File::create(dir.path().join(format!("f{i}"))).expect("create")))
            .collect();
        let marks: Vec<_> = (0..16)
            .map(|_| Arc::new(DurableMark::new(Offset(0))))
            .collect();
        for round in 1..=3 {
            let mut tickets = Vec::new();
            for (i, (file, mark)) in files.iter().zip(&marks).enumerate() {
                // due later, so all sixteen share the round flush_all starts
                tickets.push(
                    flusher
                        .submit(
                            i as u64,
                            file,
                            mark,
                            Offset(round),
                            Duration::from_secs(60),
                            None,
                        )
                        .expect("submit"),
                );
            }
            flusher.flush_all().expect("flush");
            for ticket in tickets {
                flusher.wait(ticket).expect("wait");
            }
            assert!(marks.iter().all(|m| m.offset() == Offset(round)));
            // eight lanes: the flusher's own thread and seven kept helpers, never more
            assert_eq!(threads_named("weir-fsync-lane"), 7, "round {round}");
        }
        // fsync of /dev/null fails (EINVAL): wherever it lands, the round fails, and the
        // flusher stays failed
        let null = Arc::new(File::open("/dev/null").expect("open /dev/null"));
        let mut tickets = Vec::new();
        for (i, (file, mark)) in files.iter().zip(&marks).enumerate() {
            tickets.push(
                flusher
                    .submit(
                        i as u64,
                        file,
                        mark,
                        Offset(9),
                        Duration::from_secs(60),
                        None,
                    )
                    .expect("submit"),
            );
        }
        let bad = Arc::new(DurableMark::new(Offset(0)));
        let _ = flusher
            .submit(99, &null, &bad, Offset(1), Duration::from_secs(60), None)
            .expect("submit");
        assert!(flusher.flush_all().is_err());
        assert!(matches!(
            flusher.wait(tickets[0]),
            Err(LogError::FlushFailed(_))
        ));
        assert_eq!(bad.offset(), Offset(0));
        assert!(
            flusher
                .submit(1, &files[1], &marks[1], Offset(10), Duration::ZERO, None)
                .is_err()
        );
        drop(flusher);
        assert_eq!(
            threads_named("weir-fsync-lane"),
            0,
            "helpers outlived the flusher"
        );
    }

    #[test]
    fn relaxed_submissions_are_flushed_after_their_delay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let flusher = Flusher::spawn("test").expect("spawn");
        let mark = Arc::new(DurableMark::new(Offset(0)));
        let _ = flusher
            .submit(1, &file, &mark, Offset(2), Duration::from_millis(30), None)
            .expect("submit");
        assert_eq!(mark.offset(), Offset(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while mark.offset() != Offset(2) {
            assert!(Instant::now() < deadline, "interval flush never happened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn many_concurrent_appenders_share_rounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let flusher = Flusher::spawn("test").expect("spawn");
        let mark = Arc::new(DurableMark::new(Offset(0)));
        std::thread::scope(|s| {
            for t in 0..8 {
                let (flusher, file, mark) = (&flusher, &file, &mark);
                s.spawn(move || {
                    for i in 0..50 {
                        let t = flusher
                            .submit(1, file, mark, Offset(t * 100 + i), Duration::ZERO, None)
                            .expect("submit");
                        flusher.wait(t).expect("wait");
                    }
                });
            }
        });
        let stats = flusher.stats();
        assert!(stats.rounds < 400, "no grouping: {stats:?}");
        assert_eq!(mark.offset(), Offset(749));
    }
}
