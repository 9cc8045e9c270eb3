//! The sessions' runtime as the fan-out uses it: one queue of work for its workers, in
//! order, with the fan-out rounds ahead of the writes.
//!
//! A large fan-out's writes are split into chunks of [`FLUSH_CHUNK`] connections, and a
//! channel's round (which enqueues a new message to every subscriber) is [`Urgent`] work.
//! Both go into the runtime's [`Workers`] queue, which at most one *drainer* task per worker
//! thread takes from, one job per turn of the task (it yields between jobs, so sessions run
//! too): chunks in the order they were queued, and urgent work ahead of them, at once when
//! no write waits, else after a few write jobs (see [`WRITES_BEFORE_URGENT`]).
//!
//! Why not one tokio task per chunk, as before: under load the workers' queues held a whole
//! pass of writes, so a round task queued behind them enqueued its messages 50-100 ms after
//! their publish; and running rounds from the flush tasks instead showed the other flaw:
//! tokio runs the task spawned last first (its LIFO slot), so with a round every few
//! milliseconds the last chunk of every round jumped the queue, and of 10,000 subscribers the
//! last 500 were written 122-759 times in 10 s, the first 8,000 49-80 times. Here a round
//! waits for a few jobs at most, and every connection's writes wait their turn in one FIFO
//! (each of the 10,000 written 62-69 times in the same 10 s).
//!
//! The queue is shared by the workers and touched once per chunk (256 connections) or
//! round, never per delivery.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::runtime::Handle;

use super::Outbound;

/// Connections one job writes to at most: a large fan-out is split into jobs of this many,
/// which the runtime's workers share.
pub(super) const FLUSH_CHUNK: usize = 256;

/// Claimed connections up to this many are flushed on the publisher's own thread: queueing
/// a job, and waking an idle worker to take it, cost more than these writes would move.
/// (Spawning every flush cut a 1,000-channel run, 20,000 publishes/s to 5 subscribers each,
/// from 100,000 to 64,000-86,000 deliveries/s, with the workers ping-ponging on wakeups.)
pub(in crate::hub) const FLUSH_INLINE: usize = 64;

/// Write jobs a drainer runs before it takes urgent work that waits. Under load, a round
/// then waits for a few jobs (a few milliseconds) and carries the messages published
/// meanwhile, so each subscriber it visits gets more than one; with no write queued it runs
/// at once. 10,000 subscribers, eight publishers at 150/s, two runs each: taking urgent work
/// before every job, p99 217-262 ms and 0.69-0.71 us of CPU per delivery (a round per
/// message: 10,000 visits each); after every second job 160-195 ms, 0.66-0.67 us; after
/// every fourth 174-179 ms, 0.65 us; after every eighth 227 ms (the rounds' wait shows).
pub(super) const WRITES_BEFORE_URGENT: usize = 3;

/// Work that must not wait behind the writes already queued: a fan-out round, which
/// enqueues a new message to every subscriber (the hub's channels implement it).
pub(in crate::hub) trait Urgent: Send + Sync + std::fmt::Debug {
    /// Runs it on a worker; its writes go through `workers`.
    fn run(self: Arc<Self>, workers: &Workers);
}

/// The runtime the sessions run on, and its queue of fan-out work (see the module doc).
#[derive(Debug, Clone)]
pub(in crate::hub) struct Workers {
    runtime: Handle,
    queue: Arc<Queue>,
}

#[derive(Debug)]
struct Queue {
    jobs: Mutex<Jobs>,
    /// Drainers at most: the runtime's worker threads.
    max_drainers: usize,
}

#[derive(Debug, Default)]
struct Jobs {
    urgent: VecDeque<Arc<dyn Urgent>>,
    writes: VecDeque<Vec<Arc<Outbound>>>,
    /// Drainer tasks running (or spawned and not yet running).
    drainers: usize,
}

enum Job {
    Urgent(Arc<dyn Urgent>),
    Write(Vec<Arc<Outbound>>),
}

impl Workers {
    /// The current runtime's, if there is one.
    pub(in crate::hub) fn current() -> Option<Self> {
        let runtime = Handle::try_current().ok()?;
        let max_drainers = runtime.metrics().num_workers().max(1);
        Some(Self {
            runtime,
            queue: Arc::new(Queue {
                jobs: Mutex::new(Jobs::default()),
                max_drainers,
            }),
        })
    }

    /// Queues `work` ahead of every write (its submitter makes sure it is not queued twice).
    pub(in crate::hub) fn push_urgent(&self, work: Arc<dyn Urgent>) {
        self.push(|jobs| jobs.urgent.push_back(work));
    }

    /// Whether write jobs wait in the queue: the fan-out is behind its sockets.
    pub(in crate::hub) fn writes_pending(&self) -> bool {
        !self.jobs().writes.is_empty()
    }

    /// Queues `connections` (claimed lanes) to be flushed, in chunks of [`FLUSH_CHUNK`].
    fn push_writes(&self, mut connections: Vec<Arc<Outbound>>) {
        self.push(|jobs| {
            while connections.len() > FLUSH_CHUNK {
                let rest = connections.split_off(FLUSH_CHUNK);
                jobs.writes
                    .push_back(std::mem::replace(&mut connections, rest));
            }
            jobs.writes.push_back(connections);
        });
    }

    /// Adds jobs, and a drainer if fewer run than there are workers.
    fn push(&self, add: impl FnOnce(&mut Jobs)) {
        let spawn = {
            let mut jobs = self.jobs();
            add(&mut jobs);
            let spawn = jobs.drainers < self.queue.max_drainers;
            if spawn {
                jobs.drainers += 1;
            }
            spawn
        };
        if spawn {
            let workers = self.clone();
            // Not through the app's task tracker: a drainer ends once the queue is empty,
            // and a shutdown loses nothing by dropping one (its connections are closing).
            self.runtime.spawn(async move { workers.drain().await });
        }
    }

    /// Runs jobs, one per turn, until none is left: urgent work when no write waits, or
    /// after [`WRITES_BEFORE_URGENT`] write jobs; else the oldest write job.
    async fn drain(self) {
        let mut writes_since_urgent = 0;
        loop {
            let job = self.next_job(&mut writes_since_urgent);
            match job {
                Some(Job::Urgent(work)) => work.run(&self),
                Some(Job::Write(chunk)) => {
                    for outbound in &chunk {
                        outbound.flush();
                    }
                }
                None => return,
            }
            tokio::task::yield_now().await;
        }
    }

    /// The next job for a drainer that ran `writes_since_urgent` write jobs since its last
    /// urgent one; `None` (and one drainer fewer) when the queue is empty.
    fn next_job(&self, writes_since_urgent: &mut usize) -> Option<Job> {
        let mut jobs = self.jobs();
        if (jobs.writes.is_empty() || *writes_since_urgent >= WRITES_BEFORE_URGENT)
            && let Some(work) = jobs.urgent.pop_front()
        {
            *writes_since_urgent = 0;
            return Some(Job::Urgent(work));
        }
        if let Some(chunk) = jobs.writes.pop_front() {
            *writes_since_urgent += 1;
            return Some(Job::Write(chunk));
        }
        jobs.drainers -= 1;
        None
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.queue
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Flushes connections whose lane a fan-out claimed: up to [`FLUSH_INLINE`] on this thread,
/// more as jobs for `workers` (the runtime the sessions run on), so that every core writes
/// and the publisher is held neither for a large fan-out's syscalls nor behind them.
/// Without `workers` (a hub built outside a runtime), everything is written on this thread.
pub(in crate::hub) fn flush_all(to_flush: Vec<Arc<Outbound>>, workers: Option<&Workers>) {
    match workers {
        Some(workers) if to_flush.len() > FLUSH_INLINE => workers.push_writes(to_flush),
        _ => {
            for outbound in &to_flush {
                outbound.flush();
            }
        }
    }
}
