//! The pool: which channel a call gets, and when a channel is opened.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::transport::Endpoint;

use crate::channel::{PooledChannel, Slot};
use crate::config::{Builder, Settings};
use crate::{maintenance, Error};

/// A pool of gRPC channels to one service (one or several endpoints).
///
/// A channel is one HTTP/2 connection that carries many calls at once, so
/// the pool does not hand channels out exclusively, as a database pool
/// does its connections: [`channel`](Self::channel) leases the channel
/// with the fewest calls in flight, and opens another (up to
/// `max_channels`) only when every open one has `streams_per_channel`
/// calls in flight. That is what Google's gRPC libraries for Go and Java
/// do with their channel pools, and what one tonic `Channel` cannot do:
/// it keeps a single connection, so one connection's stream limit and one
/// core's worth of HTTP/2 framing cap its throughput.
///
/// Channels idle for `idle_timeout` beyond `min_channels` are closed, the
/// pool is topped up to `min_channels`, and with a health check configured
/// idle channels are asked `grpc.health.v1.Health/Check`, by a
/// maintenance task that lives as long as the pool. A channel whose call
/// fails at the transport (refused, reset, keepalive unanswered) or whose
/// health check fails is replaced.
///
/// Cloning the pool is cheap and shares it.
#[derive(Debug, Clone)]
pub struct GrpcPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    endpoints: Vec<(String, Endpoint)>,
    pub(crate) settings: Settings,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// One channel opens at a time: calls that find every channel full
    /// wait for it rather than each opening one.
    opening: tokio::sync::Mutex<()>,
    next_endpoint: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    leases: AtomicU64,
    opened: AtomicU64,
    closed_idle: AtomicU64,
    replaced: AtomicU64,
    connect_failures: AtomicU64,
}

/// A pool's state, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// Each open channel.
    pub channels: Vec<ChannelStatus>,
    /// Leases taken since the pool started.
    pub leases: u64,
    /// Channels opened since the pool started.
    pub opened: u64,
    /// Channels closed for being idle.
    pub closed_idle: u64,
    /// Channels taken out after a transport failure or a failed health
    /// check.
    pub replaced: u64,
    /// Attempts to open a channel that failed.
    pub connect_failures: u64,
}

impl GrpcStatus {
    /// Calls in flight over all channels.
    pub fn in_flight(&self) -> usize {
        self.channels.iter().map(|c| c.in_flight).sum()
    }
}

/// One open channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStatus {
    /// The pool's id for it.
    pub id: u64,
    /// The endpoint it is connected to.
    pub endpoint: String,
    /// Leases (calls) on it now.
    pub in_flight: usize,
}

impl GrpcPool {
    /// Starts building a pool of channels to `endpoints` (`http://host:port`;
    /// new channels go to them in turn).
    pub fn builder<I, S>(endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder::new(endpoints.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn start(endpoints: Vec<(String, Endpoint)>, settings: Settings) -> Self {
        let inner = Arc::new(Inner {
            endpoints,
            settings,
            slots: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            next_endpoint: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        });
        inner.top_up().await;
        tokio::spawn(maintenance::run(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Leases the open channel with the fewest calls in flight, opening a
    /// new one first when every open channel has `streams_per_channel`
    /// in flight and fewer than `max_channels` are open. When a new
    /// channel cannot connect but others are open, the least loaded of
    /// those is leased.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when no channel is open and none can be opened,
    /// [`Error::Closed`] after [`close`](Self::close).
    pub async fn channel(&self) -> Result<PooledChannel, Error> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(channel) = inner.lease(Choice::WithRoom) {
            return Ok(channel);
        }
        let _opening = inner.opening.lock().await;
        // Someone may have opened one, or finished calls, meanwhile.
        if let Some(channel) = inner.lease(Choice::WithRoom) {
            return Ok(channel);
        }
        if inner.open_count() >= inner.settings.max_channels {
            if let Some(channel) = inner.lease(Choice::LeastLoaded) {
                return Ok(channel);
            }
        }
        match inner.open().await {
            Ok(slot) => Ok(inner.add_and_lease(slot)),
            Err(err) => match inner.lease(Choice::LeastLoaded) {
                Some(channel) => Ok(channel),
                None => Err(err),
            },
        }
    }

    /// The pool's channels and counters now.
    pub fn status(&self) -> GrpcStatus {
        let slots = self.inner.slots.lock();
        let c = &self.inner.counters;
        GrpcStatus {
            channels: slots
                .iter()
                .map(|slot| ChannelStatus {
                    id: slot.id,
                    endpoint: slot.endpoint.clone(),
                    in_flight: slot.in_flight(),
                })
                .collect(),
            leases: c.leases.load(Ordering::Relaxed),
            opened: c.opened.load(Ordering::Relaxed),
            closed_idle: c.closed_idle.load(Ordering::Relaxed),
            replaced: c.replaced.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
        }
    }

    /// The settings the pool runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Closes the pool: no new leases; each channel closes once the calls
    /// on it end. The maintenance task stops.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.slots.lock().clear();
    }
}

/// Which channel [`Inner::lease`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The least loaded, if it is under the watermark.
    WithRoom,
    /// The least loaded, whatever its load.
    LeastLoaded,
}

impl Inner {
    /// Leases the least-loaded usable channel (dropping broken ones from
    /// the set on the way), if `choice` allows it.
    fn lease(&self, choice: Choice) -> Option<PooledChannel> {
        let mut slots = self.slots.lock();
        self.drop_broken(&mut slots);
        let best = slots.iter().min_by_key(|slot| slot.in_flight())?;
        if choice == Choice::WithRoom && best.in_flight() >= self.settings.streams_per_channel {
            return None;
        }
        self.counters.leases.fetch_add(1, Ordering::Relaxed);
        Some(best.lease())
    }

    fn add_and_lease(&self, slot: Arc<Slot>) -> PooledChannel {
        let channel = slot.lease();
        self.slots.lock().push(slot);
        self.counters.leases.fetch_add(1, Ordering::Relaxed);
        channel
    }

    /// Usable channels open now.
    pub(crate) fn open_count(&self) -> usize {
        self.slots.lock().iter().filter(|s| !s.is_broken()).count()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Connects a new channel to the next endpoint in turn.
    async fn open(&self) -> Result<Arc<Slot>, Error> {
        let turn = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        let (address, endpoint) = &self.endpoints[turn % self.endpoints.len()];
        match endpoint.connect().await {
            Ok(channel) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.counters.opened.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(channel = id, endpoint = %address, "gRPC channel opened");
                Ok(Arc::new(Slot::new(id, address.clone(), channel)))
            }
            Err(source) => {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %address, error = %source, "cannot open a gRPC channel");
                Err(Error::Connect {
                    endpoint: address.clone(),
                    source,
                })
            }
        }
    }

    /// Opens channels until `min_channels` are open; stops at the first
    /// that cannot connect (the next round tries again).
    pub(crate) async fn top_up(&self) {
        let _opening = self.opening.lock().await;
        while !self.is_closed() && self.open_count() < self.settings.min_channels {
            match self.open().await {
                Ok(slot) => self.slots.lock().push(slot),
                Err(_) => return,
            }
        }
    }

    /// Closes channels idle for `idle_timeout`, the longest idle first,
    /// keeping `min_channels`.
    pub(crate) fn close_idle(&self) {
        let mut slots = self.slots.lock();
        let mut spare = slots.len().saturating_sub(self.settings.min_channels);
        let limit = self.settings.idle_timeout;
        slots.retain(|slot| {
            if spare > 0 && slot.idle_for(limit) {
                spare -= 1;
                tracing::debug!(channel = slot.id, "closing idle gRPC channel");
                self.counters.closed_idle.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
    }

    /// The idle channels, for the health check.
    pub(crate) fn idle_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .iter()
            .filter(|s| s.in_flight() == 0 && !s.is_broken())
            .cloned()
            .collect()
    }

    /// Drops the channels marked broken.
    pub(crate) fn sweep_broken(&self) {
        self.drop_broken(&mut self.slots.lock());
    }

    fn drop_broken(&self, slots: &mut Vec<Arc<Slot>>) {
        let before = slots.len();
        slots.retain(|slot| !slot.is_broken());
        let dropped = before - slots.len();
        self.counters
            .replaced
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
}
