//! The queue between reader and uploader (the "offline queue"), and the claims that keep one
//! event version from being queued twice.
//!
//! It holds at most `offline_queue_size` events. When the upstream is slow or away it fills,
//! the reader waits, and aw-server keeps the data — nothing is ever dropped, and memory does
//! not grow with the backlog.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Semaphore};

use serde_json::value::RawValue;

use crate::state::{Acked, EventHash, Mark, Quarantined};
use crate::upstream::batch::OutEvent;

/// The claim hash of a deletion: no event version hashes to it (it is not a BLAKE3 output
/// anyone can aim at), so a deletion and a version of the same event never share a claim.
pub(crate) const DELETION: EventHash = [0xFF; 16];

/// What goes upstream for one event.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// A new or changed version.
    Event(Outgoing),
    /// The event is gone from aw-server.
    Deletion { bucket_id: Arc<str> },
}

/// What the upload of an event version says beyond what its [`Acked`] holds (the event id, the
/// hash and the start are there). The wire's strings (the hash in hex, the start in RFC 3339,
/// the bucket id) are never made: the batch writer puts them straight into the request body
/// (`upstream::batch`). A catch-up keeps thousands of versions queued, and those three strings
/// per version were three allocations and half of each version's memory (issue 9: peak RSS),
/// and then, made when the batch was built, a sixth of the sync's CPU (issue 9: wall time).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Shared by every version read from one page.
    pub bucket_id: Arc<str>,
    /// Seconds, as aw-server served it.
    pub duration: f64,
    pub data: Box<RawValue>,
}

/// An event read and found new, changed or deleted, on its way to the upstream.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// What the state records once the upstream acknowledged it (for a deletion: the bucket
    /// row and event id, with the [`DELETION`] hash).
    pub acked: Acked,
    pub body: Body,
    /// Another version of this event (or its deletion) was queued before this one and may
    /// still be on the wire: the two must never travel at the same time, or they could land
    /// upstream in either order (see [`Claim::Replacing`]).
    pub follows_queued: bool,
}

// What a queued version costs before its data: the three wire strings it held before cost
// 72 bytes here and about 130 on the heap (issue 9).
const _: () = assert!(std::mem::size_of::<Pending>() <= 104);

impl Pending {
    pub fn bucket_id(&self) -> &str {
        match &self.body {
            Body::Event(e) => &e.bucket_id,
            Body::Deletion { bucket_id } => bucket_id,
        }
    }

    /// The upload of a version, as the batch holds it.
    pub fn out_event(acked: &Acked, e: Outgoing) -> OutEvent {
        OutEvent {
            bucket_id: e.bucket_id,
            event_id: acked.event_id,
            hash: acked.hash,
            start_ns: acked.span.start_ns,
            duration: e.duration,
            data: e.data,
        }
    }
}

impl Outgoing {
    /// Back from the upload (a batch split, or partly refused).
    pub fn from_out_event(e: OutEvent) -> Outgoing {
        Outgoing {
            bucket_id: e.bucket_id,
            duration: e.duration,
            data: e.data,
        }
    }
}

/// What flows from the reader to the uploader, in read order.
#[derive(Debug)]
pub(crate) enum Item {
    /// New, changed or deleted events of one page, in read order.
    Events(Vec<Pending>),
    /// Events that cannot be sent (unreadable data): recorded in the quarantine, in order.
    Quarantine(Vec<Quarantined>),
    /// A position move, committed with (never before) everything queued before it.
    Mark(Mark),
    /// Answered once everything queued before it is delivered and recorded; dropped unanswered
    /// when the uploader stopped.
    Barrier(oneshot::Sender<()>),
}

/// The queue, bounded in events.
///
/// Events travel a page at a time, not one by one: with one message per event, a full queue
/// woke the reader for every event the uploader took, and those thread hand-offs cost more than
/// reading the event. The bound stays exact in events through a semaphore whose permits the
/// reader takes before sending and the uploader gives back when it takes the events.
pub(crate) fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(capacity));
    // Pages and marks; the semaphore is the real bound.
    let (tx, rx) = mpsc::channel(64);
    (
        QueueTx {
            tx,
            room: Arc::clone(&room),
            capacity,
        },
        QueueRx { rx, room },
    )
}

/// `events` cut into pieces of `capacity` (the last one shorter), in order. Cut from the back,
/// so the first piece is `events` itself and each event is copied at most once: cutting from
/// the front copied the whole remainder at every cut (a catch-up page of 5,000 events into a
/// queue of 1,500: 6,500 events copied instead of 3,500).
fn pieces(mut events: Vec<Pending>, capacity: usize) -> impl Iterator<Item = Vec<Pending>> {
    let capacity = capacity.max(1);
    let mut tail = Vec::new();
    while events.len() > capacity {
        let last = match events.len() % capacity {
            0 => capacity,
            r => r,
        };
        tail.push(events.split_off(events.len() - last));
    }
    std::iter::once(events)
        .chain(tail.into_iter().rev())
        .filter(|p| !p.is_empty())
}

/// The uploader stopped (its own error says why).
#[derive(Debug)]
pub(crate) struct QueueClosed;

pub(crate) struct QueueTx {
    tx: mpsc::Sender<Item>,
    room: Arc<Semaphore>,
    capacity: usize,
}

impl QueueTx {
    /// Waits for room, then queues `events` (in pieces of at most the queue's capacity).
    pub async fn send_events(&self, events: Vec<Pending>) -> Result<(), QueueClosed> {
        for piece in pieces(events, self.capacity) {
            let n = u32::try_from(piece.len()).map_err(|_| QueueClosed)?;
            self.room
                .acquire_many(n)
                .await
                .map_err(|_| QueueClosed)?
                .forget();
            self.tx
                .send(Item::Events(piece))
                .await
                .map_err(|_| QueueClosed)?;
        }
        Ok(())
    }

    pub async fn send(&self, item: Item) -> Result<(), QueueClosed> {
        self.tx.send(item).await.map_err(|_| QueueClosed)
    }

    pub async fn mark(&self, m: Mark) -> Result<(), QueueClosed> {
        self.send(Item::Mark(m)).await
    }

    /// Waits until everything queued so far is delivered and recorded.
    pub async fn barrier(&self) -> Result<(), QueueClosed> {
        let (done, wait) = oneshot::channel();
        self.send(Item::Barrier(done)).await?;
        wait.await.map_err(|_| QueueClosed)
    }
}

pub(crate) struct QueueRx {
    rx: mpsc::Receiver<Item>,
    room: Arc<Semaphore>,
}

impl QueueRx {
    /// The next item; taking events makes room for as many.
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await;
        if let Some(Item::Events(events)) = &item {
            self.room.add_permits(events.len());
        }
        item
    }
}

impl Drop for QueueRx {
    /// A reader waiting for room learns that the uploader is gone instead of waiting forever.
    fn drop(&mut self) {
        self.room.close();
    }
}

/// Events queued but not yet acknowledged, so a copy read twice in one cycle (at a page edge,
/// or by two passes over the same range) is not queued twice. Bounded by the queue size. One
/// table for every bucket: a table per bucket kept the capacity each bucket's catch-up had
/// grown it to after its last event was recorded (a hash table does not shrink) — four
/// buckets held a megabyte and a quarter at the 1M-event catch-up's peak (heaptrack). The hot
/// path (a claim per event read, a release per event recorded) allocates nothing.
#[derive(Default)]
pub(crate) struct InFlight {
    map: Mutex<IdMap>,
}

/// (Bucket row, event id) → the version queued. Hashed with [`IdHasher`]: SipHash was 4 % of a
/// catch-up's CPU for keys that are local integers.
type IdMap = HashMap<(i64, i64), EventHash, BuildHasherDefault<IdHasher>>;

/// A multiplicative hash for integer ids (Fibonacci hashing). The ids come from the local
/// aw-server, not from anyone who could choose them to collide, so no keyed hash is needed.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for integer keys; FNV-1a keeps it a correct hasher for anything else.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_i64(&mut self, i: i64) {
        // Each integer of a key folded into what came before it (a tuple writes each field).
        self.0 = (self.0.rotate_left(29) ^ i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What [`InFlight::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No version of the event was queued: this one now is.
    New,
    /// Another version of the event (or its deletion) is queued and not yet recorded: this one
    /// is queued too, and must not be sent while the other may still be on the wire.
    Replacing,
    /// This very version is already queued.
    Held,
}

impl Claim {
    /// Whether the version is now the caller's to queue.
    pub fn is_taken(self) -> bool {
        self != Claim::Held
    }
}

impl InFlight {
    /// Claims this version of the event for the caller to queue, unless it already is queued.
    pub fn claim(&self, row: i64, event_id: i64, hash: EventHash) -> Claim {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.insert((row, event_id), hash) {
            Some(old) if old == hash => Claim::Held,
            Some(_) => Claim::Replacing,
            None => Claim::New,
        }
    }

    /// [`InFlight::claim`] for each version of `pending`, in order, under one lock: those
    /// already queued are dropped from it, and those that replace a queued version are marked
    /// [`Pending::follows_queued`].
    pub fn claim_all(&self, pending: &mut Vec<Pending>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain_mut(|p| {
            let a = &p.acked;
            match map.insert((a.row, a.event_id), a.hash) {
                Some(old) if old == a.hash => false,
                Some(_) => {
                    p.follows_queued = true;
                    true
                }
                None => true,
            }
        });
    }

    pub fn release(&self, row: i64, event_id: i64, hash: EventHash) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Self::release_locked(&mut map, row, event_id, hash);
    }

    /// Releases a recorded batch under one lock.
    pub fn release_all<'a>(&self, acked: impl Iterator<Item = &'a Acked>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for a in acked {
            Self::release_locked(&mut map, a.row, a.event_id, a.hash);
        }
    }

    /// One lookup per event: a `get` and then a `remove` looked the key up twice, in a table
    /// larger than the cache during a catch-up (1 % of its CPU, perf).
    fn release_locked(map: &mut IdMap, row: i64, event_id: i64, hash: EventHash) {
        if let Entry::Occupied(e) = map.entry((row, event_id)) {
            if *e.get() == hash {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Span;
    use std::time::Duration;

    fn pending(id: i64) -> Pending {
        Pending {
            acked: Acked {
                row: 1,
                event_id: id,
                hash: [0; 16],
                span: Span {
                    start_ns: id,
                    duration_ns: 0,
                },
            },
            body: Body::Deletion {
                bucket_id: "b".into(),
            },
            follows_queued: false,
        }
    }

    /// A page is cut into pieces of the capacity, in read order, the first one the largest.
    #[test]
    fn a_page_is_cut_in_order_into_pieces_of_the_capacity() {
        for (n, capacity, want) in [
            (5000, 1500, vec![1500, 1500, 1500, 500]),
            (3000, 1500, vec![1500, 1500]),
            (7, 10, vec![7]),
            (0, 10, vec![]),
            (3, 0, vec![1, 1, 1]),
        ] {
            let cut: Vec<Vec<Pending>> = pieces((0..n).map(pending).collect(), capacity).collect();
            let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
            assert_eq!(sizes, want, "{n} events into {capacity}");
            let ids: Vec<i64> = cut.iter().flatten().map(|p| p.acked.event_id).collect();
            assert_eq!(
                ids,
                (0..n).collect::<Vec<_>>(),
                "{n} events into {capacity}"
            );
        }
    }

    /// The queue holds at most its capacity in events, however they are chunked, and a reader
    /// waiting for room is released when the uploader goes away.
    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_in_events_and_closes_with_its_reader() {
        let (tx, mut rx) = queue(5);
        tx.send_events((0..3).map(pending).collect()).await.unwrap();
        {
            // 3 + 3 > 5: the second page waits for room.
            let second = tx.send_events((3..6).map(pending).collect());
            tokio::pin!(second);
            assert!(
                tokio::time::timeout(Duration::from_secs(60), &mut second)
                    .await
                    .is_err(),
                "no room for 3 more"
            );
            let Some(Item::Events(first)) = rx.recv().await else {
                panic!("the first page")
            };
            assert_eq!(first.len(), 3);
            second.await.unwrap();
        }
        // A page larger than the whole queue goes in pieces, never more than 5 at a time.
        let big = tokio::spawn(async move {
            let r = tx.send_events((10..22).map(pending).collect()).await;
            (tx, r)
        });
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 3 + 12 {
            match rx.recv().await {
                Some(Item::Events(e)) => sizes.push(e.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sizes.iter().all(|&n| n <= 5), "{sizes:?}");
        let (tx, r) = big.await.unwrap();
        r.unwrap();
        tx.send_events((30..35).map(pending).collect())
            .await
            .unwrap();
        let blocked = tokio::spawn(async move { tx.send_events(vec![pending(40)]).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(
            blocked.await.unwrap().is_err(),
            "the reader learns the uploader is gone"
        );
    }

    #[test]
    fn inflight_claims_a_version_once() {
        let f = InFlight::default();
        assert_eq!(f.claim(1, 1, [1; 16]), Claim::New);
        assert_eq!(f.claim(1, 1, [1; 16]), Claim::Held);
        assert_eq!(
            f.claim(1, 1, [2; 16]),
            Claim::Replacing,
            "a grown version is taken, behind the one on its way"
        );
        assert_eq!(
            f.claim(1, 1, DELETION),
            Claim::Replacing,
            "so is a deletion"
        );
        assert_eq!(f.claim(1, 1, [2; 16]), Claim::Replacing);
        f.release(1, 1, [1; 16]);
        assert_eq!(
            f.claim(1, 1, [2; 16]),
            Claim::Held,
            "releasing an older version keeps the newer claim"
        );
        f.release(1, 1, [2; 16]);
        assert_eq!(f.claim(1, 1, [2; 16]), Claim::New);
        assert_eq!(f.claim(2, 1, [2; 16]), Claim::New, "buckets are apart");
    }

    #[tokio::test]
    async fn a_barrier_fails_when_the_uploader_is_gone() {
        let (tx, rx) = queue(5);
        drop(rx);
        assert!(tx.barrier().await.is_err());
    }
}
