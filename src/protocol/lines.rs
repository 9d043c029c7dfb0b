//! `lines` splits `\n`-terminated request lines out of a read buffer
//! without copying, and bounds their length.

/// What the line splitter found.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    Line(&'a [u8]),
    /// A line (or the unterminated rest of the buffer) exceeds the limit.
    TooLong,
}

/// Splits `\n`-terminated lines out of a read buffer without copying.
/// `scanned` remembers how far the buffer was searched, so a slow client
/// sending a long line costs linear, not quadratic, time.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    start: usize,
    scanned: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            start: 0,
            scanned: 0,
        }
    }

    /// The next complete line in `buf`, if any. A trailing `\r` is dropped.
    pub fn next<'b>(&mut self, buf: &'b [u8]) -> Option<Frame<'b>> {
        let from = self.scanned.max(self.start);
        match buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = from + i;
                let mut line = &buf[self.start..end];
                self.start = end + 1;
                self.scanned = self.start;
                if line.len() > self.max {
                    return Some(Frame::TooLong);
                }
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                Some(Frame::Line(line))
            }
            None => {
                self.scanned = buf.len();
                if buf.len() - self.start > self.max {
                    Some(Frame::TooLong)
                } else {
                    None
                }
            }
        }
    }

    /// Bytes consumed so far; the caller drops them from its buffer and
    /// then calls [`LineSplitter::reset`].
    pub fn consumed(&self) -> usize {
        self.start
    }

    pub fn reset(&mut self) {
        self.scanned -= self.start;
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splitter_finds_lines_and_limits_length() {
        let mut s = LineSplitter::new(8);
        let buf = b"{\"a\":1}\r\nabc\n12345";
        assert_eq!(s.next(buf), Some(Frame::Line(b"{\"a\":1}")));
        assert_eq!(s.next(buf), Some(Frame::Line(b"abc")));
        assert_eq!(s.next(buf), None);
        assert_eq!(s.consumed(), 13);
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next(b"123456"), Some(Frame::TooLong));
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next(b"12345\n"), Some(Frame::TooLong));
    }

    proptest! {
        #[test]
        fn splitter_round_trips(lines in proptest::collection::vec("[a-z{}\":,0-9]{0,20}", 0..20), cut in 0usize..400) {
            let joined: Vec<u8> = lines.iter().flat_map(|l| l.bytes().chain([b'\n'])).collect();
            let cut = cut.min(joined.len());
            // Feed in two reads, as a socket would.
            let mut s = LineSplitter::new(64);
            let mut buf = joined[..cut].to_vec();
            let mut got = Vec::new();
            while let Some(Frame::Line(l)) = s.next(&buf) { got.push(l.to_vec()); }
            let used = s.consumed();
            buf.drain(..used);
            s.reset();
            buf.extend_from_slice(&joined[cut..]);
            while let Some(Frame::Line(l)) = s.next(&buf) { got.push(l.to_vec()); }
            let want: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            prop_assert_eq!(got, want);
        }

    }
}
