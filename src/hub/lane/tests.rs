//! The write lane's races: flushers, the session and enqueuers on several threads, a
//! socket that takes all, part or none of each write: publishers write to the socket
//! themselves, the session takes over when the socket is full, and nothing is lost,
//! repeated, reordered or interleaved.

use std::{
    io::{self, IoSlice},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
    task::{Context, Waker},
    thread,
};

use super::super::{tests::*, *};

/// A socket that takes all, part or none of each write, by a seeded generator, and fails
/// the test if two writers ever overlap.
#[derive(Debug)]
struct FlakySocket {
    received: Mutex<Vec<u8>>,
    writing: AtomicBool,
    seed: AtomicU64,
    /// `try_write_vectored` calls.
    writes: AtomicUsize,
    /// Out of 8 writes, how many are taken whole (the rest: part, or nothing).
    whole_in_8: u64,
}

impl FlakySocket {
    fn new(whole_in_8: u64) -> Arc<Self> {
        Arc::new(Self {
            received: Mutex::new(Vec::new()),
            writing: AtomicBool::new(false),
            seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            writes: AtomicUsize::new(0),
            whole_in_8,
        })
    }

    fn next(&self) -> u64 {
        // xorshift: a reproducible mix of outcomes across threads.
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x
    }

    /// What a session writes once it holds the lane: blocking, so all of it.
    fn write_all(&self, bytes: &[u8]) {
        assert!(
            !self.writing.swap(true, Ordering::SeqCst),
            "two writers at once"
        );
        self.received.lock().unwrap().extend_from_slice(bytes);
        self.writing.store(false, Ordering::SeqCst);
    }

    /// The text frames received, in order.
    fn frames(&self) -> Vec<String> {
        let received = self.received.lock().unwrap();
        let mut frames = Vec::new();
        let mut at = 0;
        while at < received.len() {
            assert_eq!(received[at], 0x81, "a text frame starts at byte {at}");
            let len = usize::from(received[at + 1]);
            frames.push(String::from_utf8(received[at + 2..at + 2 + len].to_vec()).unwrap());
            at += 2 + len;
        }
        frames
    }
}

impl Wire for FlakySocket {
    fn try_write_vectored(&self, buffers: &[IoSlice<'_>]) -> io::Result<usize> {
        assert!(
            !self.writing.swap(true, Ordering::SeqCst),
            "two writers at once"
        );
        self.writes.fetch_add(1, Ordering::SeqCst);
        let total: usize = buffers.iter().map(|buffer| buffer.len()).sum();
        let roll = self.next();
        let take = if roll % 8 < self.whole_in_8 {
            total
        } else {
            usize::try_from(roll >> 8).unwrap() % total
        };
        let mut received = self.received.lock().unwrap();
        let mut left = take;
        for buffer in buffers {
            let n = left.min(buffer.len());
            received.extend_from_slice(&buffer[..n]);
            left -= n;
        }
        drop(received);
        self.writing.store(false, Ordering::SeqCst);
        if take == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(take)
    }
}

/// Queues deep enough that no race test closes a slow consumer.
fn hub() -> HubHandle {
    Hub::new(HubSettings {
        queue_bytes: 1 << 24,
        history_max_bytes: 0,
        ..settings(0, 1 << 16)
    })
}

/// The session's part, as `session::writer` plays it: while it holds the lane, write what
/// a flusher left, then the queue, then give the lane back.
fn play_session(outbound: &Outbound, socket: &FlakySocket) {
    while outbound.session_lane().writes() {
        for rest in outbound.session_lane().take_handoff() {
            socket.write_all(&rest);
        }
        outbound.session_lane().take_while(|bytes| {
            socket.write_all(&bytes);
            true
        });
        if outbound.session_lane().release() {
            break;
        }
    }
}

/// A connection on `socket`, subscribed to "news", its `subscribed` reply written.
fn subscribed(
    socket: Arc<FlakySocket>,
) -> (HubHandle, Arc<FlakySocket>, Arc<Outbound>, ChannelName) {
    let hub = hub();
    let conn = hub.register(Some(Arc::clone(&socket) as Arc<dyn Wire>));
    let news = name("news");
    hub.subscribe(&conn, &news, None, None, reply).unwrap();
    play_session(&conn, &socket);
    (hub, socket, conn, news)
}

#[test]
fn a_publisher_writes_to_an_idle_connection_itself() {
    let (hub, socket, conn, news) = subscribed(FlakySocket::new(8));
    for n in 0..3 {
        hub.publish(&news, &format!("{n}")).unwrap();
    }
    let frames = socket.frames();
    assert_eq!(frames.len(), 4, "the reply and three messages: {frames:?}");
    assert_eq!(seqs(&frames[1..]), [1, 2, 3]);
    assert_eq!(conn.queued_messages(), 0);
    assert!(!conn.session_lane().writes(), "the session was not needed");
}

#[test]
fn a_connection_at_rest_keeps_a_queue_buffer_of_one_frame() {
    let (hub, _socket, conn, news) = subscribed(FlakySocket::new(8));
    hub.publish(&news, "1").unwrap();
    // 48 bytes, not the 192 of VecDeque's least growth (four frames).
    assert_eq!(conn.queue().capacity(), 1);
    assert!(std::mem::size_of::<Outgoing>() <= 48);
    // A backlog grows it as usual, and gives it up once written.
    let deep = deep_queue(&FlakySocket::new(8));
    assert_eq!(deep.queue().capacity(), 0);
}

#[test]
fn a_full_socket_hands_the_rest_to_the_session_and_wakes_it() {
    let (hub, socket, conn, news) = subscribed(FlakySocket::new(0));
    let (waker, woken) = counting_waker();
    conn.session_lane().register(&Context::from_waker(&waker));
    hub.publish(&news, "1").unwrap();
    assert!(
        conn.session_lane().writes(),
        "the socket took at most part of it"
    );
    assert_eq!(woken.load(Ordering::SeqCst), 1);
    hub.publish(&news, "2").unwrap();
    assert_eq!(
        woken.load(Ordering::SeqCst),
        1,
        "the session already has it"
    );
    play_session(&conn, &socket);
    let frames = socket.frames();
    assert_eq!(seqs(&frames[1..]), [1, 2]);
}

#[test]
fn the_session_waits_for_a_flusher_before_writing_its_own_frames() {
    let hub = hub();
    let socket = FlakySocket::new(8);
    let conn = hub.register(Some(Arc::clone(&socket) as Arc<dyn Wire>));
    let (waker, woken) = counting_waker();
    let cx = Context::from_waker(&waker);
    assert!(
        conn.enqueue(&FramedText::text("{}")).unwrap(),
        "an idle lane is claimed"
    );
    assert!(conn.session_lane().poll_claim(&cx).is_pending());
    conn.flush();
    assert_eq!(woken.load(Ordering::SeqCst), 1, "the flusher handed over");
    assert!(conn.session_lane().writes());
    assert!(conn.session_lane().poll_claim(&cx).is_ready());
    assert!(conn.session_lane().release());
    assert_eq!(socket.frames(), ["{}"]);
}

/// A socket that takes everything; during its first write, another frame is enqueued
/// (as a publisher on another thread would, finding the lane taken).
#[derive(Debug, Default)]
struct RacingSocket {
    conn: std::sync::OnceLock<std::sync::Weak<Outbound>>,
    writes: AtomicUsize,
    received: Mutex<Vec<u8>>,
}

impl Wire for RacingSocket {
    fn try_write_vectored(&self, buffers: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.writes.fetch_add(1, Ordering::SeqCst) == 0 {
            let conn = self.conn.get().unwrap().upgrade().unwrap();
            assert!(
                !conn.enqueue(&FramedText::text("late")).unwrap(),
                "the lane is taken"
            );
        }
        let mut received = self.received.lock().unwrap();
        for buffer in buffers {
            received.extend_from_slice(buffer);
        }
        Ok(buffers.iter().map(|buffer| buffer.len()).sum())
    }
}

#[test]
fn a_frame_enqueued_while_the_flusher_writes_is_flushed_too() {
    let hub = hub();
    let socket = Arc::new(RacingSocket::default());
    let conn = hub.register(Some(Arc::clone(&socket) as Arc<dyn Wire>));
    socket.conn.set(Arc::downgrade(&conn)).unwrap();
    assert!(conn.enqueue(&FramedText::text("first")).unwrap());
    conn.flush();
    assert_eq!(socket.writes.load(Ordering::SeqCst), 2);
    assert_eq!(
        conn.queued_messages(),
        0,
        "the late frame was left in the queue"
    );
    assert_eq!(
        &socket.received.lock().unwrap()[..],
        b"\x81\x05first\x81\x04late"
    );
}

#[test]
fn publishes_in_one_batch_reach_a_connection_in_one_write() {
    let (hub, socket, conn, news) = subscribed(FlakySocket::new(8));
    let mut writes = hub.write_batch();
    hub.publish_batched(&news, "1", &mut writes).unwrap();
    hub.publish_batched(&news, "2", &mut writes).unwrap();
    assert_eq!(
        conn.queued_messages(),
        2,
        "nothing is written before the batch is flushed"
    );
    drop(writes);
    assert_eq!(conn.queued_messages(), 0, "dropping the batch writes it");
    assert_eq!(
        socket.writes.load(Ordering::SeqCst),
        1,
        "both frames in one writev"
    );
    assert_eq!(seqs(&socket.frames()[1..]), [1, 2]);
}

#[test]
fn a_batch_flushed_later_is_written_after_the_current_poll() {
    let (hub, socket, conn, news) = subscribed(FlakySocket::new(8));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut writes = hub.write_batch();
        hub.publish_batched(&news, "1", &mut writes).unwrap();
        writes.flush_later();
        assert_eq!(conn.queued_messages(), 1, "not written within this poll");
        tokio::task::yield_now().await;
        assert_eq!(conn.queued_messages(), 0, "written once this task yielded");
    });
    assert_eq!(seqs(&socket.frames()[1..]), [1]);
}

/// 150 frames queued behind a claimed lane, then flushed into `socket`.
fn deep_queue(socket: &Arc<FlakySocket>) -> Arc<Outbound> {
    let conn = hub().register(Some(Arc::clone(socket) as Arc<dyn Wire>));
    for n in 0..150 {
        let claimed = conn.enqueue(&FramedText::text(&n.to_string())).unwrap();
        assert_eq!(claimed, n == 0, "only the first enqueue claims the lane");
    }
    conn.flush();
    conn
}

#[test]
fn a_deep_queue_is_written_in_batches_and_leaves_nothing_counted() {
    let socket = FlakySocket::new(8);
    let conn = deep_queue(&socket);
    assert_eq!(
        socket.writes.load(Ordering::SeqCst),
        3,
        "64 + 64 + 22 frames"
    );
    let expected: Vec<String> = (0..150).map(|n| n.to_string()).collect();
    assert_eq!(socket.frames(), expected);
    assert_eq!((conn.queued_messages(), conn.queued_bytes()), (0, 0));
    assert!(!conn.session_lane().writes());
}

#[test]
fn a_deep_queue_on_a_full_socket_goes_to_the_session_whole_and_in_order() {
    let socket = FlakySocket::new(0);
    let conn = deep_queue(&socket);
    assert_eq!(socket.writes.load(Ordering::SeqCst), 1);
    assert!(
        conn.session_lane().writes(),
        "the socket took at most part of it"
    );
    assert_eq!(
        (conn.queued_messages(), conn.queued_bytes()),
        (0, 0),
        "what the flusher took is the session's hand-off, not queued"
    );
    play_session(&conn, &socket);
    let expected: Vec<String> = (0..150).map(|n| n.to_string()).collect();
    assert_eq!(socket.frames(), expected);
}

/// Publishers on several threads, a socket that often takes part or nothing, and a
/// session taking over: every frame arrives once, each publisher's in order, never
/// interleaved, and none is left in the queue when the publishers stop. Many short
/// rounds, because a frame is most easily stranded at the end of a burst.
#[test]
fn concurrent_publishers_and_a_flaky_socket_lose_and_reorder_nothing() {
    const THREADS: usize = 3;
    const ROUNDS: usize = 1_000;
    const PER_ROUND: usize = 4;
    let hub = hub();
    let socket = FlakySocket::new(5);
    let conn = hub.register(Some(Arc::clone(&socket) as Arc<dyn Wire>));
    for round in 0..ROUNDS {
        let barrier = std::sync::Barrier::new(THREADS);
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            let publishers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (conn, barrier) = (&conn, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        for n in 0..PER_ROUND {
                            let n = round * PER_ROUND + n;
                            if conn
                                .enqueue(&FramedText::text(&format!("{thread}:{n}")))
                                .unwrap()
                            {
                                conn.flush();
                            }
                        }
                    })
                })
                .collect();
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    play_session(&conn, &socket);
                    thread::yield_now();
                }
            });
            let results: Vec<_> = publishers.into_iter().map(|p| p.join()).collect();
            stop.store(true, Ordering::SeqCst);
            for result in results {
                result.unwrap();
            }
        });
        // Only a lane handed to the session may hold frames now; an idle lane with frames
        // queued means nobody will ever write them.
        play_session(&conn, &socket);
        assert_eq!(
            conn.queued_messages(),
            0,
            "a frame stranded in round {round}"
        );
        assert!(!conn.session_lane().writes());
    }
    let frames = socket.frames();
    assert_eq!(frames.len(), THREADS * ROUNDS * PER_ROUND);
    let mut next = [0_usize; THREADS];
    for frame in frames {
        let (thread, n) = frame.split_once(':').unwrap();
        let thread: usize = thread.parse().unwrap();
        assert_eq!(
            n.parse::<usize>().unwrap(),
            next[thread],
            "publisher {thread}"
        );
        next[thread] += 1;
    }
}

fn counting_waker() -> (Waker, Arc<AtomicUsize>) {
    struct Count(Arc<AtomicUsize>);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    (Waker::from(Arc::new(Count(Arc::clone(&count)))), count)
}

/// The workers' queue (`workers`): what a drainer runs, in which order.
mod workers {
    use std::{sync::mpsc, time::Duration};

    use super::{
        super::{
            Urgent, Workers,
            workers::{FLUSH_CHUNK, WRITES_BEFORE_URGENT},
        },
        *,
    };

    /// A socket that takes every write and logs its connection's number.
    #[derive(Debug)]
    struct LoggingSocket {
        conn: usize,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Wire for LoggingSocket {
        fn try_write_vectored(&self, buffers: &[IoSlice<'_>]) -> io::Result<usize> {
            self.log
                .lock()
                .unwrap()
                .push(format!("write {}", self.conn));
            Ok(buffers.iter().map(|buffer| buffer.len()).sum())
        }
    }

    /// Urgent work that logs its name.
    #[derive(Debug)]
    struct LoggingWork {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Urgent for LoggingWork {
        fn run(self: Arc<Self>, _: &Workers) {
            self.log.lock().unwrap().push(self.name.to_owned());
        }
    }

    /// A runtime of one worker, its `Workers`, and a way to hold that worker busy.
    fn one_worker() -> (tokio::runtime::Runtime, Workers) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let workers = {
            let _inside = runtime.enter();
            Workers::current().expect("inside a runtime")
        };
        (runtime, workers)
    }

    /// Blocks the runtime's only worker until the returned sender is dropped.
    fn hold(runtime: &tokio::runtime::Runtime) -> mpsc::Sender<()> {
        let (release, released) = mpsc::channel::<()>();
        let (held, is_held) = mpsc::channel();
        runtime.spawn(async move {
            held.send(()).unwrap();
            let _ = released.recv();
        });
        is_held.recv().unwrap();
        release
    }

    /// `n` connections logging into `log`, each with a frame queued and its lane claimed.
    fn claimed(n: usize, log: &Arc<Mutex<Vec<String>>>) -> Vec<Arc<Outbound>> {
        let hub = hub();
        (0..n)
            .map(|conn| {
                let socket = LoggingSocket {
                    conn,
                    log: Arc::clone(log),
                };
                let outbound = hub.register(Some(Arc::new(socket) as Arc<dyn Wire>));
                assert!(outbound.enqueue(&FramedText::text("1")).unwrap());
                outbound
            })
            .collect()
    }

    /// The log once it holds `entries` (or after 30 s), polled from the test's own thread.
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's own thread sleeps, beside the runtime, never on its worker"
    )]
    fn wait_for(log: &Mutex<Vec<String>>, entries: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let log = log.lock().unwrap().clone();
            if log.len() >= entries || std::time::Instant::now() > deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn writes_run_in_the_order_queued_and_urgent_work_after_a_few_of_them() {
        let (runtime, workers) = one_worker();
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = 6 * FLUSH_CHUNK;
        let release = hold(&runtime);
        flush_all(claimed(connections, &log), Some(&workers));
        workers.push_urgent(Arc::new(LoggingWork {
            name: "round",
            log: Arc::clone(&log),
        }));
        drop(release);
        let log = wait_for(&log, connections + 1);
        assert_eq!(log.len(), connections + 1, "every job ran: {log:?}");
        let round = log.iter().position(|entry| entry == "round").unwrap();
        assert_eq!(
            round,
            WRITES_BEFORE_URGENT * FLUSH_CHUNK,
            "the round waits for {WRITES_BEFORE_URGENT} write jobs, no more"
        );
        let written: Vec<usize> = log
            .iter()
            .filter_map(|entry| entry.strip_prefix("write ")?.parse().ok())
            .collect();
        assert_eq!(
            written,
            (0..connections).collect::<Vec<_>>(),
            "every connection once, in the order queued"
        );
    }

    #[test]
    fn urgent_work_with_no_write_waiting_runs_at_once() {
        let (_runtime, workers) = one_worker();
        let log = Arc::new(Mutex::new(Vec::new()));
        workers.push_urgent(Arc::new(LoggingWork {
            name: "round",
            log: Arc::clone(&log),
        }));
        assert_eq!(wait_for(&log, 1), ["round"]);
    }
}
