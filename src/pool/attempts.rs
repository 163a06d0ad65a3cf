//! The nodes one request or session tries, in turn: where its affinity continues first (if
//! anywhere), then fresh picks that skip the nodes already tried. HTTP requests, tunnels and
//! TCP sessions all walk this one loop, and every attempt after the first counts as a retry.

use super::{Pool, Tried};

/// How fresh picks are made.
#[derive(Debug, Clone, Copy)]
pub enum Strategy {
    /// The pool's balancing (least_conn, round_robin).
    Balance,
    /// Rendezvous hashing of a client key (source-address affinity).
    Hash(u64),
}

pub struct Attempts<'a> {
    pool: &'a Pool,
    strategy: Strategy,
    tried: Tried,
    /// The first attempt, decided by the caller (affinity), until it is taken.
    first: Option<Option<usize>>,
}

impl<'a> Attempts<'a> {
    /// `first`: `Some(pick)` makes `pick` the first attempt (`Some(None)`: nowhere to go);
    /// `None` starts with a fresh pick.
    pub fn new(pool: &'a Pool, strategy: Strategy, first: Option<Option<usize>>) -> Self {
        Attempts {
            pool,
            strategy,
            tried: Tried::default(),
            first,
        }
    }

    /// The next node to try, or `None` when no node (left) can take it.
    pub fn next_node(&mut self) -> Option<usize> {
        let next = match self.first.take() {
            Some(pick) => pick,
            None => match self.strategy {
                Strategy::Balance => self.pool.pick(self.tried),
                Strategy::Hash(key) => self.pool.hash_pick(key, self.tried),
            },
        }?;
        if !self.tried.is_empty() {
            self.pool.metrics.retries.inc();
        }
        self.tried.add(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::pick::warmup_tests::pool;

    #[test]
    fn every_node_once_the_first_as_asked_and_retries_counted() {
        let pool = pool("round_robin");
        let mut a = Attempts::new(&pool, Strategy::Balance, Some(Some(1)));
        assert_eq!(a.next_node(), Some(1));
        assert_eq!(a.next_node(), Some(0));
        assert_eq!(a.next_node(), None);
        assert_eq!(pool.metrics.retries.get(), 1);

        let mut nowhere = Attempts::new(&pool, Strategy::Balance, Some(None));
        assert_eq!(nowhere.next_node(), None);

        // Hashing a key picks the same first node every time, then the other.
        let order = |key| {
            let mut a = Attempts::new(&pool, Strategy::Hash(key), None);
            [a.next_node(), a.next_node(), a.next_node()]
        };
        assert_eq!(order(42), order(42));
        let [first, second, none] = order(42);
        assert!(first.is_some() && second.is_some() && first != second && none.is_none());
    }
}
