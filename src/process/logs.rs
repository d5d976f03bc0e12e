//! The bounded buffer of a process's captured output, and its subscriptions.

use std::collections::VecDeque;
use std::time::SystemTime;

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

use crate::api::{LogContext, LogMessage, LogStream, LogSubscriptionOptions};
use crate::{CancelToken, Error, LogPublisher};

/// The longest line kept whole; longer ones are split into lines of this size.
const MAX_LINE: usize = 16 * 1024;

/// What each line costs beside its bytes, so that many tiny lines stay bounded too.
const LINE_OVERHEAD: usize = 64;

/// Output lines, oldest first, bounded in bytes: once full, the oldest lines go.
pub(crate) struct LogBuffer {
    state: Mutex<State>,
}

struct State {
    lines: VecDeque<Line>,
    /// The sequence number of `lines[0]`.
    first_seq: u64,
    bytes: usize,
    capacity: usize,
    /// Unterminated tails of stdout and stderr.
    partial: [Vec<u8>; 2],
    /// No more output will come: followers stop once they have read everything.
    finished: bool,
    followers: Vec<Sender<()>>,
}

struct Line {
    stream: LogStream,
    time: SystemTime,
    data: Vec<u8>,
}

impl Line {
    fn cost(&self) -> usize {
        self.data.len() + LINE_OVERHEAD
    }
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
                bytes: 0,
                capacity,
                partial: [Vec::new(), Vec::new()],
                finished: false,
                followers: Vec::new(),
            }),
        }
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
                state.push(Line {
                    stream,
                    time: now,
                    data,
                });
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
                state.push(Line {
                    stream,
                    time: now,
                    data,
                });
            }
        }
        state.finished = true;
        state.wake_followers();
    }

    /// The bytes of output held, without the per-line overhead.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        let state = self.state.lock();
        state.lines.iter().map(|l| l.data.len()).sum()
    }

    /// Publishes the lines `options` selects, then, when following, new lines until
    /// the output is finished or `cancel` is done.
    pub(crate) fn publish(
        &self,
        cancel: &CancelToken,
        publisher: &dyn LogPublisher,
        options: &LogSubscriptionOptions,
        context: &LogContext,
    ) -> Result<(), Error> {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let (backlog, mut next_seq, finished) = {
            let mut state = self.state.lock();
            let mut seqs: Vec<u64> = state
                .seqs()
                .filter(|&seq| state.selected(seq, options))
                .collect();
            if let Some(tail) = options.tail {
                let keep = usize::try_from(tail).unwrap_or(usize::MAX);
                seqs.drain(..seqs.len().saturating_sub(keep));
            }
            if options.follow {
                state.followers.push(wake_tx);
            }
            let messages: Vec<LogMessage> = seqs
                .into_iter()
                .map(|seq| state.message(seq, context))
                .collect();
            (messages, state.end_seq(), state.finished)
        };
        publish_all(cancel, publisher, backlog)?;
        if !options.follow || finished {
            return Ok(());
        }
        loop {
            if !wait_for_news(cancel, &wake_rx) {
                return Ok(());
            }
            let (news, finished) = {
                let state = self.state.lock();
                let from = next_seq.max(state.first_seq);
                let news: Vec<LogMessage> = (from..state.end_seq())
                    .filter(|&seq| state.selected(seq, options))
                    .map(|seq| state.message(seq, context))
                    .collect();
                next_seq = state.end_seq();
                (news, state.finished)
            };
            publish_all(cancel, publisher, news)?;
            if finished {
                return Ok(());
            }
        }
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
    fn push(&mut self, line: Line) {
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

    fn message(&self, seq: u64, context: &LogContext) -> LogMessage {
        let line = self.line(seq);
        LogMessage {
            context: context.clone(),
            timestamp: Some(line.time),
            stream: line.stream,
            data: line.data.clone(),
            attrs: Vec::new(),
        }
    }

    /// Wakes every follower; those that have gone away are forgotten.
    fn wake_followers(&mut self) {
        self.followers.retain(|f| {
            !matches!(
                f.try_send(()),
                Err(crossbeam_channel::TrySendError::Disconnected(_))
            )
        });
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
