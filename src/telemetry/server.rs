//! A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`: three GET
//! routes do not justify a web framework in the dependency tree.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::shutdown::Shutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Health;

/// The telemetry server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Bind {
        /// The configured address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address (useful
/// with port 0) and the serving task.
///
/// # Errors
/// [`ServerError::Bind`] when the address cannot be bound.
pub async fn serve(
    addr: &str,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let task = tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let handle = handle.clone();
                        let health = Arc::clone(&health);
                        tokio::spawn(respond(stream, handle, health));
                    }
                    // Out of file descriptors, say: back off instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                },
            }
        }
    });
    Ok((local, task))
}

async fn respond(mut stream: TcpStream, handle: PrometheusHandle, health: Arc<Health>) {
    // Read the request head (up to 8 KiB; the body of a GET is ignored).
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
        .await
        .is_err()
    {
        return;
    }
    let req = String::from_utf8_lossy(&buf);
    let mut words = req.split_whitespace();
    let method = words.next().unwrap_or_default();
    // The query string (`/metrics?name[]=...` from some scrapers) selects nothing.
    let path = words.next().unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, body) = match path {
        _ if method != "GET" && method != "HEAD" => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".to_string(),
        ),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            super::render(&handle),
        ),
        "/healthz" | "/livez" => {
            let kafka = if health.kafka_up() {
                "kafka: up".to_string()
            } else {
                format!("kafka: no broker reachable ({})", health.last_error())
            };
            match health.fatal() {
                // The pipeline stopped by itself; `run` starts it again, and a process
                // that cannot is restarted by its supervisor.
                Some(why) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("pipeline stopped: {why}\n{kafka}\n"),
                ),
                None => ("200 OK", "text/plain", format!("alive\n{kafka}\n")),
            }
        }
        "/startupz" => {
            if health.started() {
                ("200 OK", "text/plain", "started\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "starting: reading topic metadata\n".to_string(),
                )
            }
        }
        "/readyz" => {
            if !health.kafka_up() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!(
                        "not ready: kafka: no broker reachable ({})\n",
                        health.last_error()
                    ),
                )
            } else if let Some(why) = health.produce_stalled() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready: output stalled: {why}\n"),
                )
            } else if let stalled @ [_, ..] = &health.input_stalled()[..] {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready: input not progressing: {}\n", stalled.join("; ")),
                )
            } else if !health.joined() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: joining the consumer group\n".to_string(),
                )
            } else if health.assigned() == 0 {
                (
                    "200 OK",
                    "text/plain",
                    "ready: a member of the group with no partitions (the group has as many members as input partitions, or more)\n".to_string(),
                )
            } else {
                (
                    "200 OK",
                    "text/plain",
                    format!("ready: {} partitions\n", health.assigned()),
                )
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}
