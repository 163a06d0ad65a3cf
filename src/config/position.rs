//! Maps each field path of a YAML document (`pools[0].health.interval`) to the line and
//! column where it is written, so validation errors can point into the file.
//!
//! serde gives values without positions; yaml-rust2's event parser gives positions. One pass
//! over its events records where every key and sequence item starts.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path → (line, column), both 1-based.
#[derive(Debug, Default)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Builds the map; a document the event parser rejects yields an empty map (serde reports
    /// the syntax error itself, with its own position).
    pub fn of(text: &str) -> Self {
        let mut recorder = Recorder::default();
        let _ = Parser::new_from_str(text).load(&mut recorder, false);
        Positions { map: recorder.map }
    }

    /// Position of `path`, or of its nearest recorded ancestor, or 1:1.
    pub fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.map.get("").copied().unwrap_or((1, 1)),
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Recorder {
    map: HashMap<String, (usize, usize)>,
    stack: Vec<Frame>,
}

impl Recorder {
    /// Path of the node that starts now, or None when the node is a mapping key.
    fn node_path(&mut self, ev: &Event, mark: Marker) -> Option<String> {
        let pos = (mark.line(), mark.col() + COL_BASE);
        match self.stack.last_mut() {
            None => {
                self.map.entry(String::new()).or_insert(pos);
                Some(String::new())
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.map.entry(p.clone()).or_insert(pos);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    let name = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => "?".to_string(),
                    };
                    let p = join(path, &name);
                    self.map.entry(p).or_insert(pos);
                    *key = Some(name);
                    None
                }
                Some(name) => Some(join(path, &name)),
            },
        }
    }
}

/// yaml-rust2 markers count columns from 0; editors count from 1.
const COL_BASE: usize = 1;

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                self.node_path(&ev, mark);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node_path(&ev, mark) {
                    self.stack.push(Frame::Map { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.node_path(&ev, mark) {
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_and_items() {
        let text = "admin:\n  listen: x\npools:\n  - name: web\n    nodes:\n      - { name: a, addr: \"1\" }\n";
        let p = Positions::of(text);
        assert_eq!(p.find("admin.listen"), (2, 3));
        assert_eq!(p.find("pools[0].name"), (4, 5));
        assert_eq!(p.find("pools[0].nodes[0].addr"), (6, 20));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(p.find("pools[0].nodes[0].addr.zzz"), (6, 20));
    }
}
