//! The pair guard across instances: a drain may not leave any live instance without a node
//! it can send new sessions to. Each instance has its own path to the nodes, so "is another
//! node serving" is asked of each instance's own view (its published [`View`]), not of this
//! instance's.
//!
//! A drain only makes an instance worse off when it takes a node that instance still serves
//! with; an instance that already sees the node down, or has nothing left anyway, is not
//! made worse by it (as the local guard does not refuse draining a node that is down).

use std::collections::BTreeMap;

use super::store::{Member, View, ViewNode};

/// The views the guard judges: every other live instance's, where a member whose view has
/// not arrived yet is judged by its report (the same admin state and health, a little later).
pub fn others(
    mut views: BTreeMap<String, View>,
    members: &BTreeMap<String, Member>,
    own: &str,
) -> BTreeMap<String, View> {
    for (name, m) in members {
        views.entry(name.clone()).or_insert_with(|| View {
            nodes: m
                .nodes
                .iter()
                .map(|(k, n)| {
                    let node = ViewNode {
                        state: n.state.clone(),
                        health: n.health.clone(),
                    };
                    (k.clone(), node)
                })
                .collect(),
        });
    }
    views.remove(own);
    views
}

/// Whether draining `node` of `pool` leaves every instance in `views` a serving node.
/// `admitted(n)`: whether node `n` is let in by the shared admin state (not drained or
/// draining) as the write will find it. `Err`: why not, naming the instance.
pub fn check(
    pool: &str,
    nodes: &[&str],
    node: &str,
    admitted: impl Fn(&str) -> bool,
    views: &BTreeMap<String, View>,
) -> Result<(), String> {
    let key = |n: &str| format!("{pool}/{n}");
    for (instance, view) in views {
        let serves = |n: &str| view.nodes.get(&key(n)).is_some_and(|v| v.serving());
        if !serves(node) {
            continue;
        }
        if nodes.iter().any(|n| *n != node && admitted(n) && serves(n)) {
            continue;
        }
        let others: Vec<String> = nodes
            .iter()
            .filter(|n| **n != node)
            .map(|n| match view.nodes.get(&key(n)) {
                Some(v) if admitted(n) => format!("{n} is {}/{}", v.state, v.health),
                Some(v) => format!("{n} is {}/{} and being drained", v.state, v.health),
                None => format!("{n} is unknown there"),
            })
            .collect();
        let why = if others.is_empty() {
            "it is the only node".to_string()
        } else {
            others.join(", ")
        };
        return Err(format!(
            "instance {instance} would keep no serving node ({why}, as {instance} sees them)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::ViewNode;

    fn view(nodes: &[(&str, &str, &str)]) -> View {
        View {
            nodes: nodes
                .iter()
                .map(|(n, state, health)| {
                    (
                        format!("web/{n}"),
                        ViewNode {
                            state: state.to_string(),
                            health: health.to_string(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn views(all: &[(&str, View)]) -> BTreeMap<String, View> {
        all.iter()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn an_instance_that_sees_the_sibling_down_blocks_the_drain() {
        let all = views(&[
            (
                "lb-1",
                view(&[("a", "active", "up"), ("b", "active", "up")]),
            ),
            (
                "lb-2",
                view(&[("a", "active", "down"), ("b", "active", "up")]),
            ),
        ]);
        let nodes = ["a", "b"];
        let err = check("web", &nodes, "b", |_| true, &all).unwrap_err();
        assert!(
            err.contains("instance lb-2 would keep no serving node"),
            "{err}"
        );
        assert!(err.contains("a is active/down"), "{err}");
        // Draining a takes nothing lb-2 serves with, and lb-1 keeps b.
        assert_eq!(check("web", &nodes, "a", |_| true, &all), Ok(()));
    }

    #[test]
    fn a_node_being_drained_does_not_count_as_serving() {
        let all = views(&[(
            "lb-1",
            view(&[("a", "active", "up"), ("b", "active", "up")]),
        )]);
        let nodes = ["a", "b"];
        // b's drain is already in etcd, not yet applied by lb-1: a must stay.
        let err = check("web", &nodes, "a", |n| n != "b", &all).unwrap_err();
        assert!(err.contains("b is active/up and being drained"), "{err}");
    }

    #[test]
    fn an_instance_left_with_nothing_anyway_does_not_block() {
        let all = views(&[
            (
                "lb-1",
                view(&[("a", "active", "up"), ("b", "active", "up")]),
            ),
            (
                "lb-2",
                view(&[("a", "active", "down"), ("b", "active", "down")]),
            ),
            ("lb-3", view(&[])),
        ]);
        assert_eq!(check("web", &["a", "b"], "a", |_| true, &all), Ok(()));
        let only = views(&[("lb-1", view(&[("a", "warming", "up")]))]);
        let err = check("web", &["a"], "a", |_| true, &only).unwrap_err();
        assert!(err.contains("it is the only node"), "{err}");
    }
}
