//! `spread-broker`: starts the broker with flags, environment and config file.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use spread_broker::{Args, Config, Server, TlsSource};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::resolve(Args::parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        if let TlsSource::Generated { ca_file } = server.tls_source() {
            tracing::info!(
                "using a locally generated certificate; clients trust {}",
                ca_file.display()
            );
        }
        tracing::info!(node = server.node_id(), "listening on {addr}");
        // A stable line on stdout for scripts and tests.
        // Stdout may be a pipe its reader already closed: never fail on it.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "spread-broker listening on {addr}");
        if let Some(plain) = server.plain_addr() {
            let _ = writeln!(out, "spread-broker listening WITHOUT TLS on {plain}");
        }
        let _ = out.flush();
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
