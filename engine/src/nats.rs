//! Connecting to NATS with a bounded wait and the configured auth.

use crate::config::NatsConfig;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot connect to NATS at {url}: {message} (is the server up? `dev/stack status`)")]
    Unreachable { url: String, message: String },
    #[error(
        "cannot connect to NATS at {url} within {secs}s (is the server up? `dev/stack status`)"
    )]
    Timeout { url: String, secs: u64 },
    #[error("bad URL {url:?} for NATS: {message} (set NATS_URL or [nats] url to e.g. nats://127.0.0.1:4222; several servers comma-separated)")]
    BadUrl { url: String, message: String },
    #[error("cannot connect to NATS at {url} with TLS: the server does not speak TLS (set [nats] tls_required = false, or use the server's TLS port)")]
    NotTls { url: String },
    #[error("NATS credentials file {path}: {message}")]
    Creds { path: String, message: String },
    #[error(
        "NATS at {url} refused the credentials of {who}: {message} (check [nats] user/password, \
         token or creds_file in the config, or NATS_USER / NATS_PASSWORD / NATS_TOKEN / NATS_CREDS)"
    )]
    Auth {
        url: String,
        who: String,
        message: String,
    },
}

/// Connects with the configured auth; fails within `connect_timeout`, never hangs.
///
/// The connection reconnects by itself after the first success (async-nats retries forever
/// with backoff); only the first connect is bounded.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, ConnectError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("projector")
        // The client logs every event at info; a denied publish or subscribe arrives only as
        // such an event, so it is raised to an error that says what it means.
        .event_callback(|event| async move {
            if let async_nats::Event::ServerError(e) = event {
                tracing::error!(error = %e, "NATS server error (a permissions violation means this NATS user may not use that subject; see docs/operations.md)");
            }
        })
        .connection_timeout(cfg.connect_timeout)
        .require_tls(cfg.tls_required);
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| ConnectError::Creds {
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    // A list of servers is given comma-separated; async-nats wants them split.
    let servers: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| ConnectError::BadUrl {
            url: cfg.url.clone(),
            message: e.to_string(),
        })?;
    match tokio::time::timeout(cfg.connect_timeout * 2, opts.connect(servers)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
            ) =>
        {
            Err(ConnectError::Auth {
                url: cfg.url.clone(),
                who: match (&cfg.user, &cfg.token, &cfg.creds_file) {
                    (Some(u), _, _) => format!("user {u:?}"),
                    (_, Some(_), _) => "the token".into(),
                    (_, _, Some(p)) => format!("creds file {p}"),
                    _ => "an anonymous client (no user, token or creds_file set)".into(),
                },
                message: e.to_string(),
            })
        }
        // rustls reading a plain-text NATS INFO line as a TLS record: the server has no TLS.
        Ok(Err(e)) if cfg.tls_required && e.to_string().contains("InvalidContentType") => {
            Err(ConnectError::NotTls {
                url: cfg.url.clone(),
            })
        }
        Ok(Err(e)) if e.kind() == async_nats::ConnectErrorKind::ServerParse => {
            Err(ConnectError::BadUrl {
                url: cfg.url.clone(),
                message: e.to_string(),
            })
        }
        Ok(Err(e)) => Err(ConnectError::Unreachable {
            url: cfg.url.clone(),
            message: e.to_string(),
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: cfg.url.clone(),
            secs: (cfg.connect_timeout * 2).as_secs(),
        }),
    }
}
