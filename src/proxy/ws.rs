//! Just enough of WebSocket framing (RFC 6455 §5.2) to close a tunnel politely: a tracker
//! that follows frame boundaries in a byte stream, so a close frame is only ever injected
//! between frames, and the close frames themselves (code 1001, "going away").

/// Close frame 1001 from handoff to a client: servers send unmasked frames.
pub const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Close frame 1001 from handoff to a backend: clients must mask their frames.
pub fn close_to_server(mask: [u8; 4]) -> [u8; 8] {
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        0x03 ^ mask[0],
        0xE9 ^ mask[1],
    ]
}

/// Follows frame boundaries across arbitrary chunks of a WebSocket byte stream.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// Header bytes of the frame being read, when its header is incomplete.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
}

impl FrameTracker {
    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Follows `data`; returns the offset just after the first frame boundary reached within
    /// it (`None` when `data` ends inside a frame and crosses no boundary).
    pub fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let mut first = None;
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = (data.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
                self.remaining -= take as u64;
                i += take;
            } else {
                self.header[self.header_len] = data[i];
                self.header_len += 1;
                i += 1;
                if let Some(payload) = self.header_complete() {
                    self.header_len = 0;
                    self.remaining = payload;
                }
            }
            if self.at_boundary() && first.is_none() {
                first = Some(i);
            }
        }
        first
    }

    /// The payload length once the header is complete.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.header[..self.header_len];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (len_bytes, short) = match h[1] & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let needed = 2 + len_bytes + if masked { 4 } else { 0 };
        if h.len() < needed {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            h[2..2 + len_bytes]
                .iter()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_frames_split_anywhere() {
        // A masked 5-byte text frame, a 200-byte binary frame (16-bit length), then a ping.
        let mut stream = vec![
            0x81,
            0x85,
            1,
            2,
            3,
            4,
            b'h' ^ 1,
            b'e' ^ 2,
            b'l' ^ 3,
            b'l' ^ 4,
            b'o' ^ 1,
        ];
        stream.extend([0x82, 126, 0, 200]);
        stream.extend(std::iter::repeat_n(7u8, 200));
        stream.extend([0x89, 0x00]);
        let boundaries = [11, 11 + 4 + 200, stream.len()];
        for split in 1..stream.len() {
            let mut t = FrameTracker::default();
            let first = t.feed(&stream[..split]);
            let expected = boundaries.iter().copied().find(|&b| b <= split);
            assert_eq!(first, expected, "split at {split}");
            t.feed(&stream[split..]);
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn close_frames_carry_1001() {
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
        let masked = close_to_server([9, 8, 7, 6]);
        assert_eq!(u16::from_be_bytes([masked[6] ^ 9, masked[7] ^ 8]), 1001);
        let mut t = FrameTracker::default();
        assert_eq!(t.feed(&masked), Some(8));
    }
}
