//! The `aerodb-server` program as a function: the binary calls it, and so do programs that must start real node
//! processes of their own build (the `failover` benchmark re-runs itself as each node).

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, Flags, LogFormat};

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AERODB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Installs the SIGTERM/SIGINT handlers now (before the server announces its ports, so a signal sent right after
/// start is never missed) and returns the future that resolves on the first one.
fn shutdown_signal(rt: &tokio::runtime::Runtime) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let _guard = rt.enter();
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs a node with `args` (the program name first, then the flags `aerodb-server --help` lists) until SIGTERM or
/// SIGINT; the exit code is the program's.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let flags = match Flags::try_parse_from(args) {
        Ok(f) => f,
        Err(e) => e.exit(),
    };
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aerodb-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    let ports_file = config.ports_file.clone();
    let rt = match crate::runtime(&config) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let node = match crate::open_node(config) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = shutdown_signal(&rt);
    let result = rt.block_on(crate::serve(node, shutdown, move |b| {
        let line = format!(
            "{{\"http\":\"{}\",\"grpc\":\"{}\",\"verifier_key\":\"{}\",\"witness_key\":\"{}\"}}\n",
            b.http, b.grpc, b.verifier_key, b.witness_key
        );
        println!("{}", line.trim_end());
        if let Some(path) = &ports_file {
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, &line).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::error!("writing the ports file {}: {e}", path.display());
            }
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
