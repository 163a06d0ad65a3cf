//! Header rules applied to a message on its way through (`request_headers`,
//! `response_headers`): on an HTTP/1 head as it is written, or on an HTTP/2 header map.
//! The rules were checked when the config was loaded; here they are only rendered. Below
//! [`super::head`] and [`super::response`], which call it as they write heads.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::header_rules::{HeaderRules, Var};

/// What a rule's variables stand for, for one message.
#[derive(Default, Clone, Copy)]
pub struct Vars<'a> {
    pub request_id: Option<&'a [u8]>,
    pub node: Option<&'a str>,
    pub node_version: Option<&'a str>,
    pub client_ip: &'a [u8],
}

impl<'a> Vars<'a> {
    fn get(&self, var: Var) -> Option<&'a [u8]> {
        match var {
            Var::RequestId => self.request_id,
            Var::Node => self.node.map(str::as_bytes),
            Var::NodeVersion => self.node_version.map(str::as_bytes),
            Var::ClientIp => Some(self.client_ip),
        }
    }
}

/// Writes the rules' `set` and `add` fields as HTTP/1 fields. A value that renders empty
/// (a node that reports no version, say) leaves its field out.
pub fn write_fields(out: &mut Vec<u8>, rules: &HeaderRules, vars: &Vars<'_>) {
    let mut value = Vec::new();
    for (name, template) in rules.fields() {
        value.clear();
        template.render(&mut value, |v| vars.get(v));
        if !value.is_empty() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Applies the rules to a header map: `remove`, then `set` (replacing), then `add`.
pub fn apply(map: &mut HeaderMap, rules: &HeaderRules, vars: &Vars<'_>) {
    for name in &rules.remove {
        map.remove(name.as_str());
    }
    let mut value = Vec::new();
    for (i, (name, template)) in rules.fields().enumerate() {
        value.clear();
        template.render(&mut value, |v| vars.get(v));
        // Checked at load: a token, and a value without CR, LF or NUL.
        let (Ok(name), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) else {
            continue;
        };
        if i < rules.set.len() {
            map.remove(&name);
        }
        if !value.is_empty() {
            map.append(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::header_rules::Template;

    fn rules() -> HeaderRules {
        HeaderRules {
            remove: vec!["server".into()],
            set: vec![(
                "X-Served-By".into(),
                Template::parse("${node}/${node_version}").unwrap(),
            )],
            add: vec![
                ("Via".into(), Template::parse("handoff").unwrap()),
                (
                    "X-Empty".into(),
                    Template::parse("${node_version}").unwrap(),
                ),
            ],
        }
    }

    #[test]
    fn maps_get_removed_set_and_added_fields() {
        let mut map = HeaderMap::new();
        map.insert("server", HeaderValue::from_static("x"));
        map.insert("x-served-by", HeaderValue::from_static("spoofed"));
        map.insert("via", HeaderValue::from_static("1.1 other"));
        let vars = Vars {
            node: Some("a"),
            node_version: Some("2.0"),
            ..Default::default()
        };
        apply(&mut map, &rules(), &vars);
        assert!(map.get("server").is_none());
        assert_eq!(map["x-served-by"], "a/2.0");
        let via: Vec<_> = map.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 other", "handoff"]);
        assert_eq!(map["x-empty"], "2.0");
    }

    #[test]
    fn empty_values_leave_their_field_out() {
        let mut out = Vec::new();
        write_fields(&mut out, &rules(), &Vars::default());
        assert_eq!(out, b"X-Served-By: /\r\nVia: handoff\r\n");
    }
}
