//! The traffic-management scenarios of Istio's Bookinfo tutorials.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No VirtualService: reviews v1, v2, v3 in turn.
    RoundRobin,
    /// `virtual-service-all-v1`: every service on v1.
    AllV1,
    /// `virtual-service-reviews-test-v2`: user jason to reviews-v2, others v1.
    JasonV2,
    /// `virtual-service-reviews-50-v3`: half v1, half v3.
    Shift50V3,
    /// `virtual-service-reviews-v3`: everything to v3.
    Shift100V3,
    /// `virtual-service-ratings-test-delay`: 7 s delay on ratings for jason
    /// (jason on reviews-v2); productpage's 3 s timeout (2 tries) to reviews
    /// trips.
    FaultDelay,
    /// `virtual-service-ratings-test-abort`: HTTP 500 (FI) from ratings for
    /// jason (jason on reviews-v2).
    FaultAbort,
    /// httpbin's DestinationRule with maxConnections 1 and
    /// http1MaxPendingRequests 1 under fortio's 3 connections: 503 UO.
    CircuitBreaking,
    /// Request timeouts: ratings delayed 2 s, reviews route timeout 0.5 s:
    /// productpage -> reviews 504 UT.
    Timeout,
    /// details fails 60 % of attempts with 503; the sidecar's retry policy
    /// (2 retries) hides most of it; the rest fail with URX.
    Retries,
}

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Scenario::RoundRobin,
        Scenario::AllV1,
        Scenario::JasonV2,
        Scenario::Shift50V3,
        Scenario::Shift100V3,
        Scenario::FaultDelay,
        Scenario::FaultAbort,
        Scenario::CircuitBreaking,
        Scenario::Timeout,
        Scenario::Retries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::RoundRobin => "round-robin",
            Scenario::AllV1 => "all-v1",
            Scenario::JasonV2 => "jason-v2",
            Scenario::Shift50V3 => "shift-50-v3",
            Scenario::Shift100V3 => "shift-100-v3",
            Scenario::FaultDelay => "fault-delay",
            Scenario::FaultAbort => "fault-abort",
            Scenario::CircuitBreaking => "circuit-breaking",
            Scenario::Timeout => "timeout",
            Scenario::Retries => "retries",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::RoundRobin => "reviews v1, v2 and v3 in turn (no routing rules)",
            Scenario::AllV1 => "every request to v1 (virtual-service-all-v1)",
            Scenario::JasonV2 => "user jason to reviews v2, everyone else to v1",
            Scenario::Shift50V3 => "traffic shifting: reviews 50% v1, 50% v3",
            Scenario::Shift100V3 => "traffic shifting: reviews 100% v3",
            Scenario::FaultDelay => {
                "fault injection: 7s delay on ratings for jason (productpage's 3s timeout to reviews trips)"
            }
            Scenario::FaultAbort => "fault injection: HTTP 500 abort on ratings for jason (FI)",
            Scenario::CircuitBreaking => {
                "circuit breaking: httpbin maxConnections 1 under fortio load: 503 with UO"
            }
            Scenario::Timeout => {
                "request timeout: ratings delayed 2s, reviews route timeout 0.5s: 504 with UT"
            }
            Scenario::Retries => "retries: details fails 60% of attempts; 2 retries, then 503 URX",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Scenario::ALL.into_iter().find(|c| c.name() == s)
    }

    /// "a, b, c" for error messages and help.
    pub fn names() -> String {
        Scenario::ALL
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::parse(s)
            .ok_or_else(|| format!("unknown scenario {s:?}; one of: {}", Scenario::names()))
    }
}
