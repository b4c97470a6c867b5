//! The engine gate: at most N searches under way at once, and a freed slot goes to a
//! renewal before a miss. Generic: a caller only says which of the two it is; nothing here
//! knows what is searched.
//!
//! - **At most N at once.** A slot is held until its [`Slot`] is dropped; a caller that
//!   finds none free waits in one of two queues (renewals, misses), each first come, first
//!   served.
//! - **Renewals first, misses never starved.** A freed slot goes to the renewal waiting
//!   longest, unless the slot handed out before it went to a renewal while a miss waited:
//!   then to the miss waiting longest. While both wait, they take turns; so a renewal waits
//!   for at most one miss to be handed a slot before it (besides renewals ahead of it), and
//!   misses get at least every other freed slot however many renewals there are.
//! - **A caller that goes away takes nothing with it.** A waiter dropped before it was
//!   handed a slot leaves its queue; one dropped just after passes the slot on.
//!
//! Why renewals go first: see `super::reuse` ("Under load").

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// Who asks for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A reused answer asked of the engine again before it expires.
    Renewal,
    /// Anything a reader waits for (a miss, or a request that is never reused).
    Miss,
}

pub struct Gate {
    state: Mutex<State>,
}

struct State {
    free: usize,
    renewals: VecDeque<oneshot::Sender<()>>,
    misses: VecDeque<oneshot::Sender<()>>,
    /// The last slot handed out went to a renewal while a miss waited: the next goes to a
    /// miss, if one waits.
    misses_next: bool,
}

/// One of the gate's slots, given back when dropped.
pub struct Slot {
    gate: Arc<Gate>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A caller waiting in a queue; if it goes away after it was handed a slot, the slot is
/// passed on.
struct Waiting {
    gate: Arc<Gate>,
    handed: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.handed.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

impl Gate {
    /// A gate of `slots` slots (at least 1).
    pub fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State { free: slots.max(1), renewals: VecDeque::new(), misses: VecDeque::new(), misses_next: false }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("engine gate")
    }

    /// A slot: free now, or once the queue rules above hand it to this caller.
    pub async fn acquire(self: &Arc<Self>, lane: Lane) -> Slot {
        let rx = {
            let mut s = self.lock();
            // A free slot means nobody waits (a freed slot goes to a waiter first).
            if s.free > 0 {
                s.free -= 1;
                return Slot { gate: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            match lane {
                Lane::Renewal => s.renewals.push_back(tx),
                Lane::Miss => s.misses.push_back(tx),
            }
            rx
        };
        let mut waiting = Waiting { gate: self.clone(), handed: Some(rx) };
        let handed = waiting.handed.as_mut().expect("waiting");
        // The sender is only dropped unsent by `release` when this receiver is gone, so
        // while this caller waits, the only outcome is a slot.
        let _ = handed.await;
        waiting.handed = None;
        Slot { gate: self.clone() }
    }

    /// A slot came free: to the next waiter by the rules above, else back to the pool.
    fn release(&self) {
        let mut s = self.lock();
        loop {
            // A renewal, unless it is a miss's turn and a miss waits.
            let renewal = !s.renewals.is_empty() && (s.misses.is_empty() || !s.misses_next);
            let next = if renewal { s.renewals.pop_front() } else { s.misses.pop_front() };
            let Some(tx) = next else {
                s.free += 1;
                return;
            };
            if tx.send(()).is_ok() {
                s.misses_next = renewal && !s.misses.is_empty();
                return;
            }
            // That waiter went away: the next one.
        }
    }

    /// Slots free right now (for tests).
    pub fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Lets spawned waiters reach their queue.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// A waiter of `lane` that records `name` when handed a slot and gives it back a
    /// little later.
    fn waiter(gate: &Arc<Gate>, lane: Lane, name: &'static str, order: &Arc<Mutex<Vec<&'static str>>>) -> tokio::task::JoinHandle<()> {
        let (gate, order) = (gate.clone(), order.clone());
        tokio::spawn(async move {
            let _slot = gate.acquire(lane).await;
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(10)).await;
        })
    }

    #[tokio::test]
    async fn renewals_go_first_but_take_turns_with_waiting_misses() {
        let gate = Gate::new(1);
        let held = gate.acquire(Lane::Miss).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut all = Vec::new();
        // Misses queue first, then renewals.
        for (lane, name) in [(Lane::Miss, "m1"), (Lane::Miss, "m2"), (Lane::Miss, "m3"), (Lane::Renewal, "r1"), (Lane::Renewal, "r2")] {
            all.push(waiter(&gate, lane, name, &order));
            settle().await;
        }
        drop(held);
        for task in all {
            task.await.unwrap();
        }
        // The first renewal goes ahead of every miss; then they take turns while both wait.
        assert_eq!(*order.lock().unwrap(), ["r1", "m1", "r2", "m2", "m3"]);
        assert_eq!(gate.free(), 1);
    }

    #[tokio::test]
    async fn never_more_than_the_slots_at_once_and_every_waiter_is_served() {
        let gate = Gate::new(3);
        let (now, most) = (Arc::new(Mutex::new(0usize)), Arc::new(Mutex::new(0usize)));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (gate, now, most) = (gate.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    let lane = if i % 3 == 0 { Lane::Renewal } else { Lane::Miss };
                    let _slot = gate.acquire(lane).await;
                    {
                        let mut n = now.lock().unwrap();
                        *n += 1;
                        let mut m = most.lock().unwrap();
                        *m = (*m).max(*n);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    *now.lock().unwrap() -= 1;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*most.lock().unwrap(), 3);
        assert_eq!(gate.free(), 3);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_no_slot_behind() {
        let gate = Gate::new(1);
        let held = gate.acquire(Lane::Miss).await;
        // Given up while waiting: leaves the queue.
        let gone = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _ = gate.acquire(Lane::Renewal).await;
            }
        });
        settle().await;
        gone.abort();
        let _ = gone.await;
        // Handed the slot, then dropped before it ran: the slot is passed on.
        let late = {
            let gate = gate.clone();
            let mut f = Box::pin(async move { gate.acquire(Lane::Miss).await });
            assert!(futures::poll!(f.as_mut()).is_pending());
            f
        };
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(Lane::Miss).await }
        });
        settle().await;
        drop(held);
        drop(late);
        let slot = tokio::time::timeout(Duration::from_secs(5), next).await.expect("the slot was passed on").unwrap();
        drop(slot);
        assert_eq!(gate.free(), 1);
    }
}
