//! The two independent dimensions of a node's state, as in HAProxy: the admin state an
//! operator sets, and the health the checks observe. Transitions are pure functions; the
//! caller stores, logs and counts each flip exactly once.

use serde::{Deserialize, Serialize};

/// What the operator (or a rollout) wants of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum AdminState {
    Active = 0,
    Draining = 1,
    Drained = 2,
    Warming = 3,
}

impl AdminState {
    pub const ALL: [AdminState; 4] = [Self::Active, Self::Draining, Self::Drained, Self::Warming];

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Draining,
            2 => Self::Drained,
            3 => Self::Warming,
            _ => Self::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Drained => "drained",
            Self::Warming => "warming",
        }
    }

    /// Whether this admin state lets the node take new sessions (health decides the rest).
    pub fn admits_new(self) -> bool {
        matches!(self, Self::Active | Self::Warming)
    }
}

/// What the health checks (and passive connect failures) observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Health {
    /// Not yet checked enough times: a new or restarted node must prove itself first.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    pub const ALL: [Health; 3] = [Self::Unknown, Self::Up, Self::Down];

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// Health after a streak of `passes` consecutive passing or `fails` consecutive failing checks
/// (one of the two is zero). Returns the new health, which may equal `current`.
pub fn next_health(
    current: Health,
    passes: u32,
    fails: u32,
    healthy_after: u32,
    unhealthy_after: u32,
) -> Health {
    debug_assert!(
        passes == 0 || fails == 0,
        "a streak is either passes or failures"
    );
    if current != Health::Up && passes >= healthy_after {
        Health::Up
    } else if current != Health::Down && fails >= unhealthy_after {
        Health::Down
    } else {
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    #[test]
    fn unknown_needs_the_full_streak_either_way() {
        assert_eq!(next_health(Unknown, 1, 0, 2, 3), Unknown);
        assert_eq!(next_health(Unknown, 2, 0, 2, 3), Up);
        assert_eq!(next_health(Unknown, 0, 2, 2, 3), Unknown);
        assert_eq!(next_health(Unknown, 0, 3, 2, 3), Down);
    }

    #[test]
    fn flips_only_at_thresholds() {
        assert_eq!(next_health(Up, 0, 2, 2, 3), Up);
        assert_eq!(next_health(Up, 0, 3, 2, 3), Down);
        assert_eq!(next_health(Down, 1, 0, 2, 3), Down);
        assert_eq!(next_health(Down, 2, 0, 2, 3), Up);
        assert_eq!(next_health(Up, 5, 0, 2, 3), Up);
    }

    #[test]
    fn round_trips_through_u8() {
        for s in AdminState::ALL {
            assert_eq!(AdminState::from_u8(s as u8), s);
        }
        for h in Health::ALL {
            assert_eq!(Health::from_u8(h as u8), h);
        }
    }
}
