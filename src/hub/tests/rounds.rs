//! Fan-out rounds (`fanout`): a large channel's deliveries run on the workers (their job
//! queue, `lane::workers`), after the publish returned.

#![allow(
    clippy::disallowed_methods,
    reason = "the test's own threads sleep, beside the runtime, never on its workers"
)]

use super::*;

/// More subscribers than a round runs inline for, so rounds go to the workers.
const STABLE: usize = 100;
const MESSAGES: u64 = 3000;

/// A runtime with two workers, which the hub built inside it takes for its rounds.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// [`STABLE`] connections subscribed to `channel`, their replies read.
fn subscribed(hub: &Hub, channel: &ChannelName) -> Vec<(Arc<Outbound>, Reader)> {
    (0..STABLE)
        .map(|_| {
            let (conn, rx) = registered(hub);
            hub.subscribe(&conn, channel, None, None, reply).unwrap();
            rx.try_recv().unwrap();
            (conn, rx)
        })
        .collect()
}

/// Reads `readers` into `got` until each holds `n` seqs (or 5 s passed: the caller's
/// assertion then says what is missing).
fn read_until(readers: &[(Arc<Outbound>, Reader)], got: &mut [Vec<u64>], n: usize) {
    for _ in 0..500 {
        for ((_, rx), seen) in readers.iter().zip(got.iter_mut()) {
            seen.extend(seqs(&drain(rx)));
        }
        if got.iter().all(|seen| seen.len() >= n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes on one thread while another keeps joining with `since` (reply, replay, live)
/// and leaving, each joiner staying until at least one publish happened, on a runtime whose
/// two workers run the rounds: every stable subscriber gets 1..=MESSAGES once, in order, and
/// every joiner a gapless run after its `since`, without duplicates, until it leaves. Real
/// threads, so the orders vary run to run; the test below goes through them one by one.
#[test]
fn rounds_keep_order_and_joins_see_no_gap_or_duplicate() {
    let runtime = two_workers();
    let hub = runtime.block_on(async { hub_with(MESSAGES as usize, 2 * MESSAGES as usize) });
    assert!(hub.workers.is_some(), "the hub took the runtime's handle");
    let news = name("news");
    let stable = subscribed(&hub, &news);
    // Joins done so far: the publisher waits for one per hundred messages, so joins
    // interleave with rounds however the two threads are scheduled (a loaded machine
    // once let the publisher finish after 10 joins).
    let joined = Arc::new(AtomicUsize::new(0));
    // Messages published so far: each joiner stays subscribed until one more is.
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = std::thread::spawn({
        let (hub, news, joined, published) = (
            Arc::clone(&hub),
            news.clone(),
            Arc::clone(&joined),
            Arc::clone(&published),
        );
        move || {
            for n in 1..=MESSAGES {
                assert_eq!(hub.publish(&news, &n.to_string()).unwrap().seq, n);
                published.store(usize::try_from(n).unwrap(), Ordering::SeqCst);
                let wanted = usize::try_from(n / 100).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while joined.load(Ordering::SeqCst) < wanted && std::time::Instant::now() < deadline
                {
                    std::thread::yield_now();
                }
            }
        }
    });
    let mut joins = 0;
    while !publisher.is_finished() || joins == 0 {
        let (conn, rx) = registered(&hub);
        let position = hub.history(&news, None, 0).offset;
        let since = Offset {
            epoch: position.epoch,
            seq: position.seq.saturating_sub(joins % 50),
        };
        hub.subscribe(&conn, &news, Some(since), None, reply)
            .unwrap();
        // Subscribed while at least one publish (and its round) happens.
        let at_join = published.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while published.load(Ordering::SeqCst) == at_join
            && !publisher.is_finished()
            && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        hub.unsubscribe(conn.conn_id(), &news);
        let frames = drain(&rx);
        assert!(frames[0].starts_with("subscribed"), "{frames:?}");
        let seen = seqs(&frames[1..]);
        let expected: Vec<u64> = (since.seq + 1..since.seq + 1 + seen.len() as u64).collect();
        assert_eq!(seen, expected, "joiner {joins} from {since}");
        joins += 1;
        joined.store(joins as usize, Ordering::SeqCst);
    }
    publisher.join().unwrap();
    let mut got = vec![Vec::new(); stable.len()];
    read_until(&stable, &mut got, MESSAGES as usize);
    for seen in &got {
        assert_eq!(seen, &(1..=MESSAGES).collect::<Vec<_>>());
    }
    assert!(
        joins >= MESSAGES / 100,
        "joins raced the publisher ({joins})"
    );
}

/// Every order of a join among rounds, one after another on a runtime the test drives: a
/// joiner subscribes with `since` 0-5 behind the head while 0-3 rounds wait to run, 0-2 more
/// are published after it joined, and it leaves before or after they run. Each joiner gets
/// a gapless run after its `since` (all of it when it stayed), never a duplicate; the stable
/// subscribers get everything once, in order. Deterministic: the interleavings the threaded
/// test above finds by chance, here each one by construction.
#[test]
fn a_join_anywhere_among_waiting_rounds_sees_no_gap_or_duplicate() {
    // A runtime that runs the hub's rounds only when the test drives it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let hub = runtime.block_on(async { hub_with(64, 64) });
    let news = name("news");
    let stable = subscribed(&hub, &news);
    let mut stable_got = vec![Vec::new(); stable.len()];
    let mut published = 0_u64;
    let mut publish = |count: u64| {
        for _ in 0..count {
            published += 1;
            assert_eq!(
                hub.publish(&news, &published.to_string()).unwrap().seq,
                published
            );
        }
        published
    };
    // Runs the waiting rounds: until every stable subscriber has all `upto`.
    let run_rounds = |got: &mut Vec<Vec<u64>>, upto: u64| {
        for _ in 0..1000 {
            runtime.block_on(tokio::task::yield_now());
            for ((_, rx), seen) in stable.iter().zip(got.iter_mut()) {
                seen.extend(seqs(&drain(rx)));
            }
            if got
                .iter()
                .all(|seen| seen.last().copied().unwrap_or(0) >= upto)
            {
                return;
            }
        }
        panic!("the rounds up to {upto} did not run");
    };
    publish(5);
    run_rounds(&mut stable_got, 5);
    let mut cases = 0;
    for waiting in 0..=3 {
        for back in 0..=5 {
            for after in 0..=2 {
                for leaves_first in [false, true] {
                    let head = publish(waiting);
                    // The rounds do wait: the stable subscribers have none of them yet.
                    stable_got[0].extend(seqs(&drain(&stable[0].1)));
                    assert_eq!(stable_got[0].last(), Some(&(head - waiting)));
                    let (joiner, rx) = registered(&hub);
                    let position = hub.history(&news, None, 0).offset;
                    assert_eq!(position.seq, head);
                    let since = Offset {
                        epoch: position.epoch,
                        seq: head - back,
                    };
                    hub.subscribe(&joiner, &news, Some(since), None, reply)
                        .unwrap();
                    let last = publish(after);
                    if leaves_first {
                        hub.unsubscribe(joiner.conn_id(), &news);
                    }
                    run_rounds(&mut stable_got, last);
                    if !leaves_first {
                        hub.unsubscribe(joiner.conn_id(), &news);
                    }
                    let frames = drain(&rx);
                    let case = format!(
                        "{waiting} waiting, since {back} back, {after} after, leaves first: {leaves_first}"
                    );
                    assert!(frames[0].starts_with("subscribed"), "{case}: {frames:?}");
                    let seen = seqs(&frames[1..]);
                    let gapless: Vec<u64> = (since.seq + 1..).take(seen.len()).collect();
                    assert_eq!(seen, gapless, "{case}");
                    let least = if leaves_first { head } else { last };
                    assert!(
                        since.seq + seen.len() as u64 >= least,
                        "{case}: {seen:?} stops before {least}"
                    );
                    assert!(since.seq + seen.len() as u64 <= last, "{case}: {seen:?}");
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 4 * 6 * 3 * 2);
    for seen in &stable_got {
        assert_eq!(seen, &(1..=published).collect::<Vec<u64>>());
    }
}

/// A channel whose rounds cannot run refuses publishes once its outbox holds a whole
/// subscriber queue (nothing ordered, no offset taken), other channels go on, and once
/// the round ran the channel takes publishes again, every one delivered once, in order.
#[test]
fn a_full_outbox_refuses_publishes_until_its_round_ran() {
    // A runtime nobody drives: spawned rounds wait until the test runs it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let hub = runtime.block_on(async { hub_with(0, 8) });
    let (hot, other) = (name("hot"), name("other"));
    let readers = subscribed(&hub, &hot);
    let (bystander, bystander_rx) = registered(&hub);
    hub.subscribe(&bystander, &other, None, None, reply)
        .unwrap();
    bystander_rx.try_recv().unwrap();
    for n in 1..=8 {
        assert_eq!(hub.publish(&hot, &n.to_string()).unwrap().seq, n);
    }
    assert_eq!(hub.publish(&hot, "9"), Err(FanoutBehind));
    assert_eq!(hub.history(&hot, None, 0).offset.seq, 8, "no offset taken");
    // Another channel (inline round) is not held up.
    hub.publish(&other, "1").unwrap();
    assert_eq!(seqs(&drain(&bystander_rx)), vec![1]);

    runtime.block_on(tokio::task::yield_now());
    for (_, rx) in &readers {
        assert_eq!(seqs(&drain(rx)), (1..=8).collect::<Vec<u64>>());
    }
    assert_eq!(hub.publish(&hot, "9").unwrap().seq, 9);
    runtime.block_on(tokio::task::yield_now());
    for (conn, rx) in &readers {
        assert_eq!(seqs(&drain(rx)), vec![9]);
        assert!(!conn.is_closing());
    }
}

/// A subscriber that unsubscribed gets nothing published afterwards, and one whose queue
/// overflowed is dropped by the round, the others unaffected.
#[test]
fn a_round_drops_slow_consumers_and_nothing_follows_an_unsubscribe() {
    let runtime = two_workers();
    let hub = runtime.block_on(async { hub_with(0, 8) });
    let news = name("news");
    let subscribers = subscribed(&hub, &news);
    let (leaver, leaver_rx) = &subscribers[0];
    hub.unsubscribe(leaver.conn_id(), &news);
    let (slow, _) = &subscribers[1];
    for n in 1..=6 {
        hub.publish(&news, &n.to_string()).unwrap();
    }
    // Readers keep up; the slow one never reads and its queue holds 8.
    let readers = &subscribers[2..];
    let mut got = vec![Vec::new(); readers.len()];
    read_until(readers, &mut got, 6);
    for n in 7..=12 {
        hub.publish(&news, &n.to_string()).unwrap();
    }
    read_until(readers, &mut got, 12);
    for seen in &got {
        assert_eq!(seen, &(1..=12).collect::<Vec<u64>>());
    }
    assert!(drain(leaver_rx).is_empty(), "nothing after the unsubscribe");
    assert_eq!(slow.close_code(), Some(protocol::CloseCode::SlowConsumer));
}
