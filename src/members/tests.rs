use super::*;

fn file(nodes: &[(&str, &str)]) -> Config {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(n, a)| format!("{{ name: {n}, addr: \"{a}\" }}"))
        .collect();
    crate::config::parse(&format!(
        "listeners: [ {{ name: web, listen: \"127.0.0.1:0\", protocol: http, routes: [ {{ pool: web }} ] }} ]\npools: [ {{ name: web, nodes: [ {} ] }} ]\n",
        nodes.join(", ")
    ))
    .unwrap()
}

fn node(name: &str, addr: &str) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        addr: addr.parse().unwrap(),
        weight: 100,
        source: NodeSource::Api,
        host: None,
    }
}

fn names(c: &Config) -> Vec<(String, String, u32)> {
    c.pools[0]
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr.to_string(), n.weight))
        .collect()
}

fn row(n: &str, a: &str, w: u32) -> (String, String, u32) {
    (n.into(), a.into(), w)
}

#[test]
fn add_set_remove_apply_to_the_file() {
    let f = file(&[("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")]);
    let mut m = Membership::default();
    m.add(&f, "web", node("c", "127.0.0.1:3")).unwrap();
    assert_eq!(
        m.add(&f, "web", node("a", "127.0.0.1:9")),
        Err(MemberError::Exists {
            pool: "web".into(),
            node: "a".into()
        })
    );
    assert!(matches!(
        m.add(&f, "nope", node("x", "127.0.0.1:9")),
        Err(MemberError::UnknownPool(_))
    ));
    m.set(&f, "web", "a", Some("127.0.0.1:11".parse().unwrap()), None)
        .unwrap();
    m.set(&f, "web", "c", None, Some(50)).unwrap();
    m.remove(&f, "web", "b").unwrap();
    let e = m.effective(&f);
    assert_eq!(
        names(&e),
        [row("a", "127.0.0.1:11", 100), row("c", "127.0.0.1:3", 50)]
    );
    assert_eq!(e.pools[0].nodes[1].source, NodeSource::Api);
    // Setting a file node back to what the file says leaves no change behind.
    m.set(&f, "web", "a", Some("127.0.0.1:1".parse().unwrap()), None)
        .unwrap();
    assert!(!m.pools["web"].changed.contains_key("a"));
    // A removed file node added again comes back as a file node, with what differs.
    m.add(&f, "web", node("b", "127.0.0.1:22")).unwrap();
    assert!(m.pools["web"].removed.is_empty());
    assert_eq!(
        m.pools["web"].changed["b"].addr,
        Some("127.0.0.1:22".parse().unwrap())
    );
    m.remove(&f, "web", "c").unwrap();
    m.remove(&f, "web", "b").unwrap();
    assert_eq!(
        m.remove(&f, "web", "a"),
        Err(MemberError::LastNode {
            pool: "web".into(),
            node: "a".into()
        })
    );
    // Removing an API node leaves no trace.
    assert!(m.pools["web"].added.is_empty());
}

#[test]
fn a_reload_keeps_what_the_api_did_to_nodes_the_file_left_alone() {
    let old = file(&[("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")]);
    let mut m = Membership::default();
    m.add(&old, "web", node("c", "127.0.0.1:3")).unwrap();
    m.set(&old, "web", "a", None, Some(7)).unwrap();
    m.set(&old, "web", "b", None, Some(8)).unwrap();
    // The same file: everything stays.
    assert_eq!(m.rebase(&old, &old).unwrap(), m);
    // The file moves b: the file wins for b; a keeps its weight, c stays.
    let new = file(&[("a", "127.0.0.1:1"), ("b", "127.0.0.1:20")]);
    let r = m.rebase(&old, &new).unwrap();
    assert_eq!(
        names(&r.effective(&new)),
        [
            row("a", "127.0.0.1:1", 7),
            row("b", "127.0.0.1:20", 100),
            row("c", "127.0.0.1:3", 100)
        ]
    );
    // The file adds a node named like the API's: an error naming both, nothing kept.
    let clash = file(&[
        ("a", "127.0.0.1:1"),
        ("b", "127.0.0.1:2"),
        ("c", "127.0.0.1:30"),
    ]);
    let err = m.rebase(&old, &clash).unwrap_err().to_string();
    assert!(
        err.contains("web/c (127.0.0.1:30)") && err.contains("127.0.0.1:3"),
        "{err}"
    );
}

#[test]
fn a_state_file_fits_a_changed_file() {
    let old = file(&[("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")]);
    let mut m = Membership::default();
    m.add(&old, "web", node("c", "127.0.0.1:3")).unwrap();
    m.add(&old, "web", node("d", "127.0.0.1:4")).unwrap();
    m.remove(&old, "web", "b").unwrap();
    let now = file(&[("a", "127.0.0.1:1"), ("c", "127.0.0.1:30")]);
    let (fit, dropped) = m.fit(&now);
    assert_eq!(
        names(&fit.effective(&now)),
        [
            row("a", "127.0.0.1:1", 100),
            row("c", "127.0.0.1:30", 100),
            row("d", "127.0.0.1:4", 100)
        ]
    );
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let json = serde_json::to_string(&fit).unwrap();
    assert_eq!(serde_json::from_str::<Membership>(&json).unwrap(), fit);
    assert!(serde_json::from_str::<Membership>(
        r#"{"pools":{"web":{"added":{"x":{"addr":"nope","weight":1,"source":"api"}}}}}"#
    )
    .is_err());
}
