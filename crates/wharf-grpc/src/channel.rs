//! A channel as the pool hands it out: a tonic [`Channel`] plus a lease on
//! it. The lease is counted from [`GrpcPool::channel`](crate::GrpcPool::channel)
//! until the handle and every clone of it (the clients made from it) are
//! dropped and every response stream that came through it has ended, so
//! a channel's count is the calls in flight on it, streams included.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

/// One channel (one HTTP/2 connection) of the pool.
#[derive(Debug)]
pub(crate) struct Slot {
    /// For logs and [`ChannelStatus`](crate::ChannelStatus).
    pub(crate) id: u64,
    /// The endpoint it is connected to.
    pub(crate) endpoint: String,
    channel: Channel,
    in_flight: AtomicUsize,
    /// A call on it failed at the transport: it is closed and replaced.
    broken: AtomicBool,
    /// When its last lease ended (or when it opened).
    idle_since: Mutex<Instant>,
}

impl Slot {
    pub(crate) fn new(id: u64, endpoint: String, channel: Channel) -> Self {
        Self {
            id,
            endpoint,
            channel,
            in_flight: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// Leases held on it.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Takes it out of service: no new lease, closed once the leases on
    /// it end.
    pub(crate) fn mark_broken(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::warn!(channel = self.id, endpoint = %self.endpoint, "gRPC channel failed; replacing it");
        }
    }

    /// Whether it has been idle (no lease) for at least `limit`.
    pub(crate) fn idle_for(&self, limit: std::time::Duration) -> bool {
        self.in_flight() == 0 && self.idle_since.lock().elapsed() >= limit
    }

    /// The channel itself, for the pool's own health checks.
    pub(crate) fn raw(&self) -> Channel {
        self.channel.clone()
    }

    /// A lease on it. The pool calls this under its lock, so that the
    /// choice of the least-loaded channel and the count move together.
    pub(crate) fn lease(self: &Arc<Self>) -> PooledChannel {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        PooledChannel {
            channel: self.channel.clone(),
            lease: Arc::new(Lease { slot: self.clone() }),
        }
    }
}

/// One lease, shared by a handle's clones and the calls made through them.
#[derive(Debug)]
struct Lease {
    slot: Arc<Slot>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Set on every drop, before the count goes down: a maintenance
        // round that sees no lease also sees when the last one ended.
        *self.slot.idle_since.lock() = Instant::now();
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A channel of the pool, leased for a call (or a few): build any tonic
/// client on it (`MyServiceClient::new(channel)`), and drop the client
/// when the call is done. Cloning it shares the lease.
///
/// A call that fails at the transport (connection refused or reset, a
/// keepalive ping unanswered) takes its channel out of the pool, so the
/// next [`GrpcPool::channel`](crate::GrpcPool::channel) gets a fresh
/// connection; gRPC statuses from the server (NOT_FOUND, UNAVAILABLE sent
/// by the service...) leave it in place.
#[derive(Debug, Clone)]
pub struct PooledChannel {
    channel: Channel,
    lease: Arc<Lease>,
}

impl PooledChannel {
    /// The pool's id of the underlying channel (as in
    /// [`GrpcStatus::channels`](crate::GrpcStatus::channels)).
    pub fn id(&self) -> u64 {
        self.lease.slot.id
    }

    /// The endpoint the channel is connected to.
    pub fn endpoint(&self) -> &str {
        &self.lease.slot.endpoint
    }

    /// Takes the channel out of the pool, for failures the transport does
    /// not see (a server answering every call with UNAVAILABLE, say).
    pub fn report_broken(&self) {
        self.lease.slot.mark_broken();
    }
}

impl Service<http::Request<Body>> for PooledChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let ready = self.channel.poll_ready(cx);
        if let Poll::Ready(Err(_)) = &ready {
            self.lease.slot.mark_broken();
        }
        ready
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.channel.call(request);
        let lease = self.lease.clone();
        Box::pin(async move {
            match response.await {
                Ok(response) => Ok(response.map(|body| {
                    Body::new(Counted {
                        inner: body,
                        _lease: lease,
                    })
                })),
                Err(err) => {
                    lease.slot.mark_broken();
                    Err(err)
                }
            }
        })
    }
}

/// A response body that holds its call's lease until it is dropped: a
/// server stream counts as in flight for as long as it is read.
struct Counted {
    inner: Body,
    _lease: Arc<Lease>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
