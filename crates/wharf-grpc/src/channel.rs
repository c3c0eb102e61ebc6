//! A channel as the pool hands it out: a tonic [`Channel`] and a lease on
//! it. The lease is counted from [`GrpcPool::channel`](crate::GrpcPool::channel)
//! until the handle and every clone of it (the clients made from it) are
//! dropped and every response stream that came through it has ended, so
//! a channel's count is the calls in flight on it, streams included.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;
use wharf::shared::{Lease, LeaseHold};

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
    lease: Lease<Channel>,
}

impl PooledChannel {
    pub(crate) fn new(lease: Lease<Channel>) -> Self {
        Self { lease }
    }

    /// The pool's id of the underlying channel (as in
    /// [`GrpcStatus::channels`](crate::GrpcStatus::channels)).
    pub fn id(&self) -> u64 {
        self.lease.hold().id()
    }

    /// The endpoint the channel is connected to.
    pub fn endpoint(&self) -> String {
        self.lease.hold().label().to_owned()
    }

    /// Takes the channel out of the pool, for failures the transport does
    /// not see (a server answering every call with UNAVAILABLE, say).
    pub fn report_broken(&self) {
        self.lease.report_broken();
    }
}

impl Service<http::Request<Body>> for PooledChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let ready = self.lease.conn_mut().poll_ready(cx);
        if let Poll::Ready(Err(_)) = &ready {
            self.lease.report_broken();
        }
        ready
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.lease.conn_mut().call(request);
        let hold = self.lease.hold();
        Box::pin(async move {
            match response.await {
                Ok(response) => Ok(response.map(|body| {
                    Body::new(Counted {
                        inner: body,
                        _hold: hold,
                    })
                })),
                Err(err) => {
                    hold.report_broken();
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
    _hold: LeaseHold,
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
