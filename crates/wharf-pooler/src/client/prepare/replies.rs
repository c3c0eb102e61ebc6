//! The server's side of the tracker: each reply matched with the request
//! it answers, relayed, dropped or answered by the pooler in its place,
//! and what a failed request would have done undone.

use bytes::{BufMut, BytesMut};

use super::{long_query, Answer, Edit, Effect, Outstanding, Request, Tracker};
use crate::prepared::ServerStatements;
use crate::proto::cstr_bytes;

impl Tracker {
    /// A server message at `at` in the client-bound buffer, whole for the
    /// tags [`reply_wanted`] names. Records the edits to make; `true` when
    /// the message answers nothing the client asked (an error the pooler
    /// recovers from, the ReadyForQuery after it), so that the session's
    /// protocol state does not count it.
    pub(in crate::client) fn reply(
        &mut self,
        tag: u8,
        at: usize,
        body: Option<&[u8]>,
        server: &mut ServerStatements,
    ) -> bool {
        let end = at + 5 + body.map_or(0, <[u8]>::len);
        // Replies the pooler makes that became due while the server was
        // part-way through an asynchronous message go before this one.
        if self.due() {
            self.make_due(at);
        }
        let head = self.queue.front().map(|o| o.request);

        let completes = match (tag, head) {
            (b'E', Some(Request::Simple)) => {
                // The server's refusal of the message, not a FATAL error
                // or one of another cause, which goes as it is.
                let refusal = |body| {
                    let severity = error_field(body, b'V').or_else(|| error_field(body, b'S'));
                    severity == Some(b"ERROR") && error_field(body, b'C') == Some(b"08P01")
                };
                if self.queue.front().map(|o| o.answer) == Some(Answer::Refused)
                    && body.is_some_and(refusal)
                {
                    self.replace_reply(at, end, &long_query::refusal());
                    return false;
                }
                if self.note_stale_plan(body, server) && self.run_again(at, end, server) {
                    return true;
                }
                self.simple_failed(server);
                false
            }
            (b'C', Some(Request::Simple)) => {
                self.simple_completed(at, end);
                false
            }
            (b'E', Some(Request::Sync)) | (b'E', None) => false,
            (b'E', Some(_)) => {
                if self.note_stale_plan(body, server) && self.run_again(at, end, server) {
                    return true;
                }
                self.failed(server);
                self.make_due(end);
                return false;
            }

            (b'Z', Some(Request::Sync | Request::Simple)) => true,
            (b'1', Some(Request::Parse)) | (b'2', Some(Request::Bind)) => true,
            (b'3', Some(Request::Close)) => true,
            (b'T' | b'n', Some(Request::Describe)) => true,
            (b'C' | b'I' | b's', Some(Request::Execute)) => true,
            // COPY FROM STDIN: the Syncs already sent are ignored.
            (b'G', Some(_)) => {
                while self.queue.get(1).map(|o| o.request) == Some(Request::Sync) {
                    self.queue.remove(1);
                    self.groups_sent -= 1;
                    self.capture = None;
                }
                false
            }
            _ => false,
        };
        if tag == b'C' && body.is_some_and(resets_tag) {
            self.reset(server);
        }
        if tag == b'Z' && completes {
            self.idle = body.and_then(<[u8]>::first) == Some(&b'I');
            self.groups_done += 1;
            if self
                .capture
                .as_ref()
                .is_some_and(|c| c.answered(self.groups_done))
            {
                self.capture = None;
            }
        }
        if completes {
            let done = self.queue.pop_front().expect("a head was matched");
            if done.answer == Answer::Swallow {
                self.drop_reply(at, end);
            }
            self.make_due(end);
            return done.answer == Answer::Swallow && tag == b'Z';
        }
        false
    }

    /// A statement of the simple query at the head failed: what the
    /// pooler's own statements in front of the client's would have done
    /// is undone unless they completed.
    fn simple_failed(&mut self, server: &mut ServerStatements) {
        if let Some(head) = self.queue.front_mut() {
            let effect = std::mem::replace(&mut head.effect, Effect::None);
            let answer = head.answer;
            self.undo(
                Outstanding {
                    request: Request::Simple,
                    answer,
                    effect,
                },
                server,
            );
        }
    }

    /// A statement of the simple query at the head completed (its
    /// CommandComplete is `at..end`): the first settles what the query
    /// does to prepared statements, and one the pooler added is dropped.
    fn simple_completed(&mut self, at: usize, end: usize) {
        let Some(head) = self.queue.front_mut() else {
            return;
        };
        head.effect = Effect::None;
        if let Answer::HideComplete(index) = head.answer {
            if index == 0 {
                head.answer = Answer::Relay;
                self.drop_reply(at, end);
            } else {
                head.answer = Answer::HideComplete(index - 1);
            }
        }
    }

    /// The head request failed: it and everything up to the next Sync is
    /// skipped by the server, and undone here.
    fn failed(&mut self, server: &mut ServerStatements) {
        let mut undone: Vec<Outstanding> = self.queue.pop_front().into_iter().collect();
        while self
            .queue
            .front()
            .is_some_and(|o| o.request != Request::Sync)
        {
            undone.extend(self.queue.pop_front());
        }
        // No Sync sent yet: the server discards what comes until one is.
        self.skipping = self.queue.is_empty();
        // A simple query the server skips gets no ReadyForQuery; and what
        // was kept to run again is of a group that failed otherwise.
        let skipped_queries = undone
            .iter()
            .filter(|o| o.request == Request::Simple)
            .count();
        self.groups_sent -= skipped_queries as u64;
        self.capture = None;
        // Newest first: a statement a later request evicted was recorded
        // as evicted after the Parse that put it there.
        for outstanding in undone.into_iter().rev() {
            self.undo(outstanding, server);
        }
    }

    pub(super) fn undo(&mut self, outstanding: Outstanding, server: &mut ServerStatements) {
        match outstanding.effect {
            Effect::None | Effect::Uses(_) | Effect::DescribesPortal => {}
            Effect::Unstaled(statement) => server.mark_stale(&statement),
            Effect::Prepared {
                statement,
                client_name,
            } => {
                server.remove(&statement);
                if let Some(name) = client_name {
                    self.client.remove_if(&name, &statement);
                }
            }
            Effect::Named {
                statement,
                client_name,
            } => self.client.remove_if(&client_name, &statement),
            Effect::Evicted(statement) => server.restore(statement),
            Effect::Unnamed {
                statement,
                client_name,
            } => self.client.insert(&client_name, statement),
        }
    }

    /// DEALLOCATE ALL or DISCARD ALL ran: nothing the server had is left,
    /// and the client's names are gone, except what was sent after it.
    fn reset(&mut self, server: &mut ServerStatements) {
        server.clear();
        self.client.clear();
        for outstanding in &self.queue {
            match &outstanding.effect {
                Effect::Prepared {
                    statement,
                    client_name,
                } => {
                    server.restore(statement.clone());
                    if let Some(name) = client_name {
                        self.client.insert(name, statement.clone());
                    }
                }
                Effect::Named {
                    statement,
                    client_name,
                } => self.client.insert(client_name, statement.clone()),
                Effect::Unnamed { client_name, .. } => {
                    self.client.remove(client_name);
                }
                Effect::None
                | Effect::Evicted(_)
                | Effect::Unstaled(_)
                | Effect::Uses(_)
                | Effect::DescribesPortal => {}
            }
        }
    }

    /// Drops the server's reply at `at..end` on its way to the client.
    pub(super) fn drop_reply(&mut self, at: usize, end: usize) {
        self.replace_reply(at, end, &[]);
    }

    /// Replaces the server's reply at `at..end` with `with`.
    fn replace_reply(&mut self, at: usize, end: usize, with: &[u8]) {
        let start = self.made.len();
        self.made.extend_from_slice(with);
        self.edits.push(Edit {
            at,
            remove: end - at,
            insert: (start, self.made.len()),
        });
    }

    /// Makes the replies now due, inserted at `at` (after the reply that
    /// made them due, or at the end of what the client is to get so far).
    pub(in crate::client) fn make_due(&mut self, at: usize) {
        let start = self.made.len();
        while let Some(Answer::Make(tag)) = self.queue.front().map(|o| o.answer) {
            self.made.extend_from_slice(&[tag, 0, 0, 0, 4]);
            self.queue.pop_front();
        }
        if self.made.len() > start {
            self.edits.push(Edit {
                at,
                remove: 0,
                insert: (start, self.made.len()),
            });
        }
    }

    /// Applies the recorded edits to `buf`; how much the edited front
    /// part grew (negative: shrank).
    pub(in crate::client) fn apply_edits(&mut self, buf: &mut BytesMut) -> isize {
        if self.edits.is_empty() {
            return 0;
        }
        let before = buf.len();
        let mut edited = BytesMut::with_capacity(before + self.made.len());
        let mut cursor = 0;
        for edit in &self.edits {
            edited.put_slice(&buf[cursor..edit.at]);
            edited.put_slice(&self.made[edit.insert.0..edit.insert.1]);
            cursor = edit.at + edit.remove;
        }
        edited.put_slice(&buf[cursor..]);
        *buf = edited;
        self.edits.clear();
        self.made.clear();
        buf.len() as isize - before as isize
    }
}

/// The value of `field` (a one-letter code) in the ErrorResponse `body`.
pub(super) fn error_field(body: &[u8], field: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        let (value, next) = cstr_bytes(tail)?;
        if code == field {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// The server messages whose bodies the tracker reads, or whose bytes it
/// may drop.
pub(in crate::client) fn reply_wanted(tag: u8) -> bool {
    // Every reply that can end a request is read whole, so that a reply
    // the pooler makes goes in after it, not inside it.
    matches!(
        tag,
        b'1' | b'2' | b'3' | b'C' | b'E' | b'I' | b'n' | b's' | b'T' | b'Z' | b'S'
    )
}

/// A CommandComplete tag of a statement that drops every prepared
/// statement of the session.
pub(in crate::client) fn resets_tag(body: &[u8]) -> bool {
    matches!(body, b"DEALLOCATE ALL\0" | b"DISCARD ALL\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(tracker: &Tracker) -> Vec<Request> {
        tracker.queue.iter().map(|o| o.request).collect()
    }

    #[test]
    fn a_tracker_made_late_keeps_the_syncs_a_copy_makes_the_server_ignore() {
        let mut server = ServerStatements::default();
        // A COPY query and a Sync after it, sent before any tracker.
        let mut tracker = Tracker::resumed(8, (2, 1), 0, true);
        assert_eq!(requests(&tracker), [Request::Simple, Request::Sync]);
        assert_eq!(tracker.groups_sent, 2);
        // CopyInResponse: the server will never answer that Sync.
        tracker.reply(b'G', 0, Some(&[0, 0, 0]), &mut server);
        assert_eq!(requests(&tracker), [Request::Simple]);
        assert_eq!(tracker.groups_sent, 1);
    }

    #[test]
    fn late_syncs_are_never_more_than_the_replies_owed() {
        let tracker = Tracker::resumed(8, (1, 3), 0, false);
        assert_eq!(requests(&tracker), [Request::Sync]);
        let tracker = Tracker::resumed(8, (0, 2), 5, false);
        assert!(tracker.settled());
        assert_eq!(tracker.partial, 5);
    }
}
