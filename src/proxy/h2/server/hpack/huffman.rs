//! HPACK's Huffman code (RFC 7541 §5.2): decoding four bits at a time through a table built
//! once from the code itself.

use std::sync::OnceLock;

use super::huffman_table::CODES;

/// A string whose Huffman code is broken: EOS inside it, or padding that is not a prefix
/// of EOS or is 8 bits or longer (RFC 7541 §5.2).
#[derive(Debug, PartialEq, Eq)]
pub struct BadHuffman;

/// One step of the decoder: from a state, on four input bits.
#[derive(Clone, Copy, Default)]
struct Step {
    next: u16,
    /// The octet completed on the way, if one was.
    emit: Option<u8>,
    /// EOS was decoded: the string is broken.
    fail: bool,
}

struct Decoder {
    steps: Vec<Step>,
    /// States where the input may end: all ones since the last octet, fewer than 8 of them.
    accepting: Vec<bool>,
}

/// The code's binary tree: internal nodes are states, leaves octets (256 is EOS).
fn tree() -> (Vec<[Node; 2]>, Vec<(u8, bool)>) {
    let mut nodes = vec![[Node::Empty; 2]];
    // Depth and "all ones so far" of each internal node.
    let mut shape = vec![(0u8, true)];
    let eos = (0x3fff_ffffu32, 30u8);
    for (sym, &(code, len)) in CODES.iter().chain(std::iter::once(&eos)).enumerate() {
        let mut at = 0usize;
        for i in (0..len).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                nodes[at][bit] = Node::Leaf(sym as u16);
            } else {
                at = match nodes[at][bit] {
                    Node::Inner(n) => n as usize,
                    _ => {
                        let n = nodes.len();
                        nodes.push([Node::Empty; 2]);
                        let (depth, ones) = shape[at];
                        shape.push((depth + 1, ones && bit == 1));
                        nodes[at][bit] = Node::Inner(n as u16);
                        n
                    }
                };
            }
        }
    }
    (nodes, shape)
}

#[derive(Clone, Copy)]
enum Node {
    Empty,
    Inner(u16),
    Leaf(u16),
}

fn decoder() -> &'static Decoder {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    DECODER.get_or_init(|| {
        let (nodes, shape) = tree();
        let mut steps = vec![Step::default(); nodes.len() * 16];
        for state in 0..nodes.len() {
            for nibble in 0..16u8 {
                let mut at = state;
                let mut step = Step::default();
                for i in (0..4).rev() {
                    match nodes[at][usize::from((nibble >> i) & 1)] {
                        Node::Inner(n) => at = usize::from(n),
                        Node::Leaf(256) | Node::Empty => {
                            step.fail = true;
                            break;
                        }
                        Node::Leaf(sym) => {
                            step.emit = Some(sym as u8);
                            at = 0;
                        }
                    }
                }
                step.next = at as u16;
                steps[state * 16 + usize::from(nibble)] = step;
            }
        }
        let accepting = shape.iter().map(|&(d, ones)| ones && d < 8).collect();
        Decoder { steps, accepting }
    })
}

/// Decodes `src` onto the end of `out`.
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), BadHuffman> {
    let d = decoder();
    let mut state = 0usize;
    for &b in src {
        for nibble in [b >> 4, b & 0xf] {
            let step = d.steps[state * 16 + usize::from(nibble)];
            if step.fail {
                return Err(BadHuffman);
            }
            if let Some(o) = step.emit {
                out.push(o);
            }
            state = usize::from(step.next);
        }
    }
    if d.accepting[state] {
        Ok(())
    } else {
        Err(BadHuffman)
    }
}

/// The length of `src` Huffman-coded.
#[cfg(test)]
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src
        .iter()
        .map(|&b| usize::from(CODES[usize::from(b)].1))
        .sum();
    bits.div_ceil(8)
}

/// Appends `src` Huffman-coded to `out`, padded with ones (handoff sends plain literals;
/// the tests check the decoder against this).
#[cfg(test)]
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let (mut acc, mut n) = (0u64, 0u32);
    for &b in src {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        n += u32::from(len);
        while n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
    }
    if n > 0 {
        out.push(((acc << (8 - n)) | (0xff >> n)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::super::hex;
    use super::*;

    #[test]
    fn rfc_7541_examples_decode_and_encode() {
        // RFC 7541 C.4.1 and C.6.1.
        for (coded, plain) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
        ] {
            let mut out = Vec::new();
            decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            let mut back = Vec::new();
            encode(plain.as_bytes(), &mut back);
            assert_eq!(back, hex(coded));
            assert_eq!(encoded_len(plain.as_bytes()), back.len());
        }
    }

    #[test]
    fn every_octet_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut coded = Vec::new();
        encode(&all, &mut coded);
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // 'a' is 00011 (5 bits): padded with zeros instead of ones.
        assert_eq!(decode(&[0b0001_1000], &mut Vec::new()), Err(BadHuffman));
        // A whole byte of padding (8 ones) after 'a' + 3 ones.
        assert_eq!(
            decode(&[0b0001_1111, 0xff], &mut Vec::new()),
            Err(BadHuffman)
        );
        // EOS itself: thirty ones.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(BadHuffman)
        );
    }
}
