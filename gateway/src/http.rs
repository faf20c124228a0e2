//! The HTTP endpoints for the people who run the gateway: `/metrics`
//! (Prometheus text, the same text `--metrics-file` writes), `/healthz`
//! (the process's runtime answers) and `/readyz` (sources and upstream
//! connected; 503 with what is not, otherwise).
//!
//! Read-only: a request reads [`Metrics`] and the shutdown token, and
//! changes nothing. Bounded: at most [`MAX_CONNECTIONS`] connections are
//! open (others are closed unanswered and counted), request headers are
//! limited to [`MAX_HEADER_BYTES`] and must arrive within
//! [`HEADER_READ_TIMEOUT`], a connection lives at most
//! [`CONNECTION_TIMEOUT`] and answers one request (no keep-alive). HTTP/1
//! only, no TLS: it listens on loopback unless the configuration says
//! otherwise (`[http]`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Metrics, SourceState};

/// Connections served at once; a scraper and a few people with curl.
pub const MAX_CONNECTIONS: usize = 16;
/// The largest request head taken (hyper's smallest read buffer).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Headers in a request, at most.
const MAX_HEADERS: usize = 32;
/// A request head must arrive within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this time, answered or not.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The paths served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Healthz,
    Readyz,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/metrics" => Some(Endpoint::Metrics),
            "/healthz" => Some(Endpoint::Healthz),
            "/readyz" => Some(Endpoint::Readyz),
            _ => None,
        }
    }
}

/// What the endpoints read.
#[derive(Debug)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    /// Sources in the configuration; one that has not registered its
    /// state yet is not ready.
    pub sources: usize,
    /// Fired at the start of shutdown: from then on the gateway is not
    /// ready.
    pub shutdown: CancellationToken,
}

/// Binds the listening socket; called at start-up, so that an address in
/// use stops the gateway with a message rather than leaving it without
/// its endpoints.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` fires, then closes every connection.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, stop: CancellationToken) {
    let endpoints = Arc::new(endpoints);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, or the peer gave up during the
            // handshake: try the next one after a breath.
            endpoints.metrics.http_connection_errors.inc();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            endpoints.metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        let endpoints = endpoints.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(|req| {
                let response = respond(&endpoints, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .max_headers(MAX_HEADERS)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let failed = tokio::select! {
                r = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => !matches!(r, Ok(Ok(()))),
                _ = stop.cancelled() => false,
            };
            if failed {
                endpoints.metrics.http_connection_errors.inc();
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The answer to one request; counts it.
fn respond<B>(e: &Endpoints, req: &Request<B>) -> Response<Full<Bytes>> {
    let m = &e.metrics;
    let Some(endpoint) = Endpoint::from_path(req.uri().path()) else {
        m.http_not_found.inc();
        return text(
            StatusCode::NOT_FOUND,
            "not found: the paths are /metrics, /healthz and /readyz\n".into(),
        );
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        m.http_method_not_allowed.inc();
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match endpoint {
        Endpoint::Metrics => {
            m.http_metrics.inc();
            let mut r = text(StatusCode::OK, m.render_prometheus());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            r
        }
        Endpoint::Healthz => {
            m.http_healthz.inc();
            text(StatusCode::OK, "ok\n".into())
        }
        Endpoint::Readyz => {
            let missing = not_ready(
                &m.source_states(),
                e.sources,
                m.upstream_connected.get() == 1,
                e.shutdown.is_cancelled(),
            );
            if missing.is_empty() {
                m.http_ready.inc();
                text(StatusCode::OK, "ready\n".into())
            } else {
                m.http_not_ready.inc();
                text(StatusCode::SERVICE_UNAVAILABLE, missing.join("\n") + "\n")
            }
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What keeps the gateway from being ready, one line each; empty when
/// ready: every configured source connected (MQTT) or open (serial),
/// upstream connected, not shutting down.
pub fn not_ready(
    sources: &[SourceState],
    configured: usize,
    upstream_connected: bool,
    stopping: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if stopping {
        out.push("shutting down".to_owned());
    }
    if configured > sources.len() {
        out.push(format!(
            "sources: {} of {configured} not started",
            configured - sources.len()
        ));
    }
    for s in sources.iter().filter(|s| !s.connected) {
        let state = if s.kind == "serial" {
            "not open"
        } else {
            "not connected"
        };
        out.push(format!("source {:?} ({}): {state}", s.name, s.kind));
    }
    if !upstream_connected {
        out.push("upstream: not connected".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(kind: &'static str, name: &str, connected: bool) -> SourceState {
        SourceState {
            kind,
            name: name.into(),
            connected,
        }
    }

    #[test]
    fn ready_needs_every_source_and_upstream() {
        let up = [
            source("mqtt", "plant", true),
            source("serial", "ttyA", true),
        ];
        assert!(not_ready(&up, 2, true, false).is_empty());
        assert_eq!(not_ready(&up, 2, false, false), ["upstream: not connected"]);
        let down = [
            source("mqtt", "plant", false),
            source("serial", "ttyA", false),
        ];
        assert_eq!(
            not_ready(&down, 2, true, false),
            [
                "source \"plant\" (mqtt): not connected",
                "source \"ttyA\" (serial): not open"
            ]
        );
    }

    #[test]
    fn a_source_not_started_yet_or_shutdown_is_not_ready() {
        let up = [source("mqtt", "plant", true)];
        assert_eq!(
            not_ready(&up, 2, true, false),
            ["sources: 1 of 2 not started"]
        );
        assert_eq!(not_ready(&up, 1, true, true), ["shutting down"]);
    }

    fn get(e: &Endpoints, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let r = respond(e, &req);
        let status = r.status();
        let body = futures_body(r);
        (status, body)
    }

    fn futures_body(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn endpoints() -> Endpoints {
        Endpoints {
            metrics: Arc::new(Metrics::new()),
            sources: 0,
            shutdown: CancellationToken::new(),
        }
    }

    #[test]
    fn known_paths_answer_get_and_everything_else_is_refused_and_counted() {
        let e = endpoints();
        let (status, body) = get(&e, Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("# TYPE gateway_upstream_puback_latency_seconds histogram"));
        assert_eq!(get(&e, Method::GET, "/healthz").0, StatusCode::OK);
        assert_eq!(get(&e, Method::HEAD, "/healthz").0, StatusCode::OK);
        assert_eq!(
            get(&e, Method::POST, "/metrics").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(get(&e, Method::GET, "/admin").0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&e, Method::GET, "/metrics/../x").0,
            StatusCode::NOT_FOUND
        );
        let m = &e.metrics;
        assert_eq!(m.http_metrics.get(), 1);
        assert_eq!(m.http_healthz.get(), 2);
        assert_eq!(m.http_method_not_allowed.get(), 1);
        assert_eq!(m.http_not_found.get(), 2);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_unanswered_and_counted() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let endpoints = Endpoints {
            metrics: metrics.clone(),
            sources: 0,
            shutdown: CancellationToken::new(),
        };
        let server = tokio::spawn(serve(listener, endpoints, stop.clone()));
        // Connections that send nothing hold every slot.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(4), extra.read(&mut buf))
            .await
            .expect("closed before the request head times out")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert_eq!(metrics.http_connections_refused.get(), 1);
        // Stopping closes the idle ones too.
        stop.cancel();
        server.await.unwrap();
        assert_eq!(metrics.http_connection_errors.get(), 0);
    }

    #[test]
    fn readyz_says_what_is_not_ready() {
        let e = endpoints();
        let (status, body) = get(&e, Method::GET, "/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "upstream: not connected\n");
        e.metrics.upstream_connected.set(1);
        assert_eq!(
            get(&e, Method::GET, "/readyz"),
            (StatusCode::OK, "ready\n".into())
        );
        assert_eq!(e.metrics.http_not_ready.get(), 1);
        assert_eq!(e.metrics.http_ready.get(), 1);
    }
}
