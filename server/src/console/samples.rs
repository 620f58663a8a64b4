//! The activity charts' data: the server's own metrics sampled once a second into a bounded
//! ring, served as JSON (`GET /api/samples`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Sources;
use crate::activity::Activity;
use crate::metrics::{LimitLabel, Metrics, ResultLabel};

/// Samples kept: five minutes at one a second.
pub const KEPT: usize = 300;
/// How often a sample is taken.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The window of the propagation p99.
pub const P99_WINDOW: Duration = Duration::from_secs(60);

/// One second of activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: i64,
    /// X.509- and JWT-SVIDs signed in the last second.
    pub svids_signed_per_second: f64,
    /// Agents' sync streams open on this replica.
    pub open_sync_streams: i64,
    /// p99 of the entry propagation delays of the last minute, in milliseconds; `None` when
    /// no entry change reached an agent in that minute.
    pub propagation_p99_ms: Option<f64>,
    /// Agent API calls refused by a rate limit in the last second.
    pub rate_limited_per_second: f64,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
}

/// Cumulative counters at one sampling.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    signed: u64,
    rate_limited: u64,
    at: Option<Instant>,
}

fn totals(metrics: &Metrics, at: Instant) -> Totals {
    let ok = ResultLabel { result: "ok" };
    let signed = metrics.x509_svids_signed.get_or_create(&ok).get()
        + metrics.jwt_svids_signed.get_or_create(&ok).get();
    let rate_limited = ["attestation", "signing"]
        .iter()
        .map(|limit| {
            metrics
                .rate_limited
                .get_or_create(&LimitLabel { limit })
                .get()
        })
        .sum();
    Totals {
        signed,
        rate_limited,
        at: Some(at),
    }
}

impl Samples {
    /// The samples, oldest first.
    pub fn all(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, sample: Sample) {
        let mut ring = self.lock();
        ring.push_back(sample);
        while ring.len() > KEPT {
            ring.pop_front();
        }
    }

    /// Takes one sample at `now` (rates since `last`, none for the first call); returns the
    /// totals the next call needs.
    fn sample(&self, metrics: &Metrics, activity: &Activity, last: Totals, now: Instant) -> Totals {
        let current = totals(metrics, now);
        if let Some(before) = last.at {
            let seconds = now
                .saturating_duration_since(before)
                .as_secs_f64()
                .max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
            self.push(Sample {
                t: sigil_common::time::unix_now(),
                svids_signed_per_second: rate(current.signed, last.signed),
                open_sync_streams: metrics.connected_agents.get(),
                propagation_p99_ms: activity
                    .propagation_p99(P99_WINDOW, now)
                    .map(|d| d.as_secs_f64() * 1000.0),
                rate_limited_per_second: rate(current.rate_limited, last.rate_limited),
            });
        }
        current
    }

    /// Samples every [`PERIOD`] until `cancel` fires.
    pub async fn run(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Totals::default();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            last = self.sample(&metrics, &activity, last, Instant::now());
        }
    }
}

/// `GET /api/samples`.
pub(super) async fn json(State(sources): State<Arc<Sources>>) -> Json<Vec<Sample>> {
    Json(sources.samples.all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_rates_into_a_bounded_ring() {
        let metrics = Metrics::new();
        let activity = Activity::default();
        let samples = Samples::default();
        let t0 = Instant::now();
        let mut last = samples.sample(&metrics, &activity, Totals::default(), t0);
        assert!(samples.all().is_empty(), "no rate from one reading");
        metrics
            .x509_svids_signed
            .get_or_create(&ResultLabel { result: "ok" })
            .inc_by(20);
        metrics
            .rate_limited
            .get_or_create(&LimitLabel { limit: "signing" })
            .inc();
        metrics.connected_agents.set(3);
        last = samples.sample(&metrics, &activity, last, t0 + 2 * PERIOD);
        let got = samples.all();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            (got[0].svids_signed_per_second - 10.0).abs() < 1e-9,
            "{got:?}"
        );
        assert!(
            (got[0].rate_limited_per_second - 0.5).abs() < 1e-9,
            "{got:?}"
        );
        assert_eq!(got[0].open_sync_streams, 3);
        assert_eq!(got[0].propagation_p99_ms, None);
        for i in 0..(KEPT as u32 + 10) {
            last = samples.sample(&metrics, &activity, last, t0 + PERIOD * (3 + i));
        }
        assert_eq!(samples.all().len(), KEPT);
        assert_eq!(samples.all()[KEPT - 1].svids_signed_per_second, 0.0);
    }
}
