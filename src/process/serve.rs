//! `tidemark serve`: the search application (`crate::web`) on an address, until shutdown.
//! Read-only: it never writes the database or the index. On shutdown it stops accepting
//! connections and lets the requests in progress finish.

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpListener;

use crate::{services::Services, web};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; choose another address with --addr")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// Listens on `addr` and serves until `shutdown` completes.
pub async fn run(services: Services, addr: SocketAddr, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    run_on(services, listener, shutdown).await
}

/// Serves on a listener already bound (tests bind port 0 and read the address first).
pub async fn run_on(
    services: Services,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    crate::telemetry::serve_started();
    web::check_index(&services).await;
    tracing::info!(%addr, url = %format!("http://{addr}/"), alias = %services.config.index_alias, "serving the search application");
    axum::serve(listener, web::router(services)).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)?;
    tracing::info!("search application stopped");
    Ok(())
}
