//! The node walk of an HTTP request, for every front end (HTTP/1 clients, HTTP/2 clients,
//! HTTP/1 clients of HTTP/2 pools): after each attempt at a node, [`Walk::decide`] says
//! whether to send again on the same node, move to the next one, relay the node's answer,
//! or answer the client with a status and a reason. It is a pure function of what the
//! attempts came to: the callers do the I/O and the counting.
//!
//! The rules, the same whatever the protocol:
//! - a request that never left (no connection, a refused stream) goes to the next node;
//! - a pooled connection that the backend had closed as an idempotent, held request went
//!   out is retried on the same node, twice at most (the race every keep-alive pool has);
//! - a held idempotent request whose node failed before answering goes once more to
//!   another node (a crash or restart racing the request), as does one that a node under
//!   rollout analysis answered with a 5xx while another node serves (a second opinion);
//! - otherwise the failure is the answer: 504 when the response timeout passed, 502 when
//!   the backend closed or reset before answering;
//! - when the nodes run out: 502 if one was lost or unreachable, else 503.
//!
//! TCP sessions walk [`crate::pool::Attempts`] on their own: they have no answer to judge.

use tokio::time::Instant;

use crate::access_log::Termination;
use crate::metrics::ClientError;
use crate::pool::{Node, Pool};

/// A response handoff makes itself: a status and a one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub status: u16,
    pub reason: &'static str,
}

impl Local {
    /// The access log's word for an exchange that ended in this answer.
    pub fn termination(&self) -> Termination {
        match *self {
            TIMED_OUT => Termination::UpstreamTimeout,
            CLOSED | RESET => Termination::UpstreamReset,
            UNREACHABLE => Termination::ConnectFailed,
            NO_NODE | NO_NODE_FOR_UPGRADE => Termination::NoNode,
            other => match ClientError::of_status(other.status) {
                Some(e) => Termination::ClientFault(e),
                None => Termination::Ok,
            },
        }
    }
}

/// Why an exchange with a node ended before a final response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client went away, or its body's framing broke (`bad`) mid-way.
    Client { bad: bool },
    /// The backend failed; `answered`: after sending some of a response.
    Upstream { answered: bool },
}

/// What one attempt at a node came to (a client's failure is the front end's to answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request never reached the node: no connection, or one that was not ready.
    NotSent,
    /// The node's HTTP/2 connection gave the request back unstarted (refused stream).
    Refused,
    /// The connection failed before a response head; `reused`: it came from the idle pool;
    /// `answered`: some of a response had arrived.
    Failed { reused: bool, answered: bool },
    /// An HTTP/2 stream reset after it started.
    Reset,
    /// No response head within the response timeout.
    TimedOut,
    /// A response head. `second_opinion`: the node is under analysis and another serves
    /// (callers ask only for a 5xx: the answer is not needed otherwise).
    Answered { status: u16, second_opinion: bool },
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send again on the same node, over a new connection.
    Again,
    /// Try the next node.
    Next,
    /// Relay the node's answer.
    Relay,
    /// Answer the client; `keep`: the client connection may stay open (nothing of the
    /// request is left unread).
    Answer { local: Local, keep: bool },
}

/// A step, and how the node that was tried is charged for it: `Some(status)` counts a
/// request it did not answer (`pool.no_answer`), with the status handoff answered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub step: Step,
    pub charge: Option<Option<u16>>,
}

/// Why no node answered, for the answer when the nodes run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoAnswer {
    NoNode,
    Unreachable,
    Lost,
}

pub const TIMED_OUT: Local = Local {
    status: 504,
    reason: "the backend did not answer in time",
};
pub const CLOSED: Local = Local {
    status: 502,
    reason: "the backend closed the connection before answering",
};
pub const RESET: Local = Local {
    status: 502,
    reason: "the backend reset the stream before answering",
};
pub const UNREACHABLE: Local = Local {
    status: 502,
    reason: "no node of the pool could be reached",
};
pub const NO_NODE: Local = Local {
    status: 503,
    reason: "no healthy node in the pool",
};
pub const NO_NODE_FOR_UPGRADE: Local = Local {
    status: 503,
    reason: "no node of the pool can take the upgrade",
};

/// One request's walk over the pool's nodes.
#[derive(Debug)]
pub struct Walk {
    /// The request is held whole and idempotent: it can be sent again.
    replayable: bool,
    /// Sends left on another node after a failure or a second opinion.
    replays: u8,
    /// Sends again on the current node over a fresh connection (stale pooled ones).
    stale: u8,
    why: NoAnswer,
    /// When the current node was asked: its latency runs from here to its answer.
    asked: Instant,
}

impl Walk {
    /// `replayable`: the request is held whole and idempotent; `nodes`: the pool's size;
    /// `started`: when the request head was read.
    pub fn new(replayable: bool, nodes: usize, started: Instant) -> Walk {
        Walk {
            replayable,
            replays: u8::from(replayable && nodes > 1),
            stale: 0,
            why: NoAnswer::NoNode,
            asked: started,
        }
    }

    /// When the node now tried was asked.
    pub fn asked(&self) -> Instant {
        self.asked
    }

    /// Decides after an attempt at the current node, at `now`.
    pub fn decide(&mut self, outcome: Outcome, now: Instant) -> Decision {
        let decision = self.judge(outcome, now);
        if decision.step == Step::Next {
            // The next node starts with fresh connections of its own.
            self.stale = 0;
        }
        decision
    }

    fn judge(&mut self, outcome: Outcome, now: Instant) -> Decision {
        let step = |step| Decision { step, charge: None };
        let answer = |local, keep, status| Decision {
            step: Step::Answer { local, keep },
            charge: Some(Some(status)),
        };
        match outcome {
            Outcome::NotSent => {
                self.why = NoAnswer::Unreachable;
                self.asked = now;
                step(Step::Next)
            }
            Outcome::Refused => {
                self.why = NoAnswer::Unreachable;
                self.asked = now;
                Decision {
                    step: Step::Next,
                    charge: Some(None),
                }
            }
            Outcome::Failed { reused, answered } => {
                if self.replayable && reused && !answered && self.stale < 2 {
                    self.stale += 1;
                    return step(Step::Again);
                }
                if self.replays > 0 {
                    self.replays -= 1;
                    self.why = NoAnswer::Lost;
                    self.asked = now;
                    return Decision {
                        step: Step::Next,
                        charge: Some(None),
                    };
                }
                answer(CLOSED, false, 502)
            }
            Outcome::Reset => answer(RESET, false, 502),
            Outcome::TimedOut => answer(TIMED_OUT, true, 504),
            Outcome::Answered {
                status,
                second_opinion,
            } => {
                if status >= 500 && self.replays > 0 && second_opinion {
                    self.replays -= 1;
                    self.why = NoAnswer::Lost;
                    self.asked = now;
                    return step(Step::Next);
                }
                step(Step::Relay)
            }
        }
    }

    /// The answer when no node is left to try (`upgrade`: the request asked for one).
    pub fn exhausted(&self, upgrade: bool) -> Local {
        match self.why {
            NoAnswer::Lost => CLOSED,
            NoAnswer::Unreachable => UNREACHABLE,
            NoAnswer::NoNode if upgrade => NO_NODE_FOR_UPGRADE,
            NoAnswer::NoNode => NO_NODE,
        }
    }
}

/// Logs why a node's failure became the answer.
pub fn log_failure(node: &Node, outcome: Outcome) {
    match outcome {
        Outcome::TimedOut => {
            tracing::info!(node = %node.key(), "backend did not answer within the response timeout")
        }
        _ => tracing::info!(node = %node.key(), "backend failed before answering"),
    }
}

/// Whether node `index`, under rollout analysis, should have its 5xx answers checked by a
/// sibling: only while another node serves.
pub fn second_opinion(pool: &Pool, index: usize) -> bool {
    pool.nodes[index].state.on_probation() && pool.another_serves(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(replayable: bool, nodes: usize) -> Walk {
        Walk::new(replayable, nodes, Instant::now())
    }

    fn steps(w: &mut Walk, outcomes: &[Outcome]) -> Vec<Step> {
        outcomes
            .iter()
            .map(|o| w.decide(*o, Instant::now()).step)
            .collect()
    }

    const STALE: Outcome = Outcome::Failed {
        reused: true,
        answered: false,
    };
    const FRESH_FAIL: Outcome = Outcome::Failed {
        reused: false,
        answered: false,
    };

    #[test]
    fn a_request_that_never_left_moves_on_and_ends_unreachable() {
        let mut w = walk(false, 2);
        let d = w.decide(Outcome::NotSent, Instant::now());
        assert_eq!(
            d,
            Decision {
                step: Step::Next,
                charge: None
            }
        );
        let d = w.decide(Outcome::Refused, Instant::now());
        assert_eq!(d.step, Step::Next);
        assert_eq!(
            d.charge,
            Some(None),
            "a refused stream counts against the node"
        );
        assert_eq!(w.exhausted(false), UNREACHABLE);
    }

    #[test]
    fn no_node_at_all_is_503() {
        let w = walk(true, 2);
        assert_eq!(w.exhausted(false), NO_NODE);
        assert_eq!(w.exhausted(true), NO_NODE_FOR_UPGRADE);
    }

    #[test]
    fn stale_pooled_connections_are_retried_twice_on_the_same_node_then_another() {
        let mut w = walk(true, 2);
        assert_eq!(
            steps(&mut w, &[STALE, STALE, STALE]),
            [Step::Again, Step::Again, Step::Next]
        );
        // The one replay is spent: the next failure is the answer.
        let d = w.decide(FRESH_FAIL, Instant::now());
        assert_eq!(
            d.step,
            Step::Answer {
                local: CLOSED,
                keep: false
            }
        );
        assert_eq!(d.charge, Some(Some(502)));
    }

    #[test]
    fn a_request_that_cannot_be_sent_again_is_never_retried_after_it_left() {
        let mut w = walk(false, 3);
        for failed in [STALE, FRESH_FAIL] {
            let d = walk(false, 3).decide(failed, Instant::now());
            assert_eq!(
                d.step,
                Step::Answer {
                    local: CLOSED,
                    keep: false
                }
            );
        }
        let d = w.decide(
            Outcome::Answered {
                status: 503,
                second_opinion: true,
            },
            Instant::now(),
        );
        assert_eq!(
            d.step,
            Step::Relay,
            "a 5xx is relayed when no replay is allowed"
        );
    }

    #[test]
    fn a_single_node_pool_has_no_replay_elsewhere() {
        let mut w = walk(true, 1);
        let d = w.decide(FRESH_FAIL, Instant::now());
        assert_eq!(
            d.step,
            Step::Answer {
                local: CLOSED,
                keep: false
            }
        );
    }

    #[test]
    fn a_node_that_answered_after_starting_is_not_retried_on_the_same_connection() {
        let mut w = walk(true, 2);
        let started_answer = Outcome::Failed {
            reused: true,
            answered: true,
        };
        assert_eq!(steps(&mut w, &[started_answer]), [Step::Next]);
        assert_eq!(w.exhausted(false), CLOSED, "lost, then no node left");
    }

    #[test]
    fn a_5xx_under_analysis_gets_one_second_opinion() {
        let mut w = walk(true, 3);
        let failed = Outcome::Answered {
            status: 500,
            second_opinion: true,
        };
        assert_eq!(steps(&mut w, &[failed, failed]), [Step::Next, Step::Relay]);
        let ok = Outcome::Answered {
            status: 200,
            second_opinion: true,
        };
        assert_eq!(walk(true, 3).decide(ok, Instant::now()).step, Step::Relay);
        let plain = Outcome::Answered {
            status: 500,
            second_opinion: false,
        };
        assert_eq!(
            walk(true, 3).decide(plain, Instant::now()).step,
            Step::Relay
        );
    }

    #[test]
    fn timeouts_and_resets_are_answered_and_charged() {
        let d = walk(true, 2).decide(Outcome::TimedOut, Instant::now());
        assert_eq!(
            d.step,
            Step::Answer {
                local: TIMED_OUT,
                keep: true
            }
        );
        assert_eq!(d.charge, Some(Some(504)));
        let d = walk(true, 2).decide(Outcome::Reset, Instant::now());
        assert_eq!(
            d.step,
            Step::Answer {
                local: RESET,
                keep: false
            }
        );
        assert_eq!(d.charge, Some(Some(502)));
    }

    #[test]
    fn the_latency_clock_restarts_with_each_node() {
        let t0 = Instant::now();
        let mut w = Walk::new(true, 2, t0);
        assert_eq!(w.asked(), t0);
        let later = t0 + std::time::Duration::from_millis(5);
        w.decide(Outcome::NotSent, later);
        assert_eq!(w.asked(), later);
    }
}
