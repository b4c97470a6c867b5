//! The admin endpoint every long-running process serves on `--admin-addr`:
//!
//! - `GET /metrics`: this process's metrics, Prometheus text format (docs/metrics.md);
//! - `GET /healthz`: the process is alive (no dependency checks: cheap, for liveness);
//! - `GET /readyz`: PostgreSQL, the search server and (for processes that use it) Redis
//!   each answered within [`CHECK_TIMEOUT`]; one JSON entry per check; 503 naming the
//!   failed ones otherwise.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use super::ProcessError;
use crate::{config::redact_url, services::Services, telemetry};

/// How long each readiness check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin routes need.
#[derive(Clone)]
pub struct Admin {
    services: Services,
    /// Whether this process needs Redis (worker, scheduler) or not (serve).
    uses_redis: bool,
    metrics: PrometheusHandle,
}

impl Admin {
    pub fn new(services: Services, uses_redis: bool) -> Admin {
        Admin { services, uses_redis, metrics: telemetry::install() }
    }
}

/// The admin routes (a function of the state, so tests call it without a socket).
pub fn router(admin: Admin) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(admin)
}

/// Serves the admin routes on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, admin: Admin, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ProcessError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| ProcessError::Bind { addr, reason: e.to_string() })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "admin endpoint: /metrics /healthz /readyz");
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ProcessError::Bind { addr, reason: e.to_string() })
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], admin.metrics.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    /// Why it failed (no credentials: addresses are redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    millis: u64,
}

async fn check<E: std::fmt::Display>(probe: impl Future<Output = Result<(), E>>) -> Check {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    };
    Check { ok: result.is_none(), error: result, millis: started.elapsed().as_millis() as u64 }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    let s = &admin.services;
    let postgres = check(async { sqlx::query("SELECT 1").execute(&s.pool).await.map(|_| ()) });
    let search = check(s.search.ping());
    let redis = async {
        match s.config.redis_url() {
            Ok(url) if admin.uses_redis => Some(
                check(async {
                    let redacted = redact_url(url.expose());
                    let client = redis::Client::open(url.expose()).map_err(|_| format!("REDIS_URL {redacted} is not a Redis URL"))?;
                    let mut conn =
                        client.get_multiplexed_async_connection().await.map_err(|e| format!("Redis at {redacted}: {}", e.kind_str()))?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("Redis at {redacted}: {}", e.kind_str()))
                })
                .await,
            ),
            _ => None,
        }
    };
    let (postgres, search, redis) = tokio::join!(postgres, search, redis);
    let ready = postgres.ok && search.ok && redis.as_ref().is_none_or(|r| r.ok);
    let mut checks = serde_json::Map::new();
    checks.insert("postgres".into(), serde_json::to_value(postgres).expect("serialises"));
    checks.insert("search".into(), serde_json::to_value(search).expect("serialises"));
    if let Some(r) = redis {
        checks.insert("redis".into(), serde_json::to_value(r).expect("serialises"));
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "checks": checks })))
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// The kind and, for I/O errors, the cause; never the URL the client was given.
    fn kind_str(&self) -> String {
        match self.kind() {
            redis::ErrorKind::Io => format!("unreachable ({})", self.detail().unwrap_or("I/O error")),
            redis::ErrorKind::AuthenticationFailed => "refused the credentials".into(),
            kind => format!("{kind:?}"),
        }
    }
}
