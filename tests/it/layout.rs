//! The layout of `src/`, checked: the modules side by side under one parent (its files and
//! folders) refer to each other one way only, so that a reader can take them in an order
//! and a change to one never comes back round. A module's own files may use what its
//! `mod.rs` declares, and it them: that is one module's inside, not a circle between
//! modules.
//!
//! References are read off the source: `use` trees (groups included), `crate::`,
//! `super::` and `self::` paths, and a child module named by its bare name. Comments are
//! left out, so doc links do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every module of the crate (`[]` is the crate root) and its source, comments removed.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
        .into_iter()
        .map(|path: PathBuf| {
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code: Vec<&str> = text
                .lines()
                .map(|l| l.split("//").next().unwrap())
                .collect();
            (module, code.join("\n"))
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths of a `use` tree (`a::{b, c::{d, e}}`), each as its segments; renames dropped.
fn use_paths(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let part = part.split(" as ").next().unwrap().trim();
        match part.split_once('{') {
            Some((head, rest)) => {
                let Some(inner) = rest.rfind('}').map(|end| &rest[..end]) else {
                    continue;
                };
                let mut p = prefix.to_vec();
                p.extend(
                    head.split("::")
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
                use_paths(inner, &p, out);
            }
            None => {
                let mut p = prefix.to_vec();
                p.extend(
                    part.split("::")
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
                out.push(p);
            }
        }
    }
}

/// The paths `code` names: `use` trees, and `crate::` / `super::` / `self::` paths.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + 4..];
        if before.is_some_and(is_ident) {
            continue;
        }
        if let Some(end) = rest.find(';') {
            let tree: String = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
            if tree.matches('{').count() == tree.matches('}').count() {
                use_paths(
                    &tree.replace(" ::", "::").replace(":: ", "::"),
                    &[],
                    &mut out,
                );
            }
        }
    }
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root) {
            let start = from + at;
            from = start + root.len();
            if code[..start]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == ':')
            {
                continue;
            }
            let end = code[start..]
                .find(|c: char| !(is_ident(c) || c == ':'))
                .map_or(code.len(), |e| start + e);
            out.push(
                code[start..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
    }
    out
}

/// The deepest module a path names (its item's module).
fn resolve(path: &[String], modules: &BTreeMap<Module, String>) -> Module {
    (0..=path.len())
        .rev()
        .map(|i| path[..i].to_vec())
        .find(|m| modules.contains_key(m))
        .unwrap_or_default()
}

/// Which module refers to which, by module.
fn references(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut refs: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, code) in modules {
        let child = |name: &str| {
            let mut c = m.clone();
            c.push(name.to_string());
            modules.contains_key(&c).then_some(c)
        };
        let mut targets = BTreeSet::new();
        for segs in paths(code) {
            let Some(first) = segs.first() else { continue };
            let path: Vec<String> = match first.as_str() {
                "crate" => segs[1..].to_vec(),
                "self" => m.iter().chain(&segs[1..]).cloned().collect(),
                "super" => {
                    let up = segs.iter().take_while(|s| *s == "super").count();
                    let base = &m[..m.len().saturating_sub(up)];
                    base.iter().chain(&segs[up..]).cloned().collect()
                }
                name => match child(name) {
                    Some(_) => m.iter().chain(&segs).cloned().collect(),
                    None => continue,
                },
            };
            targets.insert(resolve(&path, modules));
        }
        // A child module named by its bare name (`exchange::busy(..)`).
        for (i, _) in code.match_indices("::") {
            let start = code[..i].rfind(|c: char| !is_ident(c)).map_or(0, |s| s + 1);
            if code[..start].ends_with("::") || start == i {
                continue;
            }
            if let Some(c) = child(&code[start..i]) {
                targets.insert(c);
            }
        }
        targets.remove(m);
        targets.remove(&Vec::new());
        refs.insert(m.clone(), targets);
    }
    refs
}

/// References between siblings: `a::x::y` naming `a::z` is `a::x` naming `a::z`; one from
/// a module to its own parent or child is not between siblings.
fn sibling_edges(
    refs: &BTreeMap<Module, BTreeSet<Module>>,
) -> BTreeMap<Module, BTreeMap<Module, String>> {
    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for (m, targets) in refs {
        for t in targets {
            let common = m.iter().zip(t).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == t.len() {
                continue;
            }
            let (a, b) = (m[..=common].to_vec(), t[..=common].to_vec());
            edges
                .entry(a)
                .or_default()
                .entry(b)
                .or_insert_with(|| format!("{} names {}", m.join("::"), t.join("::")));
        }
    }
    edges
}

/// A circle of `edges`, if there is one, as the modules along it.
fn circle(edges: &BTreeMap<Module, BTreeMap<Module, String>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeMap<Module, String>>,
        done: &mut BTreeSet<Module>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some(path[at..].to_vec());
        }
        if !done.insert(m.clone()) {
            return None;
        }
        path.push(m.clone());
        for next in edges.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, edges, done, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut done, &mut Vec::new()))
}

#[test]
fn no_circle_of_references_between_the_modules_of_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let refs = references(&modules);
    // The reading works: modules that are known to name each other one way are seen.
    let name = |s: &str| s.split("::").map(String::from).collect::<Module>();
    assert!(refs[&name("proxy::h1::exchange")].contains(&name("proxy::walk")));
    assert!(refs[&name("rollout::run")].contains(&name("rollout::in_place")));
    let edges = sibling_edges(&refs);
    if let Some(c) = circle(&edges) {
        let mut lines = Vec::new();
        for (i, m) in c.iter().enumerate() {
            let next = &c[(i + 1) % c.len()];
            lines.push(format!(
                "  {} -> {}: {}",
                m.join("::"),
                next.join("::"),
                edges[m][next]
            ));
        }
        panic!(
            "a circle of references between modules:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn the_check_finds_a_circle_when_there_is_one() {
    let mut modules = BTreeMap::new();
    modules.insert(vec![], "mod a; mod b;".to_string());
    modules.insert(vec!["a".into()], "use super::b::{self, Thing};".to_string());
    modules.insert(vec!["b".into()], "fn f() { crate::a::g() }".to_string());
    let c = circle(&sibling_edges(&references(&modules))).expect("a and b name each other");
    assert_eq!(c.len(), 2);
    modules.insert(vec!["b".into()], "fn f() {}".to_string());
    assert!(circle(&sibling_edges(&references(&modules))).is_none());
}
