//! [`Services`]: what every stage and every process works with — the PostgreSQL pool, the
//! search client, the configuration and who this process is — built once per process and
//! passed down, so no stage connects anything itself.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use sqlx::PgPool;

use crate::{
    config::Config,
    db::{self, DbError},
    model::Model,
    search::{Search, SearchError},
};

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// The shared handles of one process. Cheap to clone (every field is a handle).
#[derive(Clone, Debug)]
pub struct Services {
    pub pool: PgPool,
    pub search: Search,
    pub config: Arc<Config>,
    /// The model the documents are built from (`config.model`).
    pub model: Arc<Model>,
    pub identity: Identity,
}

impl Services {
    /// Connects to PostgreSQL (a pool of up to `pool_size`), checks the schema is migrated,
    /// and builds the search client (which connects lazily).
    pub async fn connect(config: Arc<Config>, pool_size: u32) -> Result<Services, ServicesError> {
        let pool = db::connect(&config, pool_size).await?;
        db::check_schema(&pool).await?;
        let search = Search::new(&config)?;
        Ok(Services::new(pool, search, config))
    }

    /// From parts already built (tests, benchmarks); the identity is new.
    pub fn new(pool: PgPool, search: Search, config: Arc<Config>) -> Services {
        Services { pool, search, model: config.model(), config, identity: Identity::generate() }
    }

    /// How long a claim is owned before another worker may take it over.
    pub fn lease(&self) -> Duration {
        self.config.sync.lease.0
    }
}

/// Who this process is: unique per process *start* — host, pid and a random part, since in
/// containers every process may be pid 1 on a host named alike. It names the process's
/// apalis worker and prefixes the lease owners of its steps.
#[derive(Clone)]
pub struct Identity {
    name: Arc<str>,
    steps: Arc<AtomicU64>,
}

impl Identity {
    pub fn generate() -> Identity {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let name = format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>());
        Identity { name: name.into(), steps: Arc::new(AtomicU64::new(0)) }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// A lease owner for one step of this process (`<identity>#<n>`): the concurrent
    /// steps of one process hold and give back their own leases, never each other's.
    pub fn lease_owner(&self) -> String {
        format!("{}#{}", self.name, self.steps.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.name)
    }
}
