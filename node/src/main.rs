//! `rouse-node`: parses settings, binds, and runs a node until SIGINT or
//! SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use rouse_node::config::{Args, NodeConfig};

fn main() -> ExitCode {
    // Read (and cleared from the environment) before any thread starts.
    let inherited = listenfd::ListenFd::from_env();
    let args = Args::parse();
    let check = args.check_config;
    let config = match NodeConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rouse-node: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        println!(
            "config ok: node {} (zone {:?}, region {:?}), data dir {}, API on {} advertised as {}, \
             mesh on {} advertised as {}, hops advertised as {}, {}",
            config.id,
            config.zone,
            config.region,
            config.data_dir.display(),
            config.listen,
            config.advertise,
            config.http,
            config.advertise_http,
            config.advertise_hop,
            match (&config.join, config.bootstrap) {
                (Some(j), _) => format!("joins through {j}"),
                (None, true) => "bootstraps a new cluster".to_string(),
                (None, false) => "restarts from its data dir".to_string(),
            }
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rouse-node: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's client lives on the runtime.
    let tracing = {
        let _in = rt.enter();
        rouse_node::trace::init(
            &config.log,
            config.log_format,
            config.otlp_endpoint.as_deref(),
            config.id,
        )
    };
    let _tracing = match tracing {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rouse-node: otlp_endpoint: {e:#}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(serve(config, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rouse-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The listeners: inherited from whoever started the node (systemd's socket
/// activation: the first socket serves the API, the second the mesh, the
/// third other nodes' hops, the fourth the metrics), or bound here.
async fn listeners(
    config: &rouse_node::config::NodeConfig,
    mut inherited: listenfd::ListenFd,
) -> anyhow::Result<rouse_node::server::Listeners> {
    use anyhow::Context;
    let take = |fds: &mut listenfd::ListenFd, i: usize, field: &str, want: std::net::SocketAddr| {
        let Some(l) = fds
            .take_tcp_listener(i)
            .with_context(|| format!("{field}: inherited socket {i} is not a TCP listener"))?
        else {
            return Ok(None);
        };
        let got = l.local_addr()?;
        if got != want {
            anyhow::bail!(
                "{field}: the inherited socket listens on {got}, not on {want} as --{field} says"
            );
        }
        l.set_nonblocking(true)?;
        Ok(Some(tokio::net::TcpListener::from_std(l)?))
    };
    let api = match take(&mut inherited, 0, "listen", config.listen)? {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?,
    };
    let http = match take(&mut inherited, 1, "http", config.http)? {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(config.http)
            .await
            .with_context(|| format!("http: cannot bind {}", config.http))?,
    };
    let hop = match take(&mut inherited, 2, "hop", config.hop)? {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(config.hop)
            .await
            .with_context(|| format!("hop: cannot bind {}", config.hop))?,
    };
    let metrics = match take(&mut inherited, 3, "metrics", config.metrics)? {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(config.metrics)
            .await
            .with_context(|| format!("metrics: cannot bind {}", config.metrics))?,
    };
    Ok(rouse_node::server::Listeners {
        api,
        http,
        hop,
        metrics,
    })
}

async fn serve(
    config: rouse_node::config::NodeConfig,
    inherited: listenfd::ListenFd,
) -> anyhow::Result<()> {
    if config.remove_instance_network {
        return rouse_node::server::remove_instance_network(&config).await;
    }
    let listeners = listeners(&config, inherited).await?;
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    rouse_node::server::run(config, listeners, shutdown).await
}
