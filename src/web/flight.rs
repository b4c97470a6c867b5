//! Single flight: callers that ask for the same thing while it is being fetched share one
//! fetch. Generic over the key and the answer; nothing here knows what is fetched.
//!
//! Two kinds:
//!
//! - [`SingleFlight`]: a caller joins a fetch of the same key already under way. The
//!   answer it gets was fetched after the first caller of the group arrived, and answered
//!   after it itself arrived: no staler than the time the engine takes for one request.
//! - [`Fresh`]: a caller joins only a fetch that *started after it arrived* (and waits
//!   for the one under way to end first, if that one started earlier). Used where an
//!   answer must reflect a state at least as new as the caller's arrival (which index the
//!   alias names: a request that arrives after an alias move must see the move). At most
//!   one fetch is under way at once, and every caller waits for at most two.
//!
//! The fetch runs in its own task: it completes (and leaves the table) even if every
//! caller gave up waiting, so a caller that goes away cannot leave a half-done fetch behind
//! for the next one, and the table never keeps a key after its fetch ended.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
};

use futures::future::{BoxFuture, FutureExt, Shared};

type Call<V> = Shared<BoxFuture<'static, V>>;
/// The fetches under way: each key's call, numbered (so a call only removes itself).
type Table<K, V> = Arc<Mutex<HashMap<K, (u64, Call<V>)>>>;

/// Concurrent fetches of one key share one.
pub struct SingleFlight<K, V: Clone> {
    calls: Table<K, V>,
    next: Mutex<u64>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { calls: Arc::new(Mutex::new(HashMap::new())), next: Mutex::new(0) }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The answer for `key`: the fetch under way for it if there is one, else `fetch()`
    /// started now. Also says whether the answer was shared (this caller joined a fetch
    /// another caller started).
    pub async fn run<F>(&self, key: K, fetch: impl FnOnce() -> F) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (call, joined) = {
            let mut calls = self.calls.lock().expect("single-flight table");
            match calls.get(&key) {
                Some((_, call)) => (call.clone(), true),
                None => {
                    let id = {
                        let mut n = self.next.lock().expect("single-flight counter");
                        *n += 1;
                        *n
                    };
                    let (table, k) = (self.calls.clone(), key.clone());
                    let f = fetch();
                    let call = async move {
                        let v = f.await;
                        // Leaves the table as soon as its answer is there: a caller arriving
                        // from now on starts a fetch of its own.
                        let mut calls = table.lock().expect("single-flight table");
                        if calls.get(&k).is_some_and(|(i, _)| *i == id) {
                            calls.remove(&k);
                        }
                        v
                    }
                    .boxed()
                    .shared();
                    calls.insert(key, (id, call.clone()));
                    tokio::spawn(call.clone());
                    (call, false)
                }
            }
        };
        (call.await, joined)
    }

    /// Whether a fetch of `key` is under way (a caller of [`run`](Self::run) would join it).
    pub fn running(&self, key: &K) -> bool {
        self.calls.lock().expect("single-flight table").contains_key(key)
    }

    /// Fetches under way (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.calls.lock().expect("single-flight table").len()
    }
}

/// Fetches that a caller may join only if they started after it arrived.
pub struct Fresh<V: Clone> {
    state: Arc<Mutex<FreshState<V>>>,
}

struct FreshState<V: Clone> {
    /// Fetches started so far; the one under way is number `started`.
    started: u64,
    current: Option<Call<V>>,
}

impl<V: Clone> Default for Fresh<V> {
    fn default() -> Self {
        Fresh { state: Arc::new(Mutex::new(FreshState { started: 0, current: None })) }
    }
}

impl<V> Fresh<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// An answer fetched by a fetch that started after this call began, and the number of
    /// that fetch (later fetches have larger numbers).
    pub async fn get<F>(&self, fetch: impl Fn() -> F) -> (V, u64)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let arrival = self.state.lock().expect("fresh-flight state").started;
        loop {
            let (call, number, usable) = {
                let mut s = self.state.lock().expect("fresh-flight state");
                match &s.current {
                    Some(call) => (call.clone(), s.started, s.started > arrival),
                    None => {
                        s.started += 1;
                        let number = s.started;
                        let state = self.state.clone();
                        let f = fetch();
                        let call = async move {
                            let v = f.await;
                            let mut s = state.lock().expect("fresh-flight state");
                            if s.started == number {
                                s.current = None;
                            }
                            v
                        }
                        .boxed()
                        .shared();
                        s.current = Some(call.clone());
                        tokio::spawn(call.clone());
                        (call, number, true)
                    }
                }
            };
            let v = call.await;
            if usable {
                return (v, number);
            }
            // That fetch started before this caller arrived: its answer may predate the
            // caller. Now that it is over, join the next one (or start it).
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_of_one_key_share_one_fetch() {
        let flight: Arc<SingleFlight<&'static str, usize>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let callers = (0..10).map(|_| {
            let (flight, fetches) = (flight.clone(), fetches.clone());
            async move {
                flight
                    .run("k", || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        fetches.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            }
        });
        let answers = futures::future::join_all(callers).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|(v, _)| *v == 1));
        assert_eq!(answers.iter().filter(|(_, joined)| !joined).count(), 1);
        assert_eq!(flight.in_flight(), 0);
        // Once it ended, the next caller fetches again.
        let (v, joined) = flight.run("k", || async { 7 }).await;
        assert_eq!((v, joined), (7, false));
    }

    #[tokio::test]
    async fn a_fresh_caller_never_gets_an_answer_fetched_before_it_arrived() {
        let fresh: Arc<Fresh<usize>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = {
            let fetches = fetches.clone();
            move || {
                let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    n
                }
            }
        };
        let first = {
            let (fresh, fetch) = (fresh.clone(), fetch.clone());
            tokio::spawn(async move { fresh.get(fetch).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Arrive while fetch 1 is under way: all of these get fetch 2, started after them.
        let late = futures::future::join_all((0..5).map(|_| fresh.get(fetch.clone()))).await;
        assert_eq!(first.await.unwrap(), (1, 1));
        assert!(late.iter().all(|&(v, n)| v == 2 && n == 2), "{late:?}");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
