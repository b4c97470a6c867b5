//! Asking the engine once for what cannot have changed: which physical index the alias
//! names, single flight for identical requests, and the answer cache for requests whose
//! answer depends only on the index's state (counts, hits, suggestions). Generic over the
//! request: a body is opaque JSON, sent to the physical index the alias names; nothing here
//! knows what the documents hold.
//!
//! # How old a reused answer can be, and why that is the index's own bound
//!
//! The engine makes writes visible in *refreshes*: every `refresh_interval` (R) each shard
//! opens a new searcher on what it received. tidemark sets R explicitly on every index it
//! creates (`[index] refresh_interval`, 1 s by default), so the engine never postpones
//! refreshes of a search-idle shard. A search is answered from the searcher of the last
//! refresh: whatever the engine answers at time t reflects the writes it had received by
//! that refresh, at most R before t. That lag is the index's own: no client of the engine
//! can see a write sooner.
//!
//! A reused answer is one the engine gave at time t₀ (counted from when the request was
//! *sent*, so the age is never understated), served at t < t₀ + A, where the reuse bound
//! A = min(`[serve] cache_max_age`, the index's own `refresh_interval` as read from the
//! engine, `[index] refresh_interval`). So every answer is the engine's own answer for a
//! state that was current less than A ≤ R ago, and the page and `/api/search` say how
//! old (`counts.age_ms` and `hits_age_ms`, bounded by `counts.max_age_ms`). Asked directly, the engine may
//! be up to R behind the writes; through the cache, up to R + A ≤ 2R — the reused answer is
//! never older than one refresh interval *as the engine served it*. An index whose refresh
//! is off (`-1`, e.g. one still being built) has no such bound: nothing is reused.
//!
//! # The alias
//!
//! Every search first asks the engine which physical index the alias names (with that
//! index's `refresh_interval`, in the same request), through a [`Fresh`] single flight:
//! a request only uses a look-up that *started after it arrived*, so a request that
//! arrives after an alias move (a reindex's swap, a rollback) always sees the move. The
//! look-up is a small cluster-state read (no search thread); concurrent requests share
//! one, at most one is under way at a time. Cached answers belong to the index they were
//! fetched from ([`AnswerCache`]): the first look-up that names another index drops them
//! all, and counts and hits are then asked of the physical index by name, so an answer is
//! never computed on, or reused from, an index other than the one the alias named when the
//! request arrived.
//!
//! # Several serve processes
//!
//! Each `tidemark serve` keeps its own cache; none shares with another, so each one's
//! answers keep the bound above on their own. Two processes behind a load balancer may
//! show counts of different refreshes (each at most A old), as two replicas of the engine
//! may; the page says which age it shows. An alias move is seen by each process at its
//! next request. The engine's own shard request cache (which the counts request is
//! shaped to hit) is shared by all of them and is invalidated by the engine at every
//! refresh.
//!
//! # Renewed ahead
//!
//! An answer still asked for past half its bound is asked of the engine again in the
//! background, and the new answer replaces it: popular answers are renewed before they
//! expire, so their readers never wait for a miss. The bound is unchanged (each answer's
//! age still counts from when it was asked). At most one search per answer is under way:
//! no renewal is started while a search for the same answer is (its answer replaces the
//! old one anyway), and a reader that finds the answer expired while its renewal is under
//! way joins it (single flight), renewal's place in the queue included. Only a reuse
//! starts a renewal: an answer asked less often than once per bound is a miss each time.
//! `tidemark_search_renewals_total` counts the renewals sent.
//!
//! # Under load
//!
//! Because an answer's age counts from when the engine was asked, an answer that waited in
//! the engine's queue longer than the bound arrives too old to be reused; under load every
//! answer would, and nothing would be reused just when it matters most. So serve keeps at
//! most `[serve] engine_concurrency` searches under way at the engine (about as many as
//! its search threads); the others wait in serve, where identical ones join them (single
//! flight) and where, once an answer is kept, later ones are answered from it.
//!
//! Waiting in arrival order is not enough: a renewal would queue behind every miss that
//! arrived before it, and once misses wait longer than the bound (an overloaded engine),
//! it would be sent only after the answer it renews had expired — its readers would miss
//! too, and reuse would collapse just when it matters (BENCHMARKS.md, section 6). So the
//! slots are handed out by a [`Gate`]: a freed slot goes to a waiting renewal before a
//! waiting miss, and while both wait they take turns. A renewal waits for the next slot to
//! come free, or the one after (besides renewals ahead of it), however long the misses'
//! queue: started at half the bound, it is normally answered before the answer it renews
//! expires. Misses still get at least every other freed slot, so renewals never starve
//! them; and there are few renewals: at most one per popular answer per half bound, where
//! without renewal its readers would make one miss per bound.
//!
//! Renewals share the `engine_concurrency` slots rather than having slots of their own:
//! serve never has more than that many searches at the engine, renewals or not. A lane of
//! their own would either add searches past the bound chosen for the engine, or take
//! slots from the misses even when no renewal needs them.
//!
//! # Single flight
//!
//! Identical requests (same index, same body) under way at once share one engine round
//! trip ([`SingleFlight`]): a request that joins gets an answer
//! fetched after the first of the group arrived and delivered after itself arrived, so no
//! staler than one engine round trip; with the cache off (`cache_max_age = "0s"`) single
//! flight still applies.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use elasticsearch::http::Method;
use serde_json::Value;

use super::{
    cache::{AnswerCache, Usage},
    flight::{Fresh, SingleFlight},
    gate::{Gate, Lane},
    Failure, SEARCH_TIMEOUT,
};
use crate::{services::Services, telemetry};

/// The physical index (or indices, comma-joined) the alias names, as one look-up found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub index: String,
    /// The look-up's number: later look-ups have larger ones.
    pub lookup: u64,
    /// How long an answer from this index may be reused (0: not at all).
    pub max_age: Duration,
}

/// An engine answer, as fetched or reused.
#[derive(Clone, Debug)]
pub struct Answer {
    pub json: Arc<Value>,
    /// How long ago the request that produced it was sent to the engine.
    pub age: Duration,
    /// Whether it came from the cache.
    pub reused: bool,
}

#[derive(Clone)]
struct Fetched {
    json: Arc<Value>,
    bytes: Bytes,
    sent: Instant,
}

/// What answers are kept: for how long at most, and in how many bytes.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The reuse bound before the index's own refresh interval is taken into account
    /// (`[serve] cache_max_age`, capped by `[index] refresh_interval`); 0 turns reuse off.
    pub max_age: Duration,
    pub bytes: usize,
    /// Most searches serve has under way at the engine at once, renewals included (`[serve]
    /// engine_concurrency`); the others wait in serve (renewals first), where identical
    /// ones join them.
    pub engine_concurrency: usize,
}

pub struct Reuse {
    settings: Settings,
    cache: Arc<AnswerCache>,
    flights: Arc<Flights>,
    target: Fresh<Result<(String, Duration), Failure>>,
    slots: Arc<Gate>,
}

/// Engine searches under way, by (index, body).
type Flights = SingleFlight<(String, String), Result<Fetched, Failure>>;

impl Reuse {
    pub fn new(settings: Settings) -> Reuse {
        Reuse {
            settings,
            cache: Arc::new(AnswerCache::new(settings.bytes)),
            flights: Arc::default(),
            target: Fresh::default(),
            slots: Gate::new(settings.engine_concurrency),
        }
    }

    pub fn usage(&self) -> Usage {
        self.cache.usage()
    }

    /// Which physical index the alias names now (a look-up started after this call).
    pub async fn target(&self, services: &Services) -> Result<Target, Failure> {
        let (found, lookup) = self
            .target
            .get(|| {
                let services = services.clone();
                async move { look_up(&services).await }
            })
            .await;
        let (index, refresh) = found?;
        Ok(Target { index, lookup, max_age: self.settings.max_age.min(refresh) })
    }

    /// The answer to `body` from `target`, reused if the cache holds one younger than the
    /// target's bound, else fetched (shared with identical requests under way) and kept.
    /// `kind` labels the metrics (`counts`, `hits`, `suggest`).
    pub async fn cached(&self, services: &Services, target: &Target, kind: &'static str, body: &Value) -> Result<Answer, Failure> {
        let key = body.to_string();
        if !target.max_age.is_zero() {
            if let Some(hit) = self.cache.get(&target.index, target.lookup, &key, target.max_age) {
                telemetry::search_cache(kind, true);
                self.record_usage();
                let json = serde_json::from_slice(&hit.body).map_err(|e| {
                    tracing::error!(error = %e, "a cached answer could not be read");
                    Failure::Internal
                })?;
                if hit.age * 2 >= target.max_age && !self.flights.running(&(target.index.clone(), key.clone())) {
                    // Past half its life and still asked for: ask the engine again now, in
                    // the background and ahead of waiting misses, so the next request finds
                    // a younger answer rather than a miss (an answer in use never has to
                    // expire before renewal).
                    let (flights, slots, cache) = (self.flights.clone(), self.slots.clone(), self.cache.clone());
                    let (services, target, key) = (services.clone(), target.clone(), key.clone());
                    tokio::spawn(async move {
                        let keep = Some((cache, target.clone()));
                        let _ = fetch(&flights, &slots, &services, &target, kind, key, Lane::Renewal, keep).await;
                    });
                }
                return Ok(Answer { json: Arc::new(json), age: hit.age, reused: true });
            }
            telemetry::search_cache(kind, false);
        }
        let keep = (!target.max_age.is_zero()).then(|| (self.cache.clone(), target.clone()));
        let answer = fetch(&self.flights, &self.slots, services, target, kind, key, Lane::Miss, keep).await?;
        self.record_usage();
        Ok(answer)
    }

    /// The answer to `body` from `target`, fetched (shared with identical requests under
    /// way), never reused afterwards.
    pub async fn shared(&self, services: &Services, target: &Target, kind: &'static str, body: &Value) -> Result<Answer, Failure> {
        fetch(&self.flights, &self.slots, services, target, kind, body.to_string(), Lane::Miss, None).await
    }

    fn record_usage(&self) {
        let u = self.cache.usage();
        telemetry::search_cache_usage(u.entries, u.bytes);
    }
}

/// The answer to `key` from `target`: the search under way for it, or a new one (waiting
/// in `lane` for one of the engine `slots`), kept in `keep` once answered.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    flights: &Flights,
    slots: &Arc<Gate>,
    services: &Services,
    target: &Target,
    kind: &'static str,
    key: String,
    lane: Lane,
    keep: Option<(Arc<AnswerCache>, Target)>,
) -> Result<Answer, Failure> {
    let flight_key = (target.index.clone(), key.clone());
    let (fetched, joined) = flights
        .run(flight_key, || {
            let (services, index, slots) = (services.clone(), target.index.clone(), slots.clone());
            async move {
                // Waits here, not in the engine's queue: an answer's age counts from
                // when the engine was asked, so one that queued there past the bound
                // could never be reused (and under load none would be).
                let _slot = slots.acquire(lane).await;
                if lane == Lane::Renewal {
                    telemetry::search_renewal(kind);
                }
                let fetched = search(&services, &index, key.clone()).await;
                if let (Ok(f), Some((cache, target))) = (&fetched, keep) {
                    cache.insert(&target.index, target.lookup, key, f.bytes.clone(), f.sent);
                }
                fetched
            }
        })
        .await;
    telemetry::engine_request(kind, joined);
    let f = fetched?;
    Ok(Answer { json: f.json, age: f.sent.elapsed(), reused: false })
}

/// `POST /<index>/_search` with `body`, bounded by [`SEARCH_TIMEOUT`].
async fn search(services: &Services, index: &str, body: String) -> Result<Fetched, Failure> {
    let path = format!("/{index}/_search");
    let sent = Instant::now();
    let reply =
        match tokio::time::timeout(SEARCH_TIMEOUT, services.search.request(Method::Post, &path, Some(body.into_bytes()), false)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(super::search_down(&e)),
            Err(_) => {
                tracing::warn!(timeout = ?SEARCH_TIMEOUT, path, "search server did not answer in time");
                return Err(Failure::SearchDown("did not answer in time".into()));
            }
        };
    let json = reply.json(&path).map_err(|e| super::search_down(&e))?;
    if reply.status != 200 {
        return Err(super::engine_failure(reply.status, &json, &path));
    }
    Ok(Fetched { json: Arc::new(json), bytes: reply.body, sent })
}

/// The physical indices behind the alias (comma-joined, sorted) and the shortest
/// refresh interval among them (0 when any has refresh off), in one cluster-state read.
async fn look_up(services: &Services) -> Result<(String, Duration), Failure> {
    let alias = &services.config.index_alias;
    // Only the one setting, as set: tidemark sets it on every index it creates; an index
    // without it refreshes at the engine's default, 1 s.
    let path = format!("/{alias}/_settings/index.refresh_interval?flat_settings=true");
    let reply = match tokio::time::timeout(SEARCH_TIMEOUT, services.search.request(Method::Get, &path, None, false)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(super::search_down(&e)),
        Err(_) => {
            tracing::warn!(timeout = ?SEARCH_TIMEOUT, path, "search server did not answer in time");
            return Err(Failure::SearchDown("did not answer in time".into()));
        }
    };
    let v = reply.json(&path).map_err(|e| super::search_down(&e))?;
    if reply.status != 200 {
        return Err(super::engine_failure(reply.status, &v, &path));
    }
    let Some(indices) = v.as_object().filter(|o| !o.is_empty()) else {
        return Err(Failure::IndexMissing);
    };
    let mut names: Vec<&String> = indices.keys().collect();
    names.sort();
    let mut refresh = Duration::MAX;
    for s in indices.values() {
        let set = s["settings"]["index.refresh_interval"].as_str().unwrap_or(ENGINE_DEFAULT_REFRESH);
        refresh = refresh.min(engine_duration(set).unwrap_or(Duration::ZERO));
    }
    telemetry::engine_request("alias", false);
    Ok((names.into_iter().map(String::as_str).collect::<Vec<_>>().join(","), refresh))
}

/// The engines' `index.refresh_interval` when an index does not set it.
const ENGINE_DEFAULT_REFRESH: &str = "1s";

/// A time value as the engine writes it (`1s`, `500ms`, `2m`, …); None for `-1` (off) or
/// anything unreadable (then nothing is reused).
pub fn engine_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "nanos" => n / 1e9,
        "micros" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_time_values() {
        assert_eq!(engine_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(engine_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(engine_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(engine_duration("-1"), None);
        assert_eq!(engine_duration("soon"), None);
    }
}
