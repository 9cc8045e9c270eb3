use std::time::Duration;

use super::*;

fn v4(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([10, 0, 0, last]))
}

#[test]
fn pending_upgrades_are_capped_per_source() {
    let pending = PendingUpgrades::new(100, 2);
    let first = pending.try_acquire(v4(1)).unwrap();
    let second = pending.try_acquire(v4(1)).unwrap();
    assert_eq!(
        pending.try_acquire(v4(1)).unwrap_err(),
        "max_pending_upgrades_per_ip"
    );
    let _other = pending.try_acquire(v4(2)).unwrap();
    drop(first);
    assert_eq!(pending.count(), 2);
    let again = pending.try_acquire(v4(1)).unwrap();
    drop((again, second));
    assert!(
        pending.per_source.get(&v4(1).unwrap()).is_none(),
        "a source's entry goes with its last slot"
    );
}

/// Ten sources fill the node's cap; a newcomer from an eleventh gets a slot, and the slot
/// told to go is the oldest of a most represented source.
#[tokio::test]
async fn a_full_node_evicts_the_oldest_of_the_most_represented_source() {
    let pending = PendingUpgrades::new(641, 1024);
    let mut held = Vec::new();
    for source in 1..=10 {
        // Source 1 holds one more than the others.
        let extra = usize::from(source == 1);
        for _ in 0..64 + extra {
            if let Ok(slot) = pending.try_acquire(v4(source)) {
                held.push((source, slot));
            }
        }
    }
    assert_eq!(held.len(), 641, "the cap is full");
    let newcomer = pending.try_acquire(v4(99)).expect("a newcomer gets a slot");
    let evicted: Vec<u8> = held
        .iter()
        .filter(|(_, slot)| slot.eviction.evicted.load(Ordering::Relaxed))
        .map(|(source, _)| *source)
        .collect();
    // A batch of 10 (a 64th of the cap): the heaviest first (source 1), then one of each
    // source tied with it.
    assert_eq!(evicted.len(), 10, "{evicted:?}");
    for source in 1..=10 {
        assert_eq!(
            evicted.iter().filter(|&&s| s == source).count(),
            1,
            "{evicted:?}"
        );
    }
    let oldest = held.iter().find(|(source, _)| *source == 1).unwrap();
    tokio::time::timeout(Duration::from_secs(1), oldest.1.evicted())
        .await
        .expect("the oldest of source 1 is told to go");
    assert!(!newcomer.eviction.evicted.load(Ordering::Relaxed));
    // Evicted slots no longer count: the next newcomers need no new pass until they are
    // used up, and releasing them leaves the counts exact.
    for _ in 0..9 {
        held.push((98, pending.try_acquire(v4(98)).unwrap()));
    }
    drop(held);
    drop(newcomer);
    assert_eq!(pending.count(), 0);
    assert_eq!(pending.evicting.load(Ordering::Relaxed), 0);
    assert!(pending.per_source.is_empty());
}

/// A lone newcomer never evicts itself, even when every source is tied at one slot.
#[test]
fn the_newcomer_is_never_its_own_victim() {
    let pending = PendingUpgrades::new(1, 1);
    let first = pending.try_acquire(v4(1)).unwrap();
    let second = pending.try_acquire(v4(2)).unwrap();
    assert!(first.eviction.evicted.load(Ordering::Relaxed));
    assert!(!second.eviction.evicted.load(Ordering::Relaxed));
    // Slots without a source (test pipes) cannot be evicted: over the cap they are refused.
    let pending = PendingUpgrades::new(1, 1);
    let _a = pending.try_acquire(None).unwrap();
    assert_eq!(
        pending.try_acquire(None).unwrap_err(),
        "max_pending_upgrades"
    );
    assert_eq!(pending.count(), 1);
}

#[test]
fn ipv6_sources_are_cut_to_their_prefix() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(source_of(a, 64), source_of(b, 64));
    assert_ne!(source_of(a, 64), source_of(c, 64));
    assert_eq!(
        source_of(a, 64),
        "2001:db8:1:2::".parse::<IpAddr>().unwrap()
    );
    assert_ne!(source_of(a, 128), source_of(b, 128));
    assert_eq!(source_of(a, 0), IpAddr::from(Ipv6Addr::UNSPECIFIED));
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(source_of(mapped, 64), IpAddr::from([192, 0, 2, 7]));
}
