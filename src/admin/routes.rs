//! Every endpoint of the admin API with the methods it takes. The router's 404 and 405
//! answers and the `Allow` header come from this table, and tests check that
//! docs/openapi.json and docs/api.md describe exactly these endpoints.

/// Path pattern (`{name}` matches one segment) → the methods it takes, as `Allow` says them.
pub(super) const ROUTES: &[(&str, &str)] = &[
    ("/healthz", "GET"),
    ("/dashboard", "GET"),
    ("/metrics", "GET"),
    ("/v1/status", "GET"),
    ("/v1/events", "GET"),
    ("/v1/openapi.json", "GET"),
    ("/v1/cluster", "GET"),
    ("/v1/reload", "POST"),
    ("/v1/rollouts", "GET"),
    ("/v1/rollouts/{id}", "GET"),
    ("/v1/rollouts/{id}/abort", "POST"),
    ("/v1/pools/{pool}", "GET"),
    ("/v1/pools/{pool}/rollouts", "POST"),
    ("/v1/pools/{pool}/nodes", "POST"),
    ("/v1/pools/{pool}/nodes/{node}", "GET, PATCH, DELETE"),
    ("/v1/pools/{pool}/nodes/{node}/drain", "POST"),
    ("/v1/pools/{pool}/nodes/{node}/enable", "POST"),
    ("/v1/pools/{pool}/nodes/{node}/wait", "GET"),
];

/// The methods the endpoint at `segments` (the path split at `/`, no empty first one)
/// takes, or `None` when no endpoint is there.
pub(super) fn allow(segments: &[&str]) -> Option<&'static str> {
    ROUTES.iter().find_map(|(pattern, allow)| {
        let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
        let matches = parts.len() == segments.len()
            && parts
                .iter()
                .zip(segments)
                .all(|(p, s)| p.starts_with('{') || p == s);
        matches.then_some(*allow)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_segment_by_segment() {
        assert_eq!(
            allow(&["v1", "pools", "web", "nodes", "a"]),
            Some("GET, PATCH, DELETE")
        );
        assert_eq!(allow(&["v1", "pools", "web", "nodes"]), Some("POST"));
        assert_eq!(allow(&["healthz"]), Some("GET"));
        assert_eq!(allow(&["v1", "pools"]), None);
        assert_eq!(
            allow(&["v1", "pools", "web", "nodes", "a", "explode"]),
            None
        );
    }

    #[test]
    fn the_openapi_document_describes_exactly_these_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        let mut described: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|m| ["get", "post", "patch", "delete", "put"].contains(&m.as_str()))
                    .map(move |m| (path.clone(), m.to_uppercase()))
            })
            .collect();
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, allow)| {
                allow
                    .split(", ")
                    .map(move |m| (path.to_string(), m.to_string()))
            })
            .collect();
        described.sort();
        routed.sort();
        assert_eq!(described, routed);
    }

    #[test]
    fn docs_api_md_lists_every_endpoint() {
        let text = include_str!("../../docs/api.md");
        for (path, allow) in ROUTES {
            for method in allow.split(", ") {
                let line = format!("{method} {path}");
                assert!(text.contains(&line), "docs/api.md does not list `{line}`");
            }
        }
    }
}
