use hone_common::serving::{StatsAccumulator, TensorStats};

use super::*;

fn window(start: i64, requests: i64, errors: i64, p50: Option<f64>) -> TelemetryRow {
    TelemetryRow {
        device_id: "d".into(),
        resolution_ms: 10_000,
        window_start_ms: start,
        window_ms: 10_000,
        model_id: Some("m".into()),
        deployment_id: Some("dep".into()),
        requests,
        errors,
        rejected: 0,
        p50_ms: p50,
        p90_ms: p50.map(|p| p * 1.5),
        p99_ms: p50.map(|p| p * 2.0),
        rss_bytes: 100 << 20,
        temperature_c: None,
        clock_mhz: None,
        throttled: 0,
        reading_source: None,
        dropped_windows: 0,
        stats: None,
    }
}

fn stats_of(name: &str, values: impl Iterator<Item = f32>) -> TensorStats {
    let mut a = StatsAccumulator::new(name, false);
    a.add_f32(&values.collect::<Vec<_>>());
    a.finish()
}

fn rules(found: &[Finding]) -> Vec<&'static str> {
    found.iter().map(|f| f.rule).collect()
}

#[test]
fn the_latency_rule_needs_three_slow_windows_with_traffic() {
    let ctx = Context { latency_budget_ms: Some(10.0), ..Context::default() };
    let mut w = vec![window(0, 50, 0, Some(12.0)), window(1, 50, 0, Some(13.0))];
    assert!(evaluate(&w, &ctx).is_empty(), "two slow windows are not enough");
    // A window without traffic neither breaks nor extends the streak.
    w.push(window(2, 0, 0, None));
    assert!(evaluate(&w, &ctx).is_empty());
    w.push(window(3, 50, 0, Some(15.0)));
    let found = evaluate(&w, &ctx);
    assert_eq!(rules(&found), ["latency_budget"]);
    assert!(found[0].message.contains("15.0 ms"), "{}", found[0].message);
    w.push(window(4, 50, 0, Some(8.0)));
    assert!(evaluate(&w, &ctx).is_empty(), "one fast window ends the breach");
}

#[test]
fn errors_throttling_and_memory_fire_on_their_figures() {
    let ctx = Context { memory_bytes: Some(1 << 30), ..Context::default() };
    let mut w = vec![window(0, 20, 2, Some(1.0)), window(1, 20, 3, Some(1.0))];
    assert_eq!(rules(&evaluate(&w, &ctx)), ["error_rate"]);
    // A quiet window (under MIN_REQUESTS) does not count for or against.
    w.push(window(2, 3, 3, Some(1.0)));
    assert_eq!(rules(&evaluate(&w, &ctx)), ["error_rate"]);
    let mut hot: Vec<TelemetryRow> = (0..3)
        .map(|i| TelemetryRow {
            throttled: 1,
            clock_mhz: Some(600 + i),
            ..window(i, 20, 0, Some(1.0))
        })
        .collect();
    assert_eq!(rules(&evaluate(&hot, &ctx)), ["throttling"]);
    hot.last_mut().unwrap().rss_bytes = 1000 << 20;
    assert_eq!(rules(&evaluate(&hot, &ctx)), ["throttling", "memory"]);
}

#[test]
fn drift_needs_two_windows_far_from_the_reference() {
    let reference = stats_of("x", (0..20_000).map(|i| i as f32 / 20_000.0));
    let ctx = Context { reference: vec![reference], ..Context::default() };
    let with = |s: TensorStats| TelemetryRow {
        stats: Some(json!({ "inputs": [s], "outputs": [] })),
        ..window(0, 20, 0, Some(1.0))
    };
    let same = || with(stats_of("x", (0..5_000).map(|i| i as f32 / 5_000.0)));
    let shifted = || with(stats_of("x", (0..5_000).map(|i| 0.6 + i as f32 / 5_000.0)));
    assert!(evaluate(&[same(), same()], &ctx).is_empty());
    assert!(evaluate(&[same(), shifted()], &ctx).is_empty(), "one window is not enough");
    let found = evaluate(&[shifted(), shifted()], &ctx);
    assert_eq!(rules(&found), ["drift"]);
    assert!(
        found[0].message.contains("`x`") && found[0].message.contains("PSI"),
        "{}",
        found[0].message
    );
    // Too few values to judge: no drift.
    let few = || with(stats_of("x", (0..100).map(|i| 5.0 + i as f32)));
    assert!(evaluate(&[few(), few()], &ctx).is_empty());
}

#[test]
fn suggested_budgets_keep_three_digits_and_stay_positive() {
    assert_eq!(three_digits(12.3456), 12.3);
    assert_eq!(three_digits(0.000012345), 0.0000123);
    assert!(three_digits(1e-12) > 0.0);
}

#[test]
fn downsampling_adds_counts_and_keeps_the_worst_tail() {
    let rows = vec![
        window(0, 10, 0, Some(2.0)),
        TelemetryRow { rss_bytes: 300 << 20, ..window(10_000, 30, 3, Some(4.0)) },
        window(300_000, 5, 0, Some(1.0)),
    ];
    let b = downsample(&rows, 300_000);
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].requests, b[0].errors, b[0].window_ms), (40, 3, 20_000));
    // Weighted by successful requests: (2*10 + 4*27) / 37.
    assert!((b[0].p50_ms.unwrap() - (20.0 + 108.0) / 37.0).abs() < 1e-9);
    assert_eq!(b[0].p99_ms, Some(8.0));
    assert_eq!(b[0].rss_bytes, 300 << 20);
    assert_eq!(b[0].resolution_ms, 300_000);
    assert_eq!(b[1].window_start_ms, 300_000);
}
