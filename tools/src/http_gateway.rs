//! The HTTP gateway every group node serves on its `http_addr`
//! ([`Gateway`], [`router`], [`serve`]).
//!
//! ```text
//!   GET|PUT|DELETE /kvs/keys/{key}       one key, through a pooled Clerk
//!   GET /kvs/scan?start=&end=&limit=     a key range, in key order
//!   GET /metrics                         Prometheus text (crate::metrics)
//!   GET /status                          this replica, as JSON
//! ```
//!
//! Any node accepts any key: requests go through a shardkv [`Clerk`], which
//! finds the group serving the key through the controllers, exactly as
//! `kvctl` does, so the answer is the cluster's, not this replica's.
//!
//! # Contract
//!
//! Bodies are JSON in the shapes of `kvctl -o json`: `{"ok":true,"value":
//! "v"}` (or `null` with 404 for an absent key), `{"ok":true}` for a put or
//! delete, `{"ok":true,"items":[["k","v"],...]}` for a scan, and
//! `{"ok":false,"error":"TEXT","indeterminate":BOOL}` for every failure.
//! Statuses: 200; 404 absent key (or unknown path); 400 bad input (key too
//! long or empty, bad percent-encoding, bad scan parameter); 413 a value
//! longer than the node's `value_bytes_max`, refused from its
//! `Content-Length` before the body is read (a body without one is read up
//! to the limit only); 503 unavailable (nothing happened, including a
//! gateway with every clerk busy); 504 indeterminate (a write that may
//! still take effect). Values are bytes: JSON shows them as UTF-8 with
//! invalid sequences replaced, and `GET` with `Accept:
//! application/octet-stream` answers the raw bytes; `PUT` stores its raw
//! body. Keys in the path are percent-decoded and must be UTF-8; in the
//! scan query, `+` also means a space (form encoding).
//!
//! A scan stops at `limit` items (default 1000, at most
//! `shardkv::limits::SCAN_ITEMS_CEILING`) or once its items reach the
//! node's `scan_bytes_max`; in the second case the reply carries `"next"`,
//! the key to continue from.
//!
//! # Concurrency
//!
//! A clerk runs one operation at a time (`&mut`), so the gateway keeps a
//! pool of at most [`GatewayOptions::clerks_max`] of them, each with its own
//! client id; a request waits for a free one, and at most
//! [`GatewayOptions::waiting_max`] requests wait at once: beyond that the
//! answer is 503 at once. A waiting request that goes away (its client hung
//! up) gives its waiting place back when its future is dropped.
//!
//! One time limit, [`GatewayOptions::request_timeout`], bounds the whole
//! request: the wait for a clerk and the operation together. Each operation
//! runs in its own task, so neither an HTTP client that hangs up nor the
//! request's time limit cuts a clerk's operation short: the answer goes out
//! at the limit (503 for a read, 504 for a write, which may still take
//! effect), while the operation finishes within the clerk's own deadline and
//! the clerk returns to the pool in a consistent state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use paxos_log::NetLimits;
use serde_json::{json, Value};
use shardkv::limits::SCAN_ITEMS_CEILING;
use shardkv::stats::ReplicaProbe;
use shardkv::{Clerk, ClerkError, KvError, Limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// The clock tokio's timers run on, as deadlines are handed to them.
use tokio::time::Instant;

use crate::client::{clerk_options, lossy};
use crate::metrics::NodeMetrics;

/// Path prefix of the single-key endpoints.
const KEYS_PREFIX: &str = "/kvs/keys/";
/// Items a scan returns when the query does not say.
pub const SCAN_LIMIT_DEFAULT: usize = 1000;
/// Content type of `/metrics` (the Prometheus text format, version 0.0.4).
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Client addresses of the controller replicas (where clerks find the
    /// groups).
    pub controllers: Vec<SocketAddr>,
    /// The node's size limits: keys and values are checked against them
    /// before any network call; a scan reply stops at `scan_bytes_max`.
    pub limits: Limits,
    /// Connections to the cluster (with its access key).
    pub net: NetLimits,
    /// Most clerks, hence most operations in flight at once.
    pub clerks_max: usize,
    /// Most requests waiting for a clerk; more are refused with 503.
    pub waiting_max: usize,
    /// How long one request may take in all: the wait for a free clerk and
    /// the operation, retries included (also each clerk's own deadline).
    /// Must stay below the groups' `request_max_age_ms`.
    pub request_timeout: Duration,
}

impl GatewayOptions {
    /// Defaults: 8 clerks, 64 waiting requests, 10 s per operation.
    pub fn new(controllers: Vec<SocketAddr>, limits: Limits) -> GatewayOptions {
        GatewayOptions {
            controllers,
            limits,
            net: NetLimits::default(),
            clerks_max: 8,
            waiting_max: 64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The HTTP address could not be bound.
    #[error(
        "cannot listen for HTTP on {addr} (http_addr): {source}; free the port or choose \
         another http_addr"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("serving HTTP on {addr}: {source}")]
    Serve {
        /// The address (or what is known of it).
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Binds the gateway's listener (before the node reports itself ready,
/// so a taken port fails the start).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, GatewayError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

/// Serves `gateway` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish (connections stop being kept alive).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "the HTTP listener".to_string(), |addr| addr.to_string());
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| GatewayError::Serve { addr, source })
}

/// The routes of a gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/kvs/keys/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route(
            "/kvs/keys/",
            get(empty_key).put(empty_key).delete(empty_key),
        )
        .route("/kvs/scan", get(scan))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .fallback(unknown_path)
        .with_state(gateway)
}

/// What the handlers share: the clerk pool, the node's metrics and a view
/// of its replica.
#[derive(Debug)]
pub struct Gateway {
    name: String,
    options: GatewayOptions,
    pool: Arc<ClerkPool>,
    metrics: Arc<NodeMetrics>,
    probe: ReplicaProbe,
}

impl Gateway {
    /// A gateway for the node `name`, whose replica is `probe` and whose
    /// metrics (which the gateway's requests are counted in) are `metrics`.
    pub fn new(
        name: String,
        options: GatewayOptions,
        metrics: Arc<NodeMetrics>,
        probe: ReplicaProbe,
    ) -> Gateway {
        let pool = Arc::new(ClerkPool::new(&options));
        Gateway {
            name,
            options,
            pool,
            metrics,
            probe,
        }
    }

    /// Runs `request` on a pooled clerk.
    async fn run(&self, request: Request) -> Result<Answer, Failure> {
        self.pool.run(request).await
    }

    /// Records a finished request in the node's metrics and builds its
    /// response.
    fn finish(&self, op: &str, started: Instant, result: Result<Response, Failure>) -> Response {
        let (outcome, response) = match result {
            Ok(response) => {
                let outcome = if response.status() == StatusCode::NOT_FOUND {
                    "not_found"
                } else {
                    "ok"
                };
                (outcome, response)
            }
            Err(failure) => (failure.outcome, failure.into_response()),
        };
        self.metrics.observe_http(op, outcome, started.elapsed());
        response
    }

    fn key_from_path(&self, uri: &Uri) -> Result<Vec<u8>, Failure> {
        let raw = uri.path().strip_prefix(KEYS_PREFIX).unwrap_or_default();
        let key = percent_decode(raw, false)
            .map_err(|reason| Failure::bad_request(format!("the key in the path: {reason}")))?;
        if key.is_empty() {
            return Err(empty_key_failure());
        }
        self.check_key("the key", &key)?;
        Ok(key)
    }

    fn check_key(&self, what: &str, key: &[u8]) -> Result<(), Failure> {
        let max = self.options.limits.key_bytes_max;
        if key.len() > max {
            return Err(Failure::bad_request(format!(
                "{what} is {} bytes long; at most {max} are allowed (key_bytes_max)",
                key.len()
            )));
        }
        Ok(())
    }
}

/// Waits for an operation's task until `deadline`. Past it the task goes on
/// alone (dropping the handle detaches it): its clerk finishes the
/// operation within its own deadline and returns to the pool, while the
/// client hears now that the outcome is unknown (a `write`) or that the
/// read did not come back in time.
async fn await_operation(
    task: tokio::task::JoinHandle<Result<Answer, ClerkError>>,
    deadline: Instant,
    write: bool,
    timeout: Duration,
) -> Result<Answer, Failure> {
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result.map_err(|err| Failure::from_clerk(&err)),
        Ok(Err(cause)) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            format!("the operation's task failed: {cause}"),
            true,
        )),
        Err(_elapsed) if write => Err(Failure::from_clerk(&ClerkError::Indeterminate(format!(
            "no definite answer within the gateway's {} ms per request (waiting for a clerk \
             included); the write may have taken effect",
            timeout.as_millis()
        )))),
        Err(_elapsed) => Err(Failure::from_clerk(&ClerkError::Unavailable(format!(
            "no answer within the gateway's {} ms per request (waiting for a clerk \
             included); retry later",
            timeout.as_millis()
        )))),
    }
}

/// One operation for a clerk.
#[derive(Debug)]
enum Request {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        bytes_max: usize,
    },
}

impl Request {
    /// Whether the operation changes the store (so an unknown outcome is
    /// indeterminate rather than merely unavailable).
    fn is_write(&self) -> bool {
        matches!(self, Request::Put(..) | Request::Delete(_))
    }
}

/// What a clerk answered.
#[derive(Debug)]
enum Answer {
    Value(Option<Vec<u8>>),
    Done,
    Items {
        items: Vec<(Vec<u8>, Vec<u8>)>,
        /// Where to continue, when the reply stopped at the byte budget.
        next: Option<Vec<u8>>,
    },
}

async fn execute(clerk: &mut Clerk, request: Request) -> Result<Answer, ClerkError> {
    match request {
        Request::Get(key) => clerk.get(&key).await.map(Answer::Value),
        Request::Put(key, value) => clerk.put(&key, &value).await.map(|()| Answer::Done),
        Request::Delete(key) => clerk.delete(&key).await.map(|()| Answer::Done),
        Request::Scan {
            start,
            end,
            limit,
            bytes_max,
        } => {
            // Bounded by bytes too, so one HTTP reply stays bounded
            // whatever the limit.
            let page = clerk
                .scan_page(&start, end.as_deref(), limit, bytes_max)
                .await?;
            Ok(Answer::Items {
                items: page.items,
                next: page.next,
            })
        }
    }
}

/// A failed request: its status, its metrics outcome and its JSON error.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    outcome: &'static str,
    message: String,
    indeterminate: bool,
}

impl Failure {
    fn new(
        status: StatusCode,
        outcome: &'static str,
        message: String,
        indeterminate: bool,
    ) -> Failure {
        Failure {
            status,
            outcome,
            message,
            indeterminate,
        }
    }

    /// 503: nothing happened because every clerk stayed busy.
    fn busy(message: String) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message, false)
    }

    fn bad_request(message: String) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message, false)
    }

    fn too_large(message: String) -> Failure {
        Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message, false)
    }

    fn from_clerk(err: &ClerkError) -> Failure {
        let message = err.to_string();
        match err {
            ClerkError::Indeterminate(_) => {
                Failure::new(StatusCode::GATEWAY_TIMEOUT, "indeterminate", message, true)
            }
            // A node whose own access key the cluster refuses: the node's
            // configuration is wrong, not the request.
            ClerkError::Unavailable(_) | ClerkError::Denied(_) => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                false,
            ),
            ClerkError::Refused(KvError::ValueTooLarge { .. }) => Failure::too_large(message),
            ClerkError::Refused(
                KvError::KeyTooLarge { .. } | KvError::EmptyRange | KvError::Malformed { .. },
            ) => Failure::bad_request(message),
            // Routing and session refusals: the request did not happen and
            // may succeed later.
            ClerkError::Refused(_) => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                false,
            ),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({
            "ok": false,
            "error": self.message,
            "indeterminate": self.indeterminate,
        });
        (self.status, Json(body)).into_response()
    }
}

async fn get_key(State(gateway): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let result = async {
        let key = gateway.key_from_path(&uri)?;
        let raw = wants_raw(&headers);
        match gateway.run(Request::Get(key)).await? {
            Answer::Value(Some(value)) if raw => Ok((
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                value,
            )
                .into_response()),
            Answer::Value(Some(value)) => {
                Ok(Json(json!({"ok": true, "value": lossy(&value)})).into_response())
            }
            Answer::Value(None) => Ok((
                StatusCode::NOT_FOUND,
                Json(json!({"ok": true, "value": null})),
            )
                .into_response()),
            other => Err(unexpected(&other)),
        }
    }
    .await;
    gateway.finish("get", started, result)
}

async fn put_key(
    State(gateway): State<Arc<Gateway>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        let key = gateway.key_from_path(&uri)?;
        let value = read_body(&headers, body, gateway.options.limits.value_bytes_max).await?;
        match gateway.run(Request::Put(key, value)).await? {
            Answer::Done => Ok(Json(json!({"ok": true})).into_response()),
            other => Err(unexpected(&other)),
        }
    }
    .await;
    gateway.finish("put", started, result)
}

async fn delete_key(State(gateway): State<Arc<Gateway>>, uri: Uri) -> Response {
    let started = Instant::now();
    let result = async {
        let key = gateway.key_from_path(&uri)?;
        match gateway.run(Request::Delete(key)).await? {
            Answer::Done => Ok(Json(json!({"ok": true})).into_response()),
            other => Err(unexpected(&other)),
        }
    }
    .await;
    gateway.finish("delete", started, result)
}

async fn empty_key() -> Response {
    empty_key_failure().into_response()
}

fn empty_key_failure() -> Failure {
    Failure::bad_request(
        "the key is empty: put the percent-encoded key after /kvs/keys/".to_string(),
    )
}

async fn scan(State(gateway): State<Arc<Gateway>>, uri: Uri) -> Response {
    let started = Instant::now();
    let result = async {
        let query = ScanQuery::parse(uri.query().unwrap_or_default())?;
        gateway.check_key("start", &query.start)?;
        if let Some(end) = &query.end {
            gateway.check_key("end", end)?;
        }
        let request = Request::Scan {
            start: query.start,
            end: query.end,
            limit: query.limit,
            bytes_max: gateway.options.limits.scan_bytes_max,
        };
        match gateway.run(request).await? {
            Answer::Items { items, next } => {
                let pairs: Vec<[String; 2]> =
                    items.iter().map(|(k, v)| [lossy(k), lossy(v)]).collect();
                let mut body = json!({"ok": true, "items": pairs});
                if let (Some(next), Some(object)) = (next, body.as_object_mut()) {
                    object.insert("next".to_string(), Value::String(lossy(&next)));
                }
                Ok(Json(body).into_response())
            }
            other => Err(unexpected(&other)),
        }
    }
    .await;
    gateway.finish("scan", started, result)
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let metrics = Arc::clone(&gateway.metrics);
    // Directory sizes come from the file system: off the async workers.
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(Ok(text)) => (
            [(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE))],
            text,
        )
            .into_response(),
        Ok(Err(err)) => internal_error(err.to_string()),
        Err(cause) => internal_error(format!("the metrics task failed: {cause}")),
    }
}

async fn status(State(gateway): State<Arc<Gateway>>) -> Response {
    let probe = gateway.probe.clone();
    // The status reads the state machine under its lock, which the log's
    // apply thread also takes: off the async workers.
    let status = match tokio::task::spawn_blocking(move || probe.status()).await {
        Ok(status) => status,
        Err(cause) => return internal_error(format!("the status task failed: {cause}")),
    };
    let fields = match serde_json::to_value(&status) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => return internal_error(format!("status is not a JSON object: {other}")),
        Err(err) => return internal_error(format!("encoding the status: {err}")),
    };
    Json(status_body(&gateway.name, fields)).into_response()
}

/// The `/status` body: `ok` first (the contract's `{"ok":...}` shape; the
/// map keeps insertion order), then the node's name, then the replica's
/// fields.
fn status_body(name: &str, fields: serde_json::Map<String, Value>) -> Value {
    let mut body = serde_json::Map::with_capacity(fields.len() + 2);
    body.insert("ok".to_string(), Value::Bool(true));
    body.insert("name".to_string(), Value::String(name.to_string()));
    body.extend(fields);
    Value::Object(body)
}

async fn unknown_path(uri: Uri) -> Response {
    Failure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint: {}; use /kvs/keys/KEY, /kvs/scan, /metrics or /status",
            uri.path()
        ),
        false,
    )
    .into_response()
}

fn internal_error(message: String) -> Response {
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "error", message, false).into_response()
}

fn unexpected(answer: &Answer) -> Failure {
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "error",
        format!("unexpected answer {answer:?}"),
        false,
    )
}

/// Whether the client asked for the raw value.
fn wants_raw(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            range.split(';').next().is_some_and(|media| {
                media
                    .trim()
                    .eq_ignore_ascii_case("application/octet-stream")
            })
        })
}

/// The request body, refused (413) if longer than `max_bytes`: from its
/// declared length before anything is read, else as soon as the bytes
/// read pass the limit.
async fn read_body(headers: &HeaderMap, body: Body, max_bytes: usize) -> Result<Vec<u8>, Failure> {
    let too_large = |len: String| {
        Failure::too_large(format!(
            "the value is {len} bytes long; at most {max_bytes} are allowed (value_bytes_max)"
        ))
    };
    if let Some(declared) = headers.get(CONTENT_LENGTH) {
        let declared = declared
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| Failure::bad_request("Content-Length is not a number".to_string()))?;
        if declared > u64::try_from(max_bytes).unwrap_or(u64::MAX) {
            return Err(too_large(declared.to_string()));
        }
    }
    let mut value = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| Failure::bad_request(format!("reading the request body: {err}")))?;
        if value.len().saturating_add(chunk.len()) > max_bytes {
            return Err(too_large(format!("more than {max_bytes}")));
        }
        value.extend_from_slice(&chunk);
    }
    Ok(value)
}

/// The parameters of `GET /kvs/scan`.
#[derive(Debug, PartialEq, Eq)]
struct ScanQuery {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    limit: usize,
}

impl ScanQuery {
    /// Parses `start=&end=&limit=` (each at most once; an empty `end` is no
    /// end).
    fn parse(query: &str) -> Result<ScanQuery, Failure> {
        let mut start = None;
        let mut end = None;
        let mut limit = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decode(value, true).map_err(|reason| {
                Failure::bad_request(format!("scan parameter {name}: {reason}"))
            })?;
            let slot = match name {
                "start" => &mut start,
                "end" => &mut end,
                "limit" => &mut limit,
                other => {
                    return Err(Failure::bad_request(format!(
                        "unknown scan parameter {other:?}: use start, end and limit"
                    )))
                }
            };
            if slot.replace(decoded).is_some() {
                return Err(Failure::bad_request(format!(
                    "scan parameter {name} is given twice"
                )));
            }
        }
        let limit = match limit {
            None => SCAN_LIMIT_DEFAULT,
            Some(text) => std::str::from_utf8(&text)
                .ok()
                .and_then(|text| text.parse::<usize>().ok())
                .filter(|limit| (1..=SCAN_ITEMS_CEILING).contains(limit))
                .ok_or_else(|| {
                    Failure::bad_request(format!(
                        "limit {:?}: give a whole number from 1 to {SCAN_ITEMS_CEILING}",
                        lossy(&text)
                    ))
                })?,
        };
        Ok(ScanQuery {
            start: start.unwrap_or_default(),
            end: end.filter(|end| !end.is_empty()),
            limit,
        })
    }
}

/// Decodes `%XX` escapes (and, in a query, `+` as a space); the result
/// must be UTF-8.
fn percent_decode(text: &str, plus_is_space: bool) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        format!("bad percent-escape at byte {i}: use %XX with two hex digits")
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    if let Err(err) = std::str::from_utf8(&out) {
        return Err(format!(
            "not UTF-8 after percent-decoding (at byte {})",
            err.valid_up_to()
        ));
    }
    Ok(out)
}

/// A bounded pool of clerks: at most `clerks_max` in use, at most
/// `waiting_max` requests waiting for one.
#[derive(Debug)]
struct ClerkPool {
    idle: Mutex<Vec<Clerk>>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    waiting_max: usize,
    clerks_max: usize,
    controllers: Vec<SocketAddr>,
    net: NetLimits,
    timeout: Duration,
}

impl ClerkPool {
    fn new(options: &GatewayOptions) -> ClerkPool {
        let clerks_max = options.clerks_max.max(1);
        ClerkPool {
            idle: Mutex::new(Vec::with_capacity(clerks_max)),
            permits: Arc::new(Semaphore::new(clerks_max)),
            waiting: AtomicUsize::new(0),
            waiting_max: options.waiting_max,
            clerks_max,
            controllers: options.controllers.clone(),
            net: options.net.clone(),
            timeout: options.request_timeout,
        }
    }

    /// Runs `request` on a pooled clerk, answering within
    /// the pool's `timeout` (the wait for the clerk included).
    async fn run(self: &Arc<Self>, request: Request) -> Result<Answer, Failure> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let mut pooled = self.checkout(deadline).await?;
        if Instant::now() >= deadline {
            // The clerk came too late to try anything: nothing happened.
            return Err(Failure::busy(format!(
                "no free clerk within {} ms ({} operations in flight); retry later",
                timeout.as_millis(),
                self.clerks_max
            )));
        }
        let write = request.is_write();
        let task = tokio::spawn(async move {
            let result = execute(pooled.clerk_mut(), request).await;
            if matches!(
                result,
                Err(ClerkError::Refused(KvError::SessionExpired { .. }))
            ) {
                // The groups forgot this clerk's session: a new client id
                // starts a new one.
                pooled.discard();
            }
            result
        });
        await_operation(task, deadline, write, timeout).await
    }

    /// A clerk of its own for one operation, waiting for one until
    /// `deadline` at most.
    async fn checkout(self: &Arc<Self>, deadline: Instant) -> Result<PooledClerk, Failure> {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let Some(_waiting) = WaitingSlot::take(&self.waiting, self.waiting_max) else {
                    return Err(Failure::busy(format!(
                        "the gateway is busy ({} operations in flight, {} waiting); retry later",
                        self.clerks_max, self.waiting_max
                    )));
                };
                // `_waiting` gives the place back however this ends,
                // including the future being dropped here (client gone).
                let acquired =
                    tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
                        .await;
                match acquired {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; treat it as busy anyway.
                    Ok(Err(_)) | Err(_) => {
                        return Err(Failure::busy(format!(
                            "no free clerk within {} ms ({} operations in flight); retry later",
                            self.timeout.as_millis(),
                            self.clerks_max
                        )))
                    }
                }
            }
        };
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let clerk = idle.unwrap_or_else(|| self.new_clerk());
        Ok(PooledClerk {
            clerk: Some(clerk),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    fn new_clerk(&self) -> Clerk {
        Clerk::new(
            self.controllers.clone(),
            clerk_options(self.timeout, self.net.clone()),
        )
    }
}

/// A place among the requests waiting for a clerk, given back on drop: a
/// handler future dropped mid-wait (its client hung up) must not keep it,
/// or enough hang-ups would leave every later request refused as busy.
struct WaitingSlot<'a> {
    waiting: &'a AtomicUsize,
}

impl<'a> WaitingSlot<'a> {
    /// Takes a place if fewer than `waiting_max` are taken.
    fn take(waiting: &'a AtomicUsize, waiting_max: usize) -> Option<WaitingSlot<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < waiting_max).then_some(now + 1)
            })
            .ok()
            .map(|_| WaitingSlot { waiting })
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        let before = self.waiting.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a waiting place given back twice");
    }
}

/// A clerk taken from the pool; it goes back when dropped (with its
/// permit), unless discarded.
struct PooledClerk {
    clerk: Option<Clerk>,
    pool: Arc<ClerkPool>,
    _permit: OwnedSemaphorePermit,
}

impl PooledClerk {
    fn clerk_mut(&mut self) -> &mut Clerk {
        // Some from checkout until `discard`, which comes after the last
        // use; a fresh clerk would do anyway.
        self.clerk.get_or_insert_with(|| self.pool.new_clerk())
    }

    /// Drops the clerk instead of returning it (the next checkout makes a
    /// fresh one, with a new client id).
    fn discard(&mut self) {
        self.clerk = None;
    }
}

impl Drop for PooledClerk {
    fn drop(&mut self) {
        if let Some(clerk) = self.clerk.take() {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            debug_assert!(
                idle.len() < self.pool.clerks_max,
                "more clerks than permits"
            );
            idle.push(clerk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_utf8_and_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb%20c", false).unwrap(), b"a/b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), b"a b");
        assert_eq!(percent_decode("%C3%A9", false).unwrap(), "é".as_bytes());
        assert!(percent_decode("%zz", false).unwrap_err().contains("byte 0"));
        assert!(percent_decode("ab%4", false).is_err());
        assert!(percent_decode("%FF", false).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn scan_queries_are_checked() {
        let query = ScanQuery::parse("start=a&end=k%2B&limit=5").unwrap();
        assert_eq!(
            query,
            ScanQuery {
                start: b"a".to_vec(),
                end: Some(b"k+".to_vec()),
                limit: 5
            }
        );
        let query = ScanQuery::parse("end=").unwrap();
        assert_eq!(query.end, None);
        assert_eq!(query.limit, SCAN_LIMIT_DEFAULT);
        for bad in [
            "limit=0",
            "limit=x",
            "limit=-1",
            "limit=10001",
            "colour=blue",
            "start=a&start=b",
        ] {
            let failure = ScanQuery::parse(bad).unwrap_err();
            assert_eq!(failure.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_or_without_a_length() {
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
        // The declared length alone decides: the body is never polled.
        let failure = read_body(&declared, Body::from("not read"), 10)
            .await
            .unwrap_err();
        assert_eq!(failure.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(failure.message.contains("11 bytes"), "{}", failure.message);

        let chunks: Vec<Result<&'static str, std::io::Error>> =
            vec![Ok("123456"), Ok("78901"), Ok("never needed")];
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        let failure = read_body(&HeaderMap::new(), streamed, 10)
            .await
            .unwrap_err();
        assert_eq!(failure.status, StatusCode::PAYLOAD_TOO_LARGE);

        let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("12345"), Ok("67890")];
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        let value = read_body(&HeaderMap::new(), streamed, 10).await.unwrap();
        assert_eq!(value, b"1234567890", "exactly the limit is accepted");
    }

    #[test]
    fn raw_values_are_asked_for_with_accept() {
        let mut headers = HeaderMap::new();
        assert!(!wants_raw(&headers));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, Application/Octet-Stream;q=0.5"),
        );
        assert!(wants_raw(&headers));
    }

    /// A pool of one clerk with room for one waiting request, whose
    /// controllers are never contacted (clerks connect lazily).
    fn tiny_pool(timeout: Duration) -> Arc<ClerkPool> {
        tiny_pool_at("127.0.0.1:9".parse().unwrap(), timeout)
    }

    /// A pool of one clerk whose controller is at `controller`.
    fn tiny_pool_at(controller: SocketAddr, timeout: Duration) -> Arc<ClerkPool> {
        let mut options = GatewayOptions::new(vec![controller], Limits::default());
        options.clerks_max = 1;
        options.waiting_max = 1;
        options.request_timeout = timeout;
        Arc::new(ClerkPool::new(&options))
    }

    #[tokio::test]
    async fn a_dropped_waiting_request_gives_its_place_back() {
        let pool = tiny_pool(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        let held = pool.checkout(deadline).await.unwrap();
        // Several hang-ups in a row: each must give its place back, or the
        // second would already be refused as busy (waiting_max is 1).
        for round in 0..3 {
            let mut waiting = Box::pin(pool.checkout(deadline));
            assert!(
                futures::poll!(waiting.as_mut()).is_pending(),
                "round {round}: the only clerk is taken, so the request waits"
            );
            assert_eq!(pool.waiting.load(Ordering::Acquire), 1, "round {round}");
            // A second waiter finds the waiting room full.
            let refused = pool.checkout(deadline).await.err().unwrap();
            assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(refused.message.contains("busy"), "{}", refused.message);
            drop(waiting); // the client hung up
            assert_eq!(pool.waiting.load(Ordering::Acquire), 0, "round {round}");
        }
        // A waiter that is served also gives its place back.
        let mut waiting = Box::pin(pool.checkout(deadline));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(held);
        let served = waiting.await.unwrap();
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
        drop(served);
        assert_eq!(pool.idle.lock().unwrap().len(), 1, "the clerk went back");
    }

    #[tokio::test]
    async fn a_request_that_waits_for_every_clerk_is_refused_as_busy() {
        let pool = tiny_pool(Duration::from_millis(300));
        let held = pool
            .checkout(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        let refused = pool.run(Request::Get(b"k".to_vec())).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.outcome, "busy");
        assert!(!refused.indeterminate);
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
        drop(held);
    }

    #[tokio::test]
    async fn waiting_for_a_clerk_counts_against_the_request_time_limit() {
        // A controller that accepts connections and never answers: left
        // alone, a clerk gives up after its own full deadline, with nothing
        // sent to any group (503, not indeterminate).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(1500);
        for (request, status, indeterminate) in [
            (
                Request::Put(b"k".to_vec(), b"v".to_vec()),
                StatusCode::GATEWAY_TIMEOUT,
                true,
            ),
            (
                Request::Get(b"k".to_vec()),
                StatusCode::SERVICE_UNAVAILABLE,
                false,
            ),
        ] {
            let pool = tiny_pool_at(silent.local_addr().unwrap(), timeout);
            let held = pool
                .checkout(Instant::now() + Duration::from_secs(10))
                .await
                .unwrap();
            // The only clerk comes free a third into the request's time:
            // the operation gets the two thirds left, so the gateway answers
            // at the request's deadline, before the clerk's own deadline
            // (a full `timeout` after the operation began) could.
            let release = tokio::spawn(async move {
                tokio::time::sleep(timeout / 3).await;
                drop(held);
            });
            let failure = pool.run(request).await.unwrap_err();
            assert_eq!(failure.status, status, "{}", failure.message);
            assert_eq!(failure.indeterminate, indeterminate);
            assert!(
                failure
                    .message
                    .contains("the gateway's 1500 ms per request"),
                "{}",
                failure.message
            );
            release.await.unwrap();
            // The operation was not cut short: it ends by its own deadline
            // and its clerk goes back to the pool.
            let back = async {
                while pool.idle.lock().unwrap().is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(20), back)
                .await
                .expect("the clerk returned to the pool");
        }
    }

    #[test]
    fn status_bodies_start_with_ok() {
        let mut fields = serde_json::Map::new();
        fields.insert("gid".to_string(), json!(1));
        fields.insert("role".to_string(), json!("leader"));
        let body = serde_json::to_string(&status_body("g1-n1", fields)).unwrap();
        assert_eq!(
            body,
            r#"{"ok":true,"name":"g1-n1","gid":1,"role":"leader"}"#
        );
    }

    #[test]
    fn clerk_errors_map_to_statuses() {
        let cases = [
            (ClerkError::Indeterminate("x".into()), 504, true),
            (ClerkError::Unavailable("x".into()), 503, false),
            (
                ClerkError::Refused(KvError::KeyTooLarge {
                    len_bytes: 9,
                    max_bytes: 1,
                }),
                400,
                false,
            ),
            (
                ClerkError::Refused(KvError::ValueTooLarge {
                    len_bytes: 9,
                    max_bytes: 1,
                }),
                413,
                false,
            ),
            (
                ClerkError::Refused(KvError::TooManySessions { shard: 1, max: 1 }),
                503,
                false,
            ),
        ];
        for (err, status, indeterminate) in cases {
            let failure = Failure::from_clerk(&err);
            assert_eq!(failure.status.as_u16(), status, "{err}");
            assert_eq!(failure.indeterminate, indeterminate, "{err}");
        }
    }
}
