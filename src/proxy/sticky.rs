//! Affinity on the HTTP path: who the client is (cookie or address), where it continues,
//! and the `Set-Cookie` that pins it. See [`crate::pool::affinity`] for the tables.

use std::net::IpAddr;

use crate::config::AffinityMode;
use crate::pool::affinity::{find_cookie, parse_cookie};
use crate::pool::{unix_ms, Attempts, Pool, Strategy, Tried};

/// An affinity client of one request. Built on every request to a pool with affinity, so
/// it holds no heap data: the token is fixed-size, the cookie name stays in the config.
pub struct Client {
    key: u64,
    /// Node token from a valid cookie (16 hex digits).
    token: Option<[u8; 16]>,
    /// Cookie mode (else source address).
    cookie: bool,
}

impl Client {
    /// Identifies the client, for pools with affinity, from its `Cookie` field values.
    pub fn identify<'a>(
        pool: &Pool,
        mut cookies: impl Iterator<Item = &'a [u8]>,
        ip: IpAddr,
    ) -> Option<Client> {
        let affinity = pool.config.affinity.as_ref()?;
        Some(match &affinity.mode {
            AffinityMode::SourceIp => Client {
                key: pool.keys.address(ip),
                token: None,
                cookie: false,
            },
            AffinityMode::Cookie(name) => {
                let found = cookies
                    .find_map(|h| find_cookie(std::str::from_utf8(h).ok()?, name))
                    .and_then(parse_cookie);
                match found
                    .and_then(|(t, key)| Some((<[u8; 16]>::try_from(t.as_bytes()).ok()?, key)))
                {
                    Some((token, key)) => Client {
                        key,
                        token: Some(token),
                        cookie: true,
                    },
                    None => Client {
                        key: pool.keys.new_client(),
                        token: None,
                        cookie: true,
                    },
                }
            }
        })
    }

    /// The nodes to try for this client: where it continues first, then fresh picks
    /// (balanced for cookie clients, hashed for source-address ones).
    pub fn attempts<'p>(&self, pool: &'p Pool) -> Attempts<'p> {
        let strategy = if self.cookie {
            Strategy::Balance
        } else {
            Strategy::Hash(self.key)
        };
        let token = self
            .token
            .as_ref()
            .and_then(|t| std::str::from_utf8(t).ok());
        let first = pool
            .sticky(self.key, token, unix_ms())
            .or_else(|| match strategy {
                Strategy::Balance => pool.pick(Tried::default()),
                Strategy::Hash(key) => pool.hash_pick(key, Tried::default()),
            });
        Attempts::new(pool, strategy, Some(first))
    }

    /// Node `index` served the client: pin it there. Returns the `Set-Cookie` value to send
    /// when the client's cookie must be (re)issued.
    pub fn served(&self, pool: &Pool, index: usize) -> Option<String> {
        pool.pin(self.key, index, unix_ms());
        let Some(AffinityMode::Cookie(name)) = pool.config.affinity.as_ref().map(|a| &a.mode)
        else {
            return None;
        };
        let token = &pool.nodes[index].token;
        if self.token.as_ref().map(|t| &t[..]) == Some(token.as_bytes()) {
            return None;
        }
        Some(format!(
            "{name}={token}.{:x}; Path=/; HttpOnly; SameSite=Lax",
            self.key
        ))
    }
}

/// The nodes a request tries: a preview's node first (it asked for the version a rollout
/// previews), else where the client's affinity continues, else fresh picks.
pub fn attempts<'p>(
    pool: &'p Pool,
    client: &Option<Client>,
    preview: Option<usize>,
) -> Attempts<'p> {
    match (client, preview) {
        (_, Some(node)) => Attempts::new(pool, Strategy::Balance, Some(Some(node))),
        (Some(c), None) => c.attempts(pool),
        (None, None) => Attempts::new(pool, Strategy::Balance, None),
    }
}
