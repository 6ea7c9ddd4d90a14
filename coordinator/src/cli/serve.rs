//! `coordinator serve`: the service, until Ctrl-C or SIGTERM.

use anyhow::Context;

use super::args::ServeArgs;
use crate::server::{MqttMode, ServeConfig};

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let mqtt = match args.mqtt_url {
        Some(url) => MqttMode::External(url),
        None => MqttMode::Embedded(args.mqtt_listen),
    };
    let mut config = ServeConfig::new(args.data_dir.clone(), mqtt);
    config.database_url = args.database_url;
    config.public_url = args.public_url;
    config.mqtt_client_id = args.mqtt_client_id;
    config.import_dir = args.import_dir;
    config.alert_webhook = args.alert_webhook;
    config.mlflow = args.mlflow_url.map(|url| crate::mlflow::MlflowConfig {
        url,
        campaign_experiment: args.mlflow_campaign_experiment,
    });
    if !args.plain {
        let mut names = args.tls_names.clone();
        if !args.listen.ip().is_unspecified() && !args.listen.ip().is_loopback() {
            names.push(args.listen.ip().to_string());
        }
        let mut tls = crate::pki::TlsSettings::new(names);
        tls.cert_lifetime = args.cert_lifetime;
        tls.gate_listen = Some(args.mqtt_tls_listen);
        config.tls = Some(tls);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let running = crate::server::start(config, listener).await?;
    // Offline commands (`pki rotate-ca`) refuse to run under a live coordinator.
    let pid_file = args.data_dir.join("coordinator.pid");
    let _ = std::fs::write(&pid_file, std::process::id().to_string());
    eprintln!("coordinator listening on {} (MQTT {})", running.api_url(), running.mqtt_url);
    eprintln!("trust key for agents: {}", running.state.signer.public_hex());
    if let Some(pki) = &running.state.pki {
        eprintln!(
            "CA fingerprint for enrolment: {} (tokens: coordinator devices token)",
            pki.ca().fingerprint()
        );
    }
    let token_file = args.data_dir.join(crate::api::auth::OPERATOR_TOKEN_FILE);
    if token_file.is_file() {
        eprintln!("operator API token: {} (mode 0600)", token_file.display());
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; }
        _ = terminate() => {}
    }
    eprintln!("shutting down");
    running.shutdown().await;
    let _ = std::fs::remove_file(&pid_file);
    Ok(0)
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}
