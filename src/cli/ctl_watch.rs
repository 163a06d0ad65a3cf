//! `handoff ctl watch [POOL]`: follows `/v1/events` and prints each event as it happens (a
//! line per event; `--json` prints the event's JSON). When the stream is cut (a restart of
//! handoff, say) it reconnects with `Last-Event-ID`, so nothing kept is missed.

use std::time::Duration;

use anyhow::Context;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Exit code when the admin API cannot be reached at all.
const UNREACHABLE: i32 = 2;

pub fn watch(
    admin: &str,
    token: Option<&str>,
    json: bool,
    pool: Option<&str>,
) -> anyhow::Result<i32> {
    let base: Uri = admin
        .parse()
        .with_context(|| format!("invalid --admin URL {admin:?}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut last: Option<u64> = None;
        let mut ever = false;
        loop {
            match follow(&base, token, json, pool, &mut last).await {
                Ok(Follow::Refused(code)) => return Ok(code),
                Ok(Follow::Ended) => ever = true,
                Err(e) if !ever && last.is_none() => {
                    eprintln!("handoff ctl: cannot reach the admin API at {admin}: {e:#}");
                    return Ok(UNREACHABLE);
                }
                Err(_) => {}
            }
            // Cut: come back (handoff restarting, or replaced by a new process).
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

enum Follow {
    /// The stream ended (or was cut): reconnect.
    Ended,
    /// The API refused the request: exit with this code.
    Refused(i32),
}

async fn follow(
    base: &Uri,
    token: Option<&str>,
    json: bool,
    pool: Option<&str>,
    last: &mut Option<u64>,
) -> anyhow::Result<Follow> {
    let (mut sender, authority) = super::admin_client::connect(base).await?;
    let path = match pool {
        Some(p) => format!("/v1/events?pool={p}"),
        None => "/v1/events".to_string(),
    };
    let mut req = Request::get(path).header(http::header::HOST, authority.as_str());
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(id) = last {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::new()))?)
        .await?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        eprintln!(
            "handoff ctl: {} ({status})",
            value["error"].as_str().unwrap_or("request refused")
        );
        return Ok(Follow::Refused(1));
    }
    if !json {
        println!(
            "# watching events{} at {base} (Ctrl-C to stop)",
            pool.map_or_else(String::new, |p| format!(" of pool {p}"))
        );
    }
    let mut body = resp.into_body();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        // One SSE message per blank line.
        while let Some(end) = pending.find("\n\n") {
            let message: String = pending.drain(..end + 2).collect();
            let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if let Some(id) = event["id"].as_u64() {
                *last = Some(id);
            }
            if json {
                println!("{data}");
            } else {
                println!("{}", line(&event));
            }
        }
    }
    Ok(Follow::Ended)
}

/// An event for a person: time, kind, where, and what.
fn line(e: &Value) -> String {
    let place = match (e["pool"].as_str(), e["node"].as_str()) {
        (Some(p), Some(n)) => format!("{p}/{n}"),
        (Some(p), None) => p.to_string(),
        _ => "-".to_string(),
    };
    let value = match &e["value"] {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("message") => format!(
            "{} {}",
            o.get("rollout").and_then(Value::as_str).unwrap_or(""),
            o.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        other => other.to_string(),
    };
    format!(
        "{}  {:<15} {:<12} {value}",
        e["at"].as_str().unwrap_or(""),
        e["kind"].as_str().unwrap_or(""),
        place
    )
}
