//! The clock of the statistics and the registry: microseconds on the
//! monotonic clock, as one integer. A transaction reads it twice, once
//! when a server is linked and once when it is given back, and each event
//! shares its one reading among everything that records it (the query's
//! and transaction's times, the registry's request and idle times).
//! `std::time::Instant` would cost a conversion per reading and per
//! subtraction; here a subtraction is an integer one.

use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds on `CLOCK_MONOTONIC` (the clock
/// `std::time::Instant` reads), which does not jump when the wall clock
/// is set. Never zero, so an `Option<Moment>` takes no more room than a
/// `Moment`: the relay keeps two in every linked client's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(NonZeroU64);

impl Moment {
    /// Now.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec, and CLOCK_MONOTONIC
        // exists on every Linux: the call cannot fail or write elsewhere.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let micros = u64::try_from(ts.tv_nsec / 1_000).unwrap_or(0);
        Moment::from_micros(secs * 1_000_000 + micros)
    }

    /// A moment from microseconds as [`as_micros`](Self::as_micros) gave
    /// them (to keep one in an atomic). Zero, which the clock does not
    /// read past its first microsecond, is taken as one.
    pub fn from_micros(micros: u64) -> Self {
        Moment(NonZeroU64::new(micros).unwrap_or(NonZeroU64::MIN))
    }

    /// Microseconds on the monotonic clock.
    pub fn as_micros(self) -> u64 {
        self.0.get()
    }

    /// `later` after this moment (saturating, far in the future).
    pub fn later_by(self, later: Duration) -> Moment {
        let micros = u64::try_from(later.as_micros()).unwrap_or(u64::MAX);
        Moment::from_micros(self.as_micros().saturating_add(micros))
    }

    /// The time from `earlier` to this moment, zero if `earlier` is later.
    pub fn since(self, earlier: Moment) -> Duration {
        Duration::from_micros(self.as_micros().saturating_sub(earlier.as_micros()))
    }

    /// The same moment on the wall clock, in microseconds since the Unix
    /// epoch, as `SHOW` prints times: the wall clock now, less the time
    /// since. Read afresh each time, so a wall clock set since (NTP's
    /// first correction, a suspend) moves every time shown with it.
    pub fn wall_micros(self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        wall.saturating_sub(Moment::now().as_micros().saturating_sub(self.as_micros()))
    }
}

/// The time of one event, read from the clock only if something needs it,
/// and then once for everything that records it. It also remembers the
/// last time read for an earlier event, for what needs a recent time but
/// not an exact one.
#[derive(Debug, Default)]
pub struct EventTime {
    now: Option<Moment>,
    before: Option<Moment>,
}

impl EventTime {
    /// An event whose time was already read.
    pub fn at(moment: Moment) -> Self {
        EventTime {
            now: Some(moment),
            before: None,
        }
    }

    /// The event's time, read from the clock the first time it is asked.
    pub fn get(&mut self) -> Moment {
        *self.now.get_or_insert_with(Moment::now)
    }

    /// Moves on to the next event, whose time is read afresh.
    pub fn next(&mut self) {
        self.before = self.now.take().or(self.before);
    }

    /// The time read for this event or, if none was, for the latest event
    /// that read one; the clock only if no event did.
    pub fn latest(&mut self) -> Moment {
        match self.now.or(self.before) {
            Some(moment) => moment,
            None => self.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_follow_the_monotonic_clock_and_the_wall_clock() {
        let before = std::time::Instant::now();
        let first = Moment::now();
        std::thread::sleep(Duration::from_millis(20));
        let second = Moment::now();
        let elapsed = before.elapsed();
        let between = second.since(first);
        assert!(between >= Duration::from_millis(20), "{between:?}");
        // Each reading is cut to whole microseconds.
        assert!(
            between <= elapsed + Duration::from_micros(1),
            "{between:?} > {elapsed:?}"
        );
        assert_eq!(first.since(second), Duration::ZERO);

        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let shown = second.wall_micros();
        assert!(shown.abs_diff(wall) < 1_000_000, "{shown} vs {wall}");
        let earlier = Moment::from_micros(second.as_micros() - 5_000_000).wall_micros();
        assert!(
            (shown - earlier).abs_diff(5_000_000) < 1_000_000,
            "{earlier} vs {shown}"
        );
    }

    #[test]
    fn an_unread_moment_takes_no_room() {
        assert_eq!(size_of::<Option<Moment>>(), size_of::<u64>());
        assert_eq!(Moment::from_micros(0), Moment::from_micros(1));
    }

    #[test]
    fn an_event_reads_the_clock_once() {
        let mut event = EventTime::default();
        let first = event.get();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(event.get(), first);
        let seeded = Moment::from_micros(42);
        assert_eq!(EventTime::at(seeded).get(), seeded);
    }

    #[test]
    fn the_next_event_reads_afresh_and_the_latest_reading_is_kept() {
        let mut event = EventTime::at(Moment::from_micros(42));
        event.next();
        assert_eq!(event.latest(), Moment::from_micros(42));
        let fresh = event.get();
        assert!(fresh > Moment::from_micros(42));
        event.next();
        event.next();
        assert_eq!(event.latest(), fresh);

        let mut unread = EventTime::default();
        let read = unread.latest();
        assert_eq!(unread.get(), read);
    }
}
