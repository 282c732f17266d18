//! Webhooks: the node tells the application's backend when rooms fill and
//! empty and when members come and go, in signed batches POSTed to
//! `webhook_url`.
//!
//! Events wait in a queue bounded in count and bytes (`webhook_queue`,
//! `webhook_queue_bytes`); one task sends them in batches of at most
//! `webhook_batch`, each retried with backoff until it is taken (any 2xx)
//! or `webhook_retries` tries failed. Delivery to clients never waits on
//! it: an event that finds the queue full, and a batch that failed every
//! try, are counted and logged, not held. At least once: a batch whose
//! answer was lost is sent again; each event's `id` lets the backend drop
//! the second copy.

use crate::hooks::HttpClient;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use prometheus::IntCounterVec;
use serde::Serialize;
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// The room's first member (cluster-wide; in `local`, on this node).
    RoomOccupied,
    /// The room's last member left.
    RoomVacated,
    MemberJoined,
    MemberLeft,
}

/// One event, as the backend receives it.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) room: String,
    pub(crate) user: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) ts: u64,
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

/// The webhook settings of one node.
pub(crate) struct WebhookSettings<'a> {
    pub(crate) url: &'a str,
    pub(crate) secret: Option<&'a str>,
    pub(crate) batch: usize,
    pub(crate) queue: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
}

/// Counts events by outcome: `sent`, `dropped` (the queue was full),
/// `failed` (every try of their batch failed).
#[derive(Clone)]
pub(crate) struct WebhookMetrics {
    pub(crate) events: IntCounterVec,
}

/// Hands events to the sending task; never waits.
pub(crate) struct Webhooks {
    tx: mpsc::Sender<Event>,
    /// Bytes of the events queued (each counted as its JSON's size).
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    prefix: String,
    next: AtomicU64,
    metrics: WebhookMetrics,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Webhooks {
    /// Starts the sending task (it ends with `stop`, after one last try of
    /// what is queued).
    pub(crate) fn start(
        node: &str,
        s: &WebhookSettings<'_>,
        metrics: WebhookMetrics,
        stop: CancellationToken,
    ) -> Result<Webhooks, String> {
        let uri: http::Uri = s
            .url
            .parse()
            .map_err(|e| format!("`{}` is not a URL: {e}", s.url))?;
        let client = crate::hooks::http_client(s.url.starts_with("https:"))?;
        let (tx, rx) = mpsc::channel(s.queue.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let sender = Sender {
            uri,
            client,
            secret: s.secret.map(|k| k.as_bytes().to_vec()),
            batch: s.batch.max(1),
            timeout: s.timeout,
            retries: s.retries.max(1),
            queued_bytes: queued_bytes.clone(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(sender.run(rx, stop));
        Ok(Webhooks {
            task: std::sync::Mutex::new(Some(task)),
            tx,
            queued_bytes,
            max_bytes: s.queue_bytes,
            prefix: format!("{node}-{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(0),
            metrics,
        })
    }

    /// Waits for the last try of what was queued when the node stopped.
    pub(crate) async fn finish(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Queues an event about `room` and `user`; drops it (counted, logged)
    /// when the queue is full.
    pub(crate) fn send(&self, kind: Kind, room: &str, user: &str) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            id: format!("{}-{n}", self.prefix),
            kind,
            room: room.to_owned(),
            user: user.to_owned(),
            ts: turnout_proto::now_ms(),
        };
        let size = size_of(&event);
        let over_bytes =
            self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > self.max_bytes;
        if over_bytes || self.tx.try_send(event).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.metrics.events.with_label_values(&["dropped"]).inc();
            tracing::warn!(
                ?kind,
                room,
                "webhook queue full (webhook_queue, webhook_queue_bytes): event dropped"
            );
        }
    }
}

/// An event's size in the queue: its JSON, about.
fn size_of(e: &Event) -> usize {
    e.id.len() + e.room.len() + e.user.len() + 64
}

struct Sender {
    uri: http::Uri,
    client: HttpClient,
    secret: Option<Vec<u8>>,
    batch: usize,
    timeout: Duration,
    retries: u32,
    queued_bytes: Arc<AtomicUsize>,
    metrics: WebhookMetrics,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Event>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            let got = tokio::select! {
                n = rx.recv_many(&mut batch, self.batch) => n,
                _ = stop.cancelled() => {
                    // What is queued gets one try on the way out.
                    rx.close();
                    while rx.recv_many(&mut batch, self.batch).await > 0 {
                        self.release(&batch);
                        self.deliver(&batch, 1, &stop).await;
                        batch.clear();
                    }
                    return;
                }
            };
            if got == 0 {
                return;
            }
            self.release(&batch);
            self.deliver(&batch, self.retries, &stop).await;
            batch.clear();
        }
    }

    fn release(&self, batch: &[Event]) {
        let bytes: usize = batch.iter().map(size_of).sum();
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Sends one batch, trying up to `tries` times with backoff; a node
    /// that stops gives up its retries (what is queued then gets its one
    /// try).
    async fn deliver(&self, batch: &[Event], tries: u32, stop: &CancellationToken) {
        let body = match serde_json::to_vec(&Batch { events: batch }) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "webhook batch could not be encoded");
                return;
            }
        };
        let signature = self.secret.as_ref().map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(&body);
            let digest = mac.finalize().into_bytes();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256={hex}")
        });
        let mut backoff = turnout_common::backoff::Backoff::new(
            Duration::from_millis(250),
            Duration::from_secs(30),
        );
        let mut last_error = String::new();
        for attempt in 1..=tries {
            match tokio::time::timeout(self.timeout, self.post(&body, signature.as_deref())).await {
                Ok(Ok(())) => {
                    self.metrics
                        .events
                        .with_label_values(&["sent"])
                        .inc_by(batch.len() as u64);
                    return;
                }
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = format!("no answer within {:?}", self.timeout),
            }
            if attempt < tries {
                tracing::debug!(attempt, error = %last_error, "webhook batch failed; trying again");
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
        self.metrics
            .events
            .with_label_values(&["failed"])
            .inc_by(batch.len() as u64);
        tracing::error!(
            events = batch.len(),
            tries,
            error = %last_error,
            first = %batch.first().map(|e| e.id.as_str()).unwrap_or(""),
            "webhook batch not taken after every try; its events are lost to the backend"
        );
    }

    async fn post(&self, body: &Bytes, signature: Option<&str>) -> Result<(), String> {
        let mut req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("turnout/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(sig) = signature {
            req = req.header("X-Turnout-Signature", sig);
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read (a little of) the body, so the connection goes back to the
        // pool.
        let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            64 * 1024,
        ))
        .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}
