//! Work taken off the shards: a small pool of threads for the reads that scan a whole
//! collection (a live query's load, an entity list), `since` replays and large publish
//! bodies, so that no single request holds a shard's loop for its duration (issue 21: no
//! shard stalls).
//!
//! Owned by the [`Node`](crate::node::Node) (built with it, one pool per process); any
//! shard submits jobs. A job runs on a pool thread and answers through the shard's
//! mailbox (`ShardMsg`, like the other off-shard answers), so the shard goes on serving
//! its other connections meanwhile and takes the result in on a later loop turn, on its
//! own thread. A job must hold nothing of the shard (`Send + 'static`): it reads shared
//! state (the replica, the history) or hands items to ingest, and sends bytes back.
//!
//! The threads run at the lowest priority (`SCHED_IDLE`, else nice 19): the shards come
//! first.
//!
//! Jobs run in submission order per thread, first come first served; the queue is
//! unbounded because every job is one request of a connection already admitted (and
//! bounded by that connection's own limits, e.g. `limits.max_live_queries`).

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// Threads of the pool: two, so that one long scan never queues every other one behind
/// it, and few, so that scans do not take the cores the shards run on.
pub const THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// See the module docs.
pub struct Offload {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Offload {
    /// Starts the pool's threads.
    pub fn start() -> Offload {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..THREADS)
            .filter_map(|i| {
                let rx: Receiver<Job> = rx.clone();
                let span = tracing::Span::current();
                std::thread::Builder::new()
                    .name(format!("shardcast-offload-{i}"))
                    .spawn(move || {
                        lower_priority();
                        span.in_scope(|| {
                            while let Ok(job) = rx.recv() {
                                job();
                            }
                        })
                    })
                    .map_err(|e| tracing::error!("cannot start an offload thread: {e}"))
                    .ok()
            })
            .collect::<Vec<_>>();
        Offload {
            tx: Some(tx),
            threads,
        }
    }

    /// Runs `job` on a pool thread; with no pool thread (none could start), on this
    /// one, so the request is still answered.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        if self.threads.is_empty() {
            job();
            return;
        }
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.send(Box::new(job)) {
                (e.0)();
            }
        }
    }
}

/// Nice value of the pool's threads where `SCHED_IDLE` is refused.
const NICE: i32 = 19;

/// Puts the calling thread in Linux's `SCHED_IDLE` class: a job takes whatever CPU the
/// shards leave, and a shard that wakes up takes its core back at once. Nice 19 alone was
/// not enough: under it a shard that woke while a job ran on its core waited for the
/// job's time slice, and a 10,000-event publish parsed off the shard still stretched the
/// shard's turn to 6–7 ms (1.7–2.9 ms with `SCHED_IDLE`; docs/PERFORMANCE.md, "No shard
/// stalls"). A job that holds a lock a shard needs (the sequencer, the replica) is not
/// stuck there: the shard blocks on it, which frees the core for the job. Best effort:
/// where `SCHED_IDLE` is refused, nice 19; where that is refused too, the process's
/// priority.
fn lower_priority() {
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter only; gettid and setpriority have
    // no memory-safety preconditions.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) == 0 {
            return;
        }
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, NICE) != 0 {
            tracing::debug!("offload thread: setpriority failed; it runs at normal priority");
        }
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        // Closing the queue ends each thread after the jobs already queued.
        self.tx.take();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // (A job that held the last handle to the owner ends on a pool thread: it
            // cannot wait for itself.)
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard that wakes must get its core back at once: jobs run in `SCHED_IDLE` (nice
    /// 19 only where that is refused).
    #[test]
    fn jobs_run_in_the_idle_scheduling_class() {
        let pool = Offload::start();
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.run(move || {
            // SAFETY: plain queries of the calling thread's scheduling.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
            let _ = tx.send((policy, nice));
        });
        let (policy, nice) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job ran");
        assert!(
            policy == libc::SCHED_IDLE || nice == NICE,
            "policy {policy}, nice {nice}"
        );
        // And the caller's own class is untouched.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn runs_jobs_off_the_caller_thread_and_all_of_them() {
        let pool = Offload::start();
        let (tx, rx) = crossbeam_channel::unbounded();
        let me = std::thread::current().id();
        for i in 0..50 {
            let tx = tx.clone();
            pool.run(move || {
                let _ = tx.send((i, std::thread::current().id() != me));
            });
        }
        drop(pool);
        let mut got: Vec<(i32, bool)> = rx.try_iter().collect();
        got.sort();
        assert_eq!(got.len(), 50);
        assert!(got.iter().all(|(_, off)| *off));
    }
}
