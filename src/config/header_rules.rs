//! Per-route header rules (`request_headers`, `response_headers`): fields removed, set
//! (replacing any the message had) and added, with values that may name a few variables.
//!
//! Parsed and checked here, once, at load or reload; the data path only renders the
//! templates ([`Template::render`]) and asks [`HeaderRules::replaces`].

use std::collections::BTreeMap;

use serde::Deserialize;

/// `request_headers:` / `response_headers:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRules {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A variable a value may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `${request_id}`: the request's ID (empty without `request_id:`).
    RequestId,
    /// `${node}`: the name of the node that answered.
    Node,
    /// `${node_version}`: the version that node reports (empty when unknown).
    NodeVersion,
    /// `${client_ip}`: the client's address, without its port.
    ClientIp,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "request_id" => Var::RequestId,
            "node" => Var::Node,
            "node_version" => Var::NodeVersion,
            "client_ip" => Var::ClientIp,
            _ => return None,
        })
    }

    /// Whether its value is known only once a node answered.
    pub fn of_node(self) -> bool {
        matches!(self, Var::Node | Var::NodeVersion)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<[u8]>),
    Var(Var),
}

/// A field value, literal text and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `${name}` references; `$$` is a literal `$`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$$") {
                literal.push('$');
                rest = after;
                continue;
            }
            let Some(inner) = rest.strip_prefix("${") else {
                return Err("a `$` starts `${variable}` (write `$$` for a literal `$`)".into());
            };
            let Some(end) = inner.find('}') else {
                return Err("`${` without its closing `}`".into());
            };
            let name = &inner[..end];
            let var = Var::parse(name).ok_or_else(|| {
                format!("unknown variable ${{{name}}}: expected ${{request_id}}, ${{node}}, ${{node_version}} or ${{client_ip}}")
            })?;
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal).into_bytes().into()));
            }
            parts.push(Part::Var(var));
            rest = &inner[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into_bytes().into()));
        }
        if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err("a field value cannot hold CR, LF or NUL".into());
        }
        Ok(Template(parts))
    }

    /// The variables it names.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.0.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            Part::Text(_) => None,
        })
    }

    /// Appends the value, each variable as `value` gives it (absent: empty).
    pub fn render<'v>(&self, out: &mut Vec<u8>, value: impl Fn(Var) -> Option<&'v [u8]>) {
        for part in &self.0 {
            match part {
                Part::Text(t) => out.extend_from_slice(t),
                Part::Var(v) => out.extend_from_slice(value(*v).unwrap_or_default()),
            }
        }
    }
}

/// One direction's rules: `remove` first, then `set` (replacing), then `add` (appending).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    /// Lower-case names.
    pub remove: Vec<String>,
    pub set: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
}

impl HeaderRules {
    /// Whether a field the message carries is dropped (removed, or replaced by `set`).
    pub fn replaces(&self, name: &str) -> bool {
        self.remove.iter().any(|r| r.eq_ignore_ascii_case(name))
            || self.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The fields to write: `set` then `add`, in that order.
    pub fn fields(&self) -> impl Iterator<Item = &(String, Template)> {
        self.set.iter().chain(&self.add)
    }

    /// Every variable the rules name.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.fields().flat_map(|(_, t)| t.vars())
    }
}

/// Fields no rule may touch: hop-by-hop ones and those the framing rests on (handoff
/// writes them itself, per hop).
pub const FORBIDDEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Whether `name` is a field name (an RFC 9110 token).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(t: &str) -> String {
        let mut out = Vec::new();
        Template::parse(t).unwrap().render(&mut out, |v| match v {
            Var::Node => Some(&b"a"[..]),
            Var::NodeVersion => None,
            _ => Some(&b"x"[..]),
        });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates_render_their_variables() {
        assert_eq!(rendered("plain"), "plain");
        assert_eq!(rendered("${node}@${node_version}"), "a@");
        assert_eq!(
            rendered("id=${request_id}; ip=${client_ip} $$5"),
            "id=x; ip=x $5"
        );
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("${nope}")
            .unwrap_err()
            .contains("unknown variable ${nope}"));
        assert!(Template::parse("${node").unwrap_err().contains("closing"));
        assert!(Template::parse("5$").is_err());
        assert!(Template::parse("a\r\nb").is_err());
    }
}
