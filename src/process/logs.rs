//! The bounded buffer of a process's captured output, and its subscriptions.
//!
//! Nothing is lost silently. A follower that keeps up gets every byte, in order,
//! in batches (consecutive lines of one stream in one message, up to
//! [`MAX_BATCH`] bytes): while a follower has not taken all there is, the reaper
//! stops reading the program's pipe, for up to [`LAG_GRACE`], and reads no more
//! at once than the buffer holds, so that a moment's delay costs the program a
//! pause, not its output. A follower
//! that stops reading for longer than that misses what the buffer dropped, and
//! gets, where the gap is, a message of the stream concerned with no data whose
//! [`MISSED_BYTES`] attribute says exactly how many bytes of it were missed.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

use crate::api::{LogContext, LogMessage, LogStream, LogSubscriptionOptions};
use crate::{CancelToken, Error, LogPublisher};

/// The longest line kept whole; longer ones are split into lines of this size.
const MAX_LINE: usize = 16 * 1024;

/// What each line costs beside its bytes, so that many tiny lines stay bounded too.
const LINE_OVERHEAD: usize = 64;

/// The most bytes one message of a follow carries.
pub(crate) const MAX_BATCH: usize = 64 * 1024;

/// How long output waits for a follower that has not read what would be dropped.
pub(crate) const LAG_GRACE: Duration = Duration::from_millis(250);

/// The attribute of a gap's message: how many bytes of its stream the follower
/// missed.
pub const MISSED_BYTES: &str = "swarmexec.missed_bytes";

/// Output lines, oldest first, bounded in bytes: once full, the oldest lines go.
pub(crate) struct LogBuffer {
    state: Mutex<State>,
}

struct State {
    lines: VecDeque<Line>,
    /// The sequence number of `lines[0]`.
    first_seq: u64,
    /// Bytes ever pushed, per stream: where its next line starts.
    end_byte: [u64; 2],
    bytes: usize,
    capacity: usize,
    /// Unterminated tails of stdout and stderr.
    partial: [Vec<u8>; 2],
    /// No more output will come: followers stop once they have read everything.
    finished: bool,
    followers: Vec<Follower>,
    next_follower: u64,
    /// Since when output has been held back for a lagging follower.
    held_since: Option<Instant>,
}

struct Line {
    stream: LogStream,
    time: SystemTime,
    /// Where the line starts among all bytes ever pushed to its stream.
    start: u64,
    data: Vec<u8>,
}

impl Line {
    fn cost(&self) -> usize {
        self.data.len() + LINE_OVERHEAD
    }
}

/// A follow in progress: how to wake it, and how far it has read.
struct Follower {
    id: u64,
    wake: Sender<()>,
    next_seq: u64,
    /// How far it has read each stream, in bytes.
    next_byte: [u64; 2],
}

fn slot(stream: LogStream) -> usize {
    usize::from(stream == LogStream::Stderr)
}

impl LogBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        LogBuffer {
            state: Mutex::new(State {
                lines: VecDeque::new(),
                first_seq: 0,
                end_byte: [0; 2],
                bytes: 0,
                capacity,
                partial: [Vec::new(), Vec::new()],
                finished: false,
                followers: Vec::new(),
                next_follower: 0,
                held_since: None,
            }),
        }
    }

    /// True when more output may be appended now; false while a follower has not
    /// yet taken all there is, for up to [`LAG_GRACE`].
    pub(crate) fn accepts_output(&self) -> bool {
        let mut state = self.state.lock();
        let end = state.end_seq();
        let lagging = state.followers.iter().any(|f| f.next_seq < end);
        if !lagging {
            state.held_since = None;
            return true;
        }
        let since = *state.held_since.get_or_insert_with(Instant::now);
        since.elapsed() >= LAG_GRACE
    }

    /// The most bytes to read at once: while someone follows, no more than an
    /// empty buffer holds even as one-byte lines, so that one read never drops
    /// what a follower has not seen.
    pub(crate) fn read_limit(&self, buffer: usize) -> usize {
        let state = self.state.lock();
        if state.followers.is_empty() {
            return buffer;
        }
        (state.capacity / (LINE_OVERHEAD + 1)).clamp(1, buffer)
    }

    /// Appends output read from `stream`, completing lines at each newline and
    /// splitting lines longer than [`MAX_LINE`].
    pub(crate) fn append(&self, stream: LogStream, mut bytes: &[u8]) {
        let now = SystemTime::now();
        let mut state = self.state.lock();
        while !bytes.is_empty() {
            let partial = &mut state.partial[slot(stream)];
            let room = MAX_LINE - partial.len();
            let (take, complete) = match bytes[..bytes.len().min(room)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(newline) => (newline + 1, true),
                None if bytes.len() >= room => (room, true),
                None => (bytes.len(), false),
            };
            partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if complete {
                let data = std::mem::take(partial);
                state.push(stream, now, data);
            }
        }
        state.wake_followers();
    }

    /// Marks the output complete, keeping any unterminated last lines. Output may
    /// still be appended afterwards; finishing again keeps its last lines too.
    pub(crate) fn finish(&self) {
        let now = SystemTime::now();
        let mut state = self.state.lock();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let data = std::mem::take(&mut state.partial[slot(stream)]);
            if !data.is_empty() {
                state.push(stream, now, data);
            }
        }
        state.finished = true;
        state.wake_followers();
    }

    /// The last `max` bytes of output held, both streams in order.
    pub(crate) fn tail(&self, max: usize) -> Vec<u8> {
        let state = self.state.lock();
        let mut tail: Vec<u8> = Vec::new();
        for line in state.lines.iter().rev() {
            if tail.len() >= max {
                break;
            }
            tail.splice(0..0, line.data.iter().copied());
        }
        let excess = tail.len().saturating_sub(max);
        tail.drain(..excess);
        tail
    }

    /// The bytes of output held, without the per-line overhead.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        let state = self.state.lock();
        state.lines.iter().map(|l| l.data.len()).sum()
    }

    /// Publishes the lines `options` selects, one message a line, then, when
    /// following, new output in batches until the output is finished or `cancel`
    /// is done.
    pub(crate) fn publish(
        &self,
        cancel: &CancelToken,
        publisher: &dyn LogPublisher,
        options: &LogSubscriptionOptions,
        context: &LogContext,
    ) -> Result<(), Error> {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let (backlog, follower, finished) = {
            let mut state = self.state.lock();
            let mut seqs: Vec<u64> = state
                .seqs()
                .filter(|&seq| state.selected(seq, options))
                .collect();
            if let Some(tail) = options.tail {
                let keep = usize::try_from(tail).unwrap_or(usize::MAX);
                seqs.drain(..seqs.len().saturating_sub(keep));
            }
            let messages: Vec<LogMessage> = seqs
                .into_iter()
                .map(|seq| state.line(seq).message(context))
                .collect();
            let follower = options.follow.then(|| state.follow(wake_tx));
            (messages, follower, state.finished)
        };
        let Some(id) = follower else {
            return publish_all(cancel, publisher, backlog);
        };
        let _following = Following { buffer: self, id };
        publish_all(cancel, publisher, backlog)?;
        if finished {
            return Ok(());
        }
        loop {
            let (news, finished) = self.state.lock().news(id, options, context);
            publish_all(cancel, publisher, news)?;
            if finished {
                return Ok(());
            }
            if !wait_for_news(cancel, &wake_rx) {
                return Ok(());
            }
        }
    }
}

/// A follow registered with the buffer; unregistered when dropped, so that a
/// subscription that ends (or fails) never holds output back.
struct Following<'a> {
    buffer: &'a LogBuffer,
    id: u64,
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.buffer
            .state
            .lock()
            .followers
            .retain(|f| f.id != self.id);
    }
}

/// Blocks until the buffer signals news (true) or `cancel` is done (false).
fn wait_for_news(cancel: &CancelToken, wake: &Receiver<()>) -> bool {
    select! {
        recv(wake) -> _ => true,
        recv(cancel.done()) -> _ => false,
        recv(cancel.deadline_passed()) -> _ => false,
    }
}

fn publish_all(
    cancel: &CancelToken,
    publisher: &dyn LogPublisher,
    messages: Vec<LogMessage>,
) -> Result<(), Error> {
    messages
        .into_iter()
        .try_for_each(|message| publisher.publish(cancel, message))
}

impl State {
    fn push(&mut self, stream: LogStream, time: SystemTime, data: Vec<u8>) {
        let line = Line {
            stream,
            time,
            start: self.end_byte[slot(stream)],
            data,
        };
        self.end_byte[slot(stream)] += line.data.len() as u64;
        self.bytes += line.cost();
        self.lines.push_back(line);
        while self.bytes > self.capacity && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.cost();
                self.first_seq += 1;
            }
        }
    }

    fn end_seq(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }

    fn seqs(&self) -> std::ops::Range<u64> {
        self.first_seq..self.end_seq()
    }

    fn line(&self, seq: u64) -> &Line {
        &self.lines[(seq - self.first_seq) as usize]
    }

    fn selected(&self, seq: u64, options: &LogSubscriptionOptions) -> bool {
        let line = self.line(seq);
        options.wants(line.stream) && options.since.is_none_or(|since| line.time >= since)
    }

    /// Registers a follower that reads from now on; returns its id.
    fn follow(&mut self, wake: Sender<()>) -> u64 {
        let id = self.next_follower;
        self.next_follower += 1;
        self.followers.push(Follower {
            id,
            wake,
            next_seq: self.end_seq(),
            next_byte: self.end_byte,
        });
        id
    }

    /// What follower `id` has not read: a gap's record first where lines it had
    /// not read were dropped, then batches; and whether the output is finished.
    fn news(
        &mut self,
        id: u64,
        options: &LogSubscriptionOptions,
        context: &LogContext,
    ) -> (Vec<LogMessage>, bool) {
        let Some(follower) = self.followers.iter().find(|f| f.id == id) else {
            return (Vec::new(), true);
        };
        let (from, read) = (follower.next_seq, follower.next_byte);
        let mut news = Vec::new();
        if from < self.first_seq {
            for stream in [LogStream::Stdout, LogStream::Stderr] {
                let missed = self.first_kept_byte(stream) - read[slot(stream)];
                if missed > 0 && options.wants(stream) {
                    news.push(gap(context, stream, missed));
                }
            }
        }
        let mut batch: Option<LogMessage> = None;
        for seq in from.max(self.first_seq)..self.end_seq() {
            if !self.selected(seq, options) {
                continue;
            }
            let line = self.line(seq);
            match &mut batch {
                Some(b)
                    if b.stream == line.stream && b.data.len() + line.data.len() <= MAX_BATCH =>
                {
                    b.data.extend_from_slice(&line.data)
                }
                _ => news.extend(batch.replace(line.message(context))),
            }
        }
        news.extend(batch);
        let (end_seq, end_byte) = (self.end_seq(), self.end_byte);
        if let Some(follower) = self.followers.iter_mut().find(|f| f.id == id) {
            follower.next_seq = end_seq;
            follower.next_byte = end_byte;
        }
        (news, self.finished)
    }

    /// Where the oldest line of `stream` still held starts, in its stream's bytes:
    /// everything before it has been dropped.
    fn first_kept_byte(&self, stream: LogStream) -> u64 {
        let kept = self.lines.iter().find(|l| l.stream == stream);
        kept.map_or(self.end_byte[slot(stream)], |line| line.start)
    }

    fn wake_followers(&self) {
        for follower in &self.followers {
            // A full channel already holds a wake-up.
            let _ = follower.wake.try_send(());
        }
    }
}

impl Line {
    fn message(&self, context: &LogContext) -> LogMessage {
        LogMessage {
            context: context.clone(),
            timestamp: Some(self.time),
            stream: self.stream,
            data: self.data.clone(),
            attrs: Vec::new(),
        }
    }
}

/// The record of a gap in `stream`: no data, and how many bytes are missing.
fn gap(context: &LogContext, stream: LogStream, bytes: u64) -> LogMessage {
    LogMessage {
        context: context.clone(),
        timestamp: Some(SystemTime::now()),
        stream,
        data: Vec::new(),
        attrs: vec![(MISSED_BYTES.to_owned(), bytes.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogPublisherFn;

    fn collect(buffer: &LogBuffer, options: LogSubscriptionOptions) -> Vec<(LogStream, Vec<u8>)> {
        let out = Mutex::new(Vec::new());
        let publisher = LogPublisherFn(|_: &CancelToken, m: LogMessage| {
            out.lock().push((m.stream, m.data));
            Ok(())
        });
        buffer
            .publish(
                &CancelToken::new(),
                &publisher,
                &options,
                &LogContext::default(),
            )
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn lines_are_split_at_newlines_and_partial_lines_kept() {
        let buffer = LogBuffer::new(1 << 20);
        buffer.append(LogStream::Stdout, b"one\ntw");
        buffer.append(LogStream::Stderr, b"err\n");
        buffer.append(LogStream::Stdout, b"o\nthree");
        buffer.finish();
        let lines = collect(&buffer, LogSubscriptionOptions::default());
        let expected: Vec<(LogStream, Vec<u8>)> = vec![
            (LogStream::Stdout, b"one\n".to_vec()),
            (LogStream::Stderr, b"err\n".to_vec()),
            (LogStream::Stdout, b"two\n".to_vec()),
            (LogStream::Stdout, b"three".to_vec()),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn long_lines_are_split_not_lost() {
        let buffer = LogBuffer::new(1 << 20);
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        buffer.append(LogStream::Stdout, &long);
        buffer.finish();
        let lines = collect(&buffer, LogSubscriptionOptions::default());
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines.iter().map(|(_, d)| d.len()).sum::<usize>(),
            long.len()
        );
    }

    #[test]
    fn the_oldest_lines_go_once_full() {
        let buffer = LogBuffer::new(10 * (LINE_OVERHEAD + 4));
        for i in 0..1000 {
            buffer.append(LogStream::Stdout, format!("{i:03}\n").as_bytes());
        }
        assert!(buffer.held_bytes() <= 10 * 4);
        let lines = collect(&buffer, LogSubscriptionOptions::default());
        assert_eq!(lines.last().unwrap().1, b"999\n");
        assert_eq!(lines.len(), 10);
    }
}
