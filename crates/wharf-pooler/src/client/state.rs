//! The client protocol state machine: what a client has asked for and not
//! yet been answered, read from message tags alone. It tells the relay when
//! the server owes the client nothing, which is when a server may go back
//! to the pool: no ReadyForQuery owed, no extended-protocol batch open
//! without its Sync, no COPY FROM STDIN in progress.

use crate::stats::{EventTime, Moment, PoolStats};

/// What the client has asked for and not yet been answered.
#[derive(Debug, Default)]
pub(super) struct ProtocolState {
    /// ReadyForQuery messages owed: one per Query, Sync and FunctionCall.
    pending: usize,
    /// Extended-protocol messages sent since the last Sync: the server is
    /// mid-batch and must stay linked.
    batch_open: bool,
    /// The client sent Terminate or closed its socket.
    terminated: bool,
    /// The last Execute or Query (`E` or `Q`) and the Syncs sent after it,
    /// while nothing but Syncs and Flushes has followed: if it turns out to
    /// be a COPY FROM STDIN, the server ignores those Syncs.
    since_command: Option<(u8, usize)>,
    /// The server is in COPY FROM STDIN until the client's CopyDone or
    /// CopyFail; `true` if the COPY came by the extended protocol (the
    /// server then waits for a Sync after it).
    copy_in: Option<bool>,
    /// The server has not yet ended the COPY FROM STDIN (CommandComplete
    /// or ErrorResponse).
    server_copy: bool,
    /// Syncs taken as ignored when a COPY FROM STDIN started that the
    /// server may answer after all: a COPY that fails before the server
    /// reads them answers them. Settled by the relay's probe once the
    /// client is owed nothing else.
    copy_doubtful: usize,
    /// When the query being answered was first sent to a server.
    query_start: Option<Moment>,
    /// When the open transaction's first query was sent to a server.
    xact_start: Option<Moment>,
}

impl ProtocolState {
    /// ReadyForQuery messages the server still owes.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the server owes the client nothing and waits for nothing
    /// from it: no reply owed, no batch without its Sync, no COPY FROM
    /// STDIN under way.
    pub(super) fn owes_nothing(&self) -> bool {
        self.pending == 0 && !self.batch_open && self.copy_in.is_none()
    }

    /// Whether an extended-protocol group was begun and not yet ended by
    /// a Sync.
    pub(super) fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// Whether the server waits for more of an exchange from the client
    /// (the rest of a batch, or of a COPY FROM STDIN).
    pub(super) fn mid_exchange(&self) -> bool {
        self.batch_open || self.copy_in.is_some()
    }

    /// Whether the client sent Terminate or closed its socket.
    pub(super) fn terminated(&self) -> bool {
        self.terminated
    }

    /// Syncs sent since the last simple query, with nothing else between.
    pub(super) fn syncs_after_query(&self) -> usize {
        match self.since_command {
            Some((b'Q', syncs)) => syncs,
            _ => 0,
        }
    }

    /// The client closed its socket.
    pub(super) fn set_terminated(&mut self) {
        self.terminated = true;
    }

    /// The Syncs a failed COPY may still have answered, now to be settled;
    /// none are left doubtful after this.
    pub(super) fn take_copy_doubtful(&mut self) -> usize {
        std::mem::take(&mut self.copy_doubtful)
    }

    /// A message from the client, by tag.
    pub(super) fn note(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => {
                self.pending += 1;
                self.since_command = (tag == b'Q').then_some((tag, 0));
            }
            // The server ignores Sync (and Flush) in COPY FROM STDIN.
            b'S' if self.copy_in.is_some() => {}
            b'S' => {
                self.pending += 1;
                self.batch_open = false;
                if let Some((_, syncs)) = &mut self.since_command {
                    *syncs += 1;
                }
            }
            b'X' => self.terminated = true,
            b'H' => {}
            // COPY data changes nothing about who is owed what; the end of
            // an extended-protocol COPY still needs the client's Sync.
            b'd' | b'c' | b'f' => {
                self.since_command = None;
                if tag != b'd' && self.copy_in.take() == Some(true) {
                    self.batch_open = true;
                }
            }
            _ => {
                self.batch_open = true;
                self.since_command = (tag == b'E').then_some((tag, 0));
            }
        }
    }

    /// The server sent ReadyForQuery with transaction status `status`:
    /// one reply less owed, and the stats of a query (and, with status
    /// `I`, a transaction) that ended.
    pub(super) fn server_ready(&mut self, status: u8, stats: &PoolStats, now: &mut EventTime) {
        // In an extended-protocol COPY FROM STDIN the only Syncs the server
        // can be answering are ones sent after the COPY's Execute, which
        // were not counted: the COPY failed before the server read them.
        if self.copy_in == Some(true) {
            self.copy_doubtful = self.copy_doubtful.saturating_sub(1);
        } else {
            self.pending = self.pending.saturating_sub(1);
        }
        let now = now.get();
        stats.query_done(self.query_start.take().map(|t| now.since(t)));
        if status == b'I' {
            stats.xact_done(self.xact_start.take().map(|t| now.since(t)));
        }
    }

    /// Any other message from the server, by tag, for the COPY
    /// bookkeeping.
    pub(super) fn server_message(&mut self, tag: u8) {
        match tag {
            b'G' => self.copy_in_started(),
            // The COPY went through: the server read every Sync before
            // the CopyDone, and ignored them.
            b'C' if self.server_copy => {
                self.server_copy = false;
                self.copy_doubtful = 0;
            }
            b'E' => self.server_copy = false,
            _ => {}
        }
    }

    /// The server went back to the pool owing nothing: whatever was sent
    /// without a reply owed (a lone Flush) starts no query on the next
    /// server.
    pub(super) fn released(&mut self) {
        self.query_start = None;
        self.xact_start = None;
    }

    /// Bytes went to a server: a query (and maybe a transaction) starts
    /// if none was running.
    pub(super) fn sent_to_server(&mut self, now: &mut EventTime) {
        if self.query_start.is_none() {
            let now = now.get();
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }

    /// The server sent CopyInResponse: the Syncs the client sent after the
    /// COPY's Execute are ignored, and so are more until CopyDone/CopyFail
    /// (if the COPY fails before the server reads them, it answers them
    /// after all: see `copy_doubtful`). A client that sent anything else
    /// after the COPY (it should have waited) is left as it was: owed more
    /// than it gets, it keeps its server, which is safe.
    fn copy_in_started(&mut self) {
        if let Some((kind, syncs)) = self.since_command.take() {
            self.pending = self.pending.saturating_sub(syncs);
            self.copy_in = Some(kind == b'E');
            self.server_copy = true;
            self.copy_doubtful = syncs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One side's messages, by tag, in order.
    enum Step {
        Client(&'static [u8]),
        Server(&'static [u8]),
    }
    use Step::{Client, Server};

    /// What the relay reads off the state after a sequence.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        pending: usize,
        owes_nothing: bool,
        mid_exchange: bool,
        copy_doubtful: usize,
    }

    fn run(steps: &[Step]) -> Seen {
        let stats = PoolStats::new("db", "u");
        let mut state = ProtocolState::default();
        let mut now = EventTime::default();
        for step in steps {
            match step {
                Client(tags) => tags.iter().for_each(|&tag| state.note(tag)),
                Server(tags) => {
                    for &tag in tags.iter() {
                        match tag {
                            b'Z' => state.server_ready(b'I', &stats, &mut now),
                            tag => state.server_message(tag),
                        }
                    }
                }
            }
        }
        Seen {
            pending: state.pending(),
            owes_nothing: state.owes_nothing(),
            mid_exchange: state.mid_exchange(),
            copy_doubtful: state.copy_doubtful,
        }
    }

    fn seen(pending: usize, owes_nothing: bool, mid_exchange: bool, doubtful: usize) -> Seen {
        Seen {
            pending,
            owes_nothing,
            mid_exchange,
            copy_doubtful: doubtful,
        }
    }

    #[test]
    fn simple_queries_and_function_calls_each_owe_one_ready() {
        let table: &[(&str, &[Step], Seen)] = &[
            ("query sent", &[Client(b"Q")], seen(1, false, false, 0)),
            (
                "query answered",
                &[Client(b"Q"), Server(b"TDCZ")],
                seen(0, true, false, 0),
            ),
            (
                "two pipelined",
                &[Client(b"QQ"), Server(b"CZ")],
                seen(1, false, false, 0),
            ),
            (
                "function call",
                &[Client(b"F"), Server(b"VZ")],
                seen(0, true, false, 0),
            ),
            (
                "error answer",
                &[Client(b"Q"), Server(b"EZ")],
                seen(0, true, false, 0),
            ),
        ];
        for (name, steps, expected) in table {
            assert_eq!(&run(steps), expected, "{name}");
        }
    }

    #[test]
    fn extended_batches_stay_open_until_their_sync_is_answered() {
        let table: &[(&str, &[Step], Seen)] = &[
            ("no sync yet", &[Client(b"PBDE")], seen(0, false, true, 0)),
            (
                "flush keeps it open",
                &[Client(b"PBEH"), Server(b"12C")],
                seen(0, false, true, 0),
            ),
            ("synced", &[Client(b"PBES")], seen(1, false, false, 0)),
            (
                "answered",
                &[Client(b"PBES"), Server(b"12CZ")],
                seen(0, true, false, 0),
            ),
            (
                "pipeline of two batches",
                &[Client(b"PBESPBES"), Server(b"12CZ")],
                seen(1, false, false, 0),
            ),
            (
                "pipeline answered",
                &[Client(b"PBESBES"), Server(b"12CZ2CZ")],
                seen(0, true, false, 0),
            ),
            (
                // The server skips to the Sync after an error: one
                // ReadyForQuery per Sync all the same.
                "error mid-pipeline",
                &[Client(b"PBESPBES"), Server(b"EZEZ")],
                seen(0, true, false, 0),
            ),
            (
                "delayed sync",
                &[Client(b"PBE"), Server(b"12C"), Client(b"S")],
                seen(1, false, false, 0),
            ),
            (
                "close and describe",
                &[Client(b"CDS"), Server(b"3tnZ")],
                seen(0, true, false, 0),
            ),
        ];
        for (name, steps, expected) in table {
            assert_eq!(&run(steps), expected, "{name}");
        }
    }

    #[test]
    fn copy_from_stdin_holds_the_server_until_done() {
        let table: &[(&str, &[Step], Seen)] = &[
            (
                "simple copy started",
                &[Client(b"Q"), Server(b"G")],
                seen(1, false, true, 0),
            ),
            (
                "simple copy data",
                &[Client(b"Q"), Server(b"G"), Client(b"ddd")],
                seen(1, false, true, 0),
            ),
            (
                "simple copy done",
                &[Client(b"Q"), Server(b"G"), Client(b"dc"), Server(b"CZ")],
                seen(0, true, false, 0),
            ),
            (
                "simple copy failed by client",
                &[Client(b"Q"), Server(b"G"), Client(b"f"), Server(b"EZ")],
                seen(0, true, false, 0),
            ),
            (
                // The Sync after the COPY's Execute is ignored by the server.
                "extended copy started",
                &[Client(b"PBES"), Server(b"12G")],
                seen(0, false, true, 1),
            ),
            (
                "extended copy needs its sync after CopyDone",
                &[Client(b"PBES"), Server(b"12G"), Client(b"dc")],
                seen(0, false, true, 1),
            ),
            (
                "extended copy done",
                &[
                    Client(b"PBES"),
                    Server(b"12G"),
                    Client(b"dcS"),
                    Server(b"CZ"),
                ],
                seen(0, true, false, 0),
            ),
            (
                // The COPY failed before the server read the Sync: it
                // answers that Sync, which was not counted.
                "extended copy failed early",
                &[Client(b"PBES"), Server(b"12GEZ")],
                seen(0, false, true, 0),
            ),
            (
                "syncs inside a copy are ignored",
                &[Client(b"Q"), Server(b"G"), Client(b"dSHd")],
                seen(1, false, true, 0),
            ),
        ];
        for (name, steps, expected) in table {
            assert_eq!(&run(steps), expected, "{name}");
        }
    }

    #[test]
    fn copy_to_stdout_is_just_a_query() {
        assert_eq!(
            run(&[Client(b"Q"), Server(b"HddcCZ")]),
            seen(0, true, false, 0)
        );
    }

    #[test]
    fn terminate_is_remembered() {
        let mut state = ProtocolState::default();
        state.note(b'Q');
        assert!(!state.terminated());
        state.note(b'X');
        assert!(state.terminated());
    }

    #[test]
    fn doubtful_syncs_are_settled_once() {
        let stats = PoolStats::new("db", "u");
        let mut state = ProtocolState::default();
        for tag in *b"PBESS" {
            state.note(tag);
        }
        state.server_message(b'G');
        assert_eq!(state.take_copy_doubtful(), 2);
        assert_eq!(state.take_copy_doubtful(), 0);
        state.server_ready(b'I', &stats, &mut EventTime::default());
        assert_eq!(stats.totals().query_count, 1);
    }

    #[test]
    fn ready_for_query_counts_queries_and_idle_status_ends_a_transaction() {
        let stats = PoolStats::new("db", "u");
        let mut state = ProtocolState::default();
        let mut now = EventTime::default();
        state.note(b'Q');
        state.sent_to_server(&mut now);
        state.server_ready(b'T', &stats, &mut now);
        assert_eq!(
            (stats.totals().query_count, stats.totals().xact_count),
            (1, 0)
        );
        state.note(b'Q');
        state.sent_to_server(&mut now);
        state.server_ready(b'I', &stats, &mut now);
        assert_eq!(
            (stats.totals().query_count, stats.totals().xact_count),
            (2, 1)
        );
    }

    #[test]
    fn query_and_transaction_times_run_from_the_first_send_to_their_ready() {
        let stats = PoolStats::new("db", "u");
        let mut state = ProtocolState::default();
        let at = |micros| EventTime::at(Moment::from_micros(micros));
        state.note(b'Q');
        state.sent_to_server(&mut at(1_000));
        // More bytes of the same query start nothing new.
        state.sent_to_server(&mut at(1_100));
        state.server_ready(b'T', &stats, &mut at(1_500));
        state.note(b'Q');
        state.sent_to_server(&mut at(2_000));
        state.server_ready(b'I', &stats, &mut at(2_250));
        let totals = stats.totals();
        assert_eq!((totals.query_time, totals.xact_time), (750, 1_250));

        // A lone Flush is sent and answered by nothing: released with it,
        // the next query's time starts at its own send.
        state.note(b'H');
        state.sent_to_server(&mut at(3_000));
        assert!(state.owes_nothing());
        state.released();
        state.note(b'Q');
        state.sent_to_server(&mut at(9_000));
        state.server_ready(b'I', &stats, &mut at(9_100));
        let totals = stats.totals();
        assert_eq!((totals.query_time, totals.xact_time), (850, 1_350));
    }
}
