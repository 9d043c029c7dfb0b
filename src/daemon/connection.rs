//! `connection` serves one peer: it reads lines, answers them in order and
//! writes the answers in batches.
//!
//! A request crosses few hops: read → split line → parse → authorize →
//! sign or verify inline (~20–40 µs of CPU, cheaper than a thread hop) →
//! append the response. Replies are written with one `write_all` once their
//! audit records are committed, as soon as [`REPLY_BATCH`] bytes of them
//! wait or the input read so far is answered; the connection reads nothing
//! more until they are written, which is the backpressure on pipelining
//! clients. So a connection holds at most one read chunk and one partial
//! line of input (`max_frame_bytes`) and about [`REPLY_BATCH`] of replies,
//! and an idle connection holds no buffer at all.
//!
//! Connections take turns. A turn begins when the connection waited for
//! its socket (the others ran meanwhile) or yielded, and lasts [`TURN`]
//! of answering, across inputs; then the connection writes its replies,
//! gives its batch back (the lines left wait in its input) and yields.
//! A turn with token replies waiting for their audit commit may last four
//! times as long (ending a turn flushes, and so commits: a commit per
//! 200 µs cost a fifth of sign throughput); the yield after it puts the
//! connection behind the others (the commit waits alone left sign at
//! 16 x 32 with p99 up to 7.8 x p50). Without turns, a connection whose
//! client had its next lines in the socket when the daemon came back to
//! read never waited: reads from a ready socket cost nothing of tokio's
//! cooperative budget and each reply write one unit of 128, so it kept its
//! worker for up to 128 batches (verify at 16 connections x 32 in flight:
//! p99 320 ms against p50 1.2 ms).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::Ticket;
use super::handler::{self, Handled, Parsed};
use super::state::{Peer, State};
use crate::config::Limits;
use crate::protocol::{self, Code, Failure, Frame, LineSplitter};
use crate::store::audit_log::Record;

/// Read at most this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Replies are written once this many bytes of them wait: with one read
/// chunk and one partial line, the bound on a connection's memory.
pub const REPLY_BATCH: usize = 32 * 1024;

/// The longest a connection answers lines before it lets the others run
/// (about 5 verifies or 10 signs).
const TURN: Duration = Duration::from_micros(200);

/// One response in a batch: where it is in the output buffer, and, for a
/// response that carries a token, the request's id (to answer
/// `audit_unavailable` in its place if the audit commit fails).
struct Segment {
    start: usize,
    end: usize,
    token_id: Option<Option<Value>>,
}

/// Replies waiting to be written, and the audit records that must be
/// committed before they leave.
#[derive(Default)]
struct Batch {
    out: Vec<u8>,
    segments: Vec<Segment>,
    records: Vec<Record>,
    /// Pipelined revokes held back to be stored together.
    revokes: Vec<crate::protocol::Request>,
}

enum Read {
    Data,
    Eof,
    Close,
}

/// What answering the lines of an input did: whether a line was answered,
/// whether the connection is to close (a line too long), and whether whole
/// lines are left for the next turn.
#[derive(Default)]
struct Pass {
    answered: bool,
    close: bool,
    more: bool,
}

pub struct Connection<'a> {
    state: &'a State,
    stream: UnixStream,
    peer: Peer,
    ticket: Ticket,
    input: BytesMut,
    splitter: LineSplitter,
    batch: Batch,
    last_request: Instant,
    /// Since when a started line waits for its end (slow clients).
    partial_since: Option<Instant>,
    /// When this connection's turn began: when it last waited for its
    /// socket or yielded.
    turn: Instant,
    /// This input's replies waited for an audit commit.
    committed: bool,
}

impl<'a> Connection<'a> {
    pub fn new(stream: UnixStream, state: &'a State, peer: Peer, ticket: Ticket) -> Self {
        Connection {
            splitter: LineSplitter::new(state.limits().max_frame_bytes),
            state,
            stream,
            peer,
            ticket,
            input: BytesMut::new(),
            batch: Batch::default(),
            last_request: Instant::now(),
            partial_since: None,
            turn: Instant::now(),
            committed: false,
        }
    }

    /// Read, answer, write, until the peer is done, times out, is evicted,
    /// or the daemon stops.
    pub async fn serve(mut self, shutdown: &CancellationToken) {
        let mut eof = false;
        // Whole lines of the input left unanswered when the turn ended.
        let mut left = false;
        loop {
            let limits = *self.state.limits();
            if !left {
                match self.read(&limits, shutdown).await {
                    Read::Close => break,
                    Read::Eof => eof = true,
                    Read::Data => {}
                }
            } else if shutdown.is_cancelled() || self.ticket.evicted.is_cancelled() {
                break;
            }
            let Some(more) = self.answer_input(&limits, eof).await else {
                break;
            };
            if eof && !more {
                break;
            }
            left = more;
            // The replies are written; the batch is given back.
            self.release_buffers();
            // A turn is over once it has lasted TURN, across inputs: a
            // client that always has its next lines in the socket never
            // makes this connection wait, so it yields to the others. After
            // an audit commit, only if others wait for a worker (the ones
            // the audit writer woke): a sequential signer does not pay for
            // a yield (17 µs a sign), and the others do not wait behind a
            // connection woken by its socket before them.
            let over = self.turn.elapsed() >= TURN
                && (!std::mem::take(&mut self.committed) || others_waiting());
            if more || over {
                tokio::task::yield_now().await;
                self.turn = Instant::now();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// Wait for bytes and append them to the input: until the read deadline
    /// of a started line (`read_timeout`) or the idle deadline
    /// (`idle_timeout`), the daemon's shutdown, or an eviction.
    async fn read(&mut self, limits: &Limits, shutdown: &CancellationToken) -> Read {
        let deadline = match self.partial_since {
            Some(t) => t + limits.read_timeout,
            None => self.last_request + limits.idle_timeout,
        };
        loop {
            // Whether the socket had to be waited for: then the others ran
            // meanwhile, and this connection's turn starts again.
            let mut waited = false;
            let stream = &self.stream;
            let ready = std::future::poll_fn(|cx| {
                let r = stream.poll_read_ready(cx);
                waited |= r.is_pending();
                r
            });
            tokio::select! {
                _ = shutdown.cancelled() => return Read::Close,
                _ = self.ticket.evicted.cancelled() => return Read::Close,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(uid = self.peer.uid, "closing a connection: read or idle timeout");
                    return Read::Close;
                }
                r = ready => if r.is_err() {
                    return Read::Close;
                },
            }
            if waited {
                self.turn = Instant::now();
            }
            if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
                self.input.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => return Read::Eof,
                Ok(_) => return Read::Data,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Read::Close,
            }
        }
    }

    /// Answer the complete lines of the input (and, at EOF, an
    /// unterminated last one) for one turn ([`TURN`]), writing the replies
    /// whenever [`REPLY_BATCH`] bytes of them wait and at the end. Returns
    /// `None` to close, else whether whole lines are left for the next
    /// turn.
    async fn answer_input(&mut self, limits: &Limits, eof: bool) -> Option<bool> {
        let Pass {
            mut answered,
            close,
            mut more,
        } = self.answer_lines(limits).await?;
        self.input.advance(self.splitter.consumed());
        self.splitter.reset();
        // Lines may be left only if one of them is whole.
        more = more && self.input.contains(&b'\n');
        // A last line without `\n` before EOF (e.g. `printf … | socat`).
        if eof && !close && !more && !self.input.trim_ascii().is_empty() {
            answer(self.state, &self.input, &self.peer, &mut self.batch).await;
            answered = true;
        }
        // The revokes held back: this input has no more lines to join them.
        answer_revokes(self.state, &self.peer, &mut self.batch).await;
        self.note_answered(answered, more);
        self.committed |= !self.batch.records.is_empty();
        let written = flush(
            self.state,
            &mut self.stream,
            &self.peer,
            &mut self.batch,
            limits,
        )
        .await;
        (written && !close).then_some(more)
    }

    /// The first step of [`Self::answer_input`]: answer the whole lines
    /// of the input until none is left, the turn is over or a line is too
    /// long. `None` to close (replies could not be written).
    async fn answer_lines(&mut self, limits: &Limits) -> Option<Pass> {
        let Connection {
            state,
            stream,
            peer,
            input,
            splitter,
            batch,
            turn,
            ..
        } = self;
        let turn = *turn;
        let mut pass = Pass::default();
        while let Some(frame) = splitter.next(input) {
            match frame {
                Frame::Line(line) if line.trim_ascii().is_empty() => {}
                Frame::Line(line) => {
                    answer(state, line, peer, batch).await;
                    pass.answered = true;
                    if batch.out.len() >= REPLY_BATCH
                        && !flush(state, stream, peer, batch, limits).await
                    {
                        return None;
                    }
                    if turn.elapsed() >= turn_limit(batch) {
                        pass.more = true;
                        break;
                    }
                }
                Frame::TooLong => {
                    refuse_too_long(state, peer, batch, limits).await;
                    pass.close = true;
                    break;
                }
            }
        }
        Some(pass)
    }

    /// The step of [`Self::answer_input`] after its lines are answered:
    /// the idle clock restarts if any was, and the read deadline of a
    /// partial line is set.
    #[inline]
    fn note_answered(&mut self, answered: bool, more: bool) {
        if answered {
            self.last_request = Instant::now();
            self.ticket.touch();
        }
        // The deadline is the line's, not the connection's: a line that
        // started after a completed one starts its own clock (a client that
        // pipelines without a pause always has a partial line waiting).
        self.partial_since = match (self.input.is_empty() || more, answered) {
            (true, _) => None,
            (false, true) => Some(Instant::now()),
            (false, false) => self.partial_since.or(Some(Instant::now())),
        };
    }

    /// Give the buffers back between requests: an idle connection holds
    /// none, and one large request leaves no large buffer behind.
    fn release_buffers(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        self.batch = Batch::default();
    }
}

/// Whether tasks wait in the runtime's global queue: those woken from
/// outside it (by the audit writer's acknowledgements, mostly).
fn others_waiting() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().global_queue_depth() > 0)
}

/// How long a turn may last with this batch waiting: four times [`TURN`]
/// while token replies wait for their audit commit.
#[inline]
fn turn_limit(batch: &Batch) -> Duration {
    // With token replies waiting for their audit commit, a turn may last
    // longer (ending it flushes, and a commit per 200 µs cost a fifth of
    // sign throughput): a batch of 32 signs fits in one, a sign at the head
    // of 31 verifies does not keep the worker for all.
    if batch.records.is_empty() {
        TURN
    } else {
        TURN * 4
    }
}

/// Answer a line too long: the held revokes first, then the refusal (the
/// connection closes after it).
async fn refuse_too_long(st: &State, peer: &Peer, batch: &mut Batch, limits: &Limits) {
    answer_revokes(st, peer, batch).await;
    st.metrics.refused("request", Code::FrameTooLong.as_str());
    batch.push_error(Failure::new(
        None,
        Code::FrameTooLong,
        format!(
            "request line exceeds {} bytes; closing",
            limits.max_frame_bytes
        ),
    ));
}

/// The most pipelined revokes stored in one transaction.
const MAX_REVOKES: usize = 1024;

/// Answer the revokes held back (see [`answer`]), in order.
async fn answer_revokes(st: &State, peer: &Peer, batch: &mut Batch) {
    if batch.revokes.is_empty() {
        return;
    }
    let start = batch.out.len();
    let reqs = std::mem::take(&mut batch.revokes);
    let mut out = Vec::new();
    handler::admin::run_revokes(st, reqs, peer, &mut out, &mut batch.records).await;
    // One segment per reply line, as for any other request.
    let mut at = start;
    for line in out.split_inclusive(|&b| b == b'\n') {
        batch.out.extend_from_slice(line);
        batch.segments.push(Segment {
            start: at,
            end: at + line.len(),
            token_id: None,
        });
        at += line.len();
    }
}

/// Answer one request line (admin ops on a blocking thread) into the batch.
/// A revoke is held back while more follow in the same input, so that
/// pipelined revokes share one transaction; any other reply waits for the
/// held revokes' replies, so replies keep the order of the requests, and
/// any other admin op runs after them.
async fn answer(st: &State, line: &[u8], peer: &Peer, batch: &mut Batch) {
    let held = !batch.revokes.is_empty();
    // With revokes held, this line's reply is made aside and appended after
    // theirs (no extra buffer otherwise: the sign path stays as it was).
    let mut aside = Vec::new();
    let out = if held { &mut aside } else { &mut batch.out };
    let start = out.len();
    let handled = match handler::parse(st, line, peer, out) {
        None => Handled::Reply,
        Some(p) if p.is_revoke() => {
            batch.revokes.push(p.into_request());
            if batch.revokes.len() >= MAX_REVOKES {
                answer_revokes(st, peer, batch).await;
            }
            return;
        }
        Some(p) if held && p.waits() => return answer_after_revokes(st, p, peer, batch).await,
        Some(p) => handler::handle(st, p, peer, out, &mut batch.records).await,
    };
    let start = if held {
        answer_revokes(st, peer, batch).await;
        let at = batch.out.len();
        batch.out.extend_from_slice(&aside);
        at
    } else {
        start
    };
    batch.segments.push(Segment {
        start,
        end: batch.out.len(),
        token_id: handled.token_id(),
    });
}

/// Answer a request that may wait (an admin op, a sign) after held revokes:
/// the revokes are stored and answered first, then it.
async fn answer_after_revokes(st: &State, parsed: Parsed, peer: &Peer, batch: &mut Batch) {
    answer_revokes(st, peer, batch).await;
    let start = batch.out.len();
    let handled = handler::handle(st, parsed, peer, &mut batch.out, &mut batch.records).await;
    batch.segments.push(Segment {
        start,
        end: batch.out.len(),
        token_id: handled.token_id(),
    });
}

/// Commit the batch's audit records (group commit), then write its
/// replies, within `write_timeout`. If the records cannot be committed, no
/// token leaves: each token reply becomes an `audit_unavailable` error.
/// Returns false when the connection should close.
async fn flush(
    st: &State,
    stream: &mut UnixStream,
    peer: &Peer,
    batch: &mut Batch,
    limits: &Limits,
) -> bool {
    if batch.out.is_empty() {
        return true;
    }
    // The tokens of this batch are issued once their records are committed
    // (counted per kid: a batch has one or two).
    let mut signed: Vec<(String, u64)> = Vec::new();
    for kid in batch
        .records
        .iter()
        .filter(|r| r.op == "sign" && r.result == "ok")
        .filter_map(|r| r.kid.as_deref())
    {
        match signed.iter_mut().find(|(k, _)| k == kid) {
            Some((_, n)) => *n += 1,
            None => signed.push((kid.to_owned(), 1)),
        }
    }
    let committed = match &st.audit {
        Some(audit) if !batch.records.is_empty() => {
            audit.commit(std::mem::take(&mut batch.records)).await
        }
        _ => true,
    };
    if committed {
        for (kid, n) in &signed {
            st.metrics.tokens_issued(&peer.policy.name, kid, *n);
        }
    } else {
        let n: u64 = signed.iter().map(|(_, n)| n).sum();
        st.metrics
            .refused_n("sign", Code::AuditUnavailable.as_str(), n);
        batch.withhold_tokens();
    }
    batch.records.clear();
    let written = tokio::time::timeout(limits.write_timeout, stream.write_all(&batch.out)).await;
    batch.out.clear();
    batch.segments.clear();
    match written {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("closing a connection that does not read its responses");
            false
        }
    }
}

impl Batch {
    fn push_error(&mut self, f: Failure) {
        let start = self.out.len();
        protocol::write_error(&mut self.out, &f);
        self.segments.push(Segment {
            start,
            end: self.out.len(),
            token_id: None,
        });
    }

    /// Replace every token-carrying reply with an `audit_unavailable` error
    /// for the same request id.
    fn withhold_tokens(&mut self) {
        let mut rebuilt = Vec::with_capacity(self.out.len());
        for s in &self.segments {
            match &s.token_id {
                Some(id) => protocol::write_error(
                    &mut rebuilt,
                    &Failure::new(
                        id.clone(),
                        Code::AuditUnavailable,
                        "the audit log cannot be written; no token was issued",
                    ),
                ),
                None => rebuilt.extend_from_slice(&self.out[s.start..s.end]),
            }
        }
        self.out = rebuilt;
    }
}
