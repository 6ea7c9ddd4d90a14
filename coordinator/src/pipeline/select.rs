//! The choice, per device class, among measured models (the parent and the candidates): the
//! Pareto front of latency against quality, and the winner under the objective and the
//! constraints, with the reason in words. Pure: the runner gives it numbers.

/// One measured model.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// What it is (a candidate id, or `parent`).
    pub key: String,
    /// The objective's latency statistic, ms.
    pub latency_ms: f64,
    /// Accuracy or fidelity, 0..1.
    pub quality: f64,
    /// Breaks ties of `quality` (the output cosine with the parent; for a language model, the
    /// inverse of its perplexity): between two models that agree with the parent equally
    /// often, the closer one is the more accurate.
    pub secondary: f64,
    /// Peak RSS, bytes.
    pub rss_bytes: Option<f64>,
}

/// The constraints of a class.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Lowest accepted quality (parent accuracy minus the drop, or the fidelity floor).
    pub quality_floor: f64,
    /// With a latency budget the objective is the most accurate model within it; without, the
    /// fastest model within the quality floor.
    pub latency_budget_ms: Option<f64>,
    /// Largest accepted peak RSS, bytes (the class's memory and any budget, whichever is lower).
    pub memory_cap_bytes: Option<f64>,
    /// `p50`, `p90` or `p99`, for the words.
    pub statistic: String,
    /// `accuracy` or `fidelity`, for the words.
    pub metric: String,
}

/// What was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index of the winner in the points.
    pub winner: Option<usize>,
    /// Indices on the Pareto front (no other point is both faster and better), fastest first.
    pub pareto: Vec<usize>,
    /// Why, in words.
    pub reason: String,
    /// Without a winner: the points closest to meeting the constraints, closest first (at most
    /// three).
    pub closest: Vec<usize>,
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// How far a point is from meeting the rules (0 when it meets them): the relative excess of
/// each violated constraint, summed.
fn violation(p: &Point, r: &Rules) -> f64 {
    let mut v = 0.0;
    if p.quality < r.quality_floor {
        v += (r.quality_floor - p.quality) / r.quality_floor.max(1e-9);
    }
    if let Some(b) = r.latency_budget_ms
        && p.latency_ms > b
    {
        v += (p.latency_ms - b) / b.max(1e-9);
    }
    if let (Some(cap), Some(rss)) = (r.memory_cap_bytes, p.rss_bytes)
        && rss > cap
    {
        v += (rss - cap) / cap.max(1.0);
    }
    v
}

/// What breaks ties of quality ([`Point::secondary`]), in 0..1 and higher being better: the
/// output cosine with the parent, or for a language model the inverse of its perplexity.
pub fn tie_break(cosine: Option<f64>, perplexity: Option<f64>) -> Option<f64> {
    cosine.or(perplexity.filter(|p| *p >= 1.0).map(|p| 1.0 / p))
}

/// Quality with its tie-break, for ordering.
fn rank(p: &Point) -> f64 {
    p.quality + 1e-6 * if p.secondary.is_finite() { p.secondary } else { 0.0 }
}

/// Chooses among `points` (finite latencies and qualities).
pub fn choose(points: &[Point], r: &Rules) -> Choice {
    let finite = |p: &Point| p.latency_ms.is_finite() && p.quality.is_finite();
    let mut pareto: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| {
            let a = &points[i];
            !points.iter().any(|b| {
                finite(b)
                    && b.latency_ms <= a.latency_ms
                    && rank(b) >= rank(a)
                    && (b.latency_ms < a.latency_ms || rank(b) > rank(a))
            })
        })
        .collect();
    pareto.sort_by(|&a, &b| points[a].latency_ms.total_cmp(&points[b].latency_ms));

    let feasible: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]) && violation(&points[i], r) == 0.0)
        .collect();
    let by_speed = |a: &usize, b: &usize| {
        let (pa, pb) = (&points[*a], &points[*b]);
        pa.latency_ms.total_cmp(&pb.latency_ms).then(rank(pb).total_cmp(&rank(pa)))
    };
    let by_quality = |a: &usize, b: &usize| {
        let (pa, pb) = (&points[*a], &points[*b]);
        rank(pb).total_cmp(&rank(pa)).then(pa.latency_ms.total_cmp(&pb.latency_ms))
    };
    let memory = match r.memory_cap_bytes {
        Some(cap) => format!(", peak RSS within {:.0} MiB", cap / (1024.0 * 1024.0)),
        None => String::new(),
    };
    let winner = match r.latency_budget_ms {
        None => feasible.iter().copied().min_by(by_speed),
        Some(_) => feasible.iter().copied().min_by(by_quality),
    };
    let floor = format!("{} ≥ {}", r.metric, pct(r.quality_floor));
    let reason = match (winner, r.latency_budget_ms) {
        (Some(w), None) => {
            let p = &points[w];
            format!(
                "fastest {} ({:.3} ms) of {} models meeting {floor}{memory}; its {} {}",
                r.statistic,
                p.latency_ms,
                feasible.len(),
                r.metric,
                pct(p.quality)
            )
        }
        (Some(w), Some(b)) => {
            let p = &points[w];
            format!(
                "most accurate ({} {}) of {} models within the {} budget of {b} ms and {floor}\
                 {memory}; its {} {:.3} ms",
                r.metric,
                pct(p.quality),
                feasible.len(),
                r.statistic,
                r.statistic,
                p.latency_ms
            )
        }
        (None, budget) => {
            let mut what = vec![floor.clone()];
            if let Some(b) = budget {
                what.push(format!("{} ≤ {b} ms", r.statistic));
            }
            if !memory.is_empty() {
                what.push(memory.trim_start_matches(", ").to_owned());
            }
            format!(
                "no candidate meets {} ({} measured); the closest are listed",
                what.join(", "),
                points.iter().filter(|p| finite(p)).count()
            )
        }
    };
    let closest = if winner.is_some() {
        Vec::new()
    } else {
        let mut all: Vec<usize> = (0..points.len()).filter(|&i| finite(&points[i])).collect();
        all.sort_by(|&a, &b| violation(&points[a], r).total_cmp(&violation(&points[b], r)));
        all.truncate(3);
        all
    };
    Choice { winner, pareto, reason, closest }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(key: &str, latency_ms: f64, quality: f64, rss_mib: f64) -> Point {
        Point {
            key: key.into(),
            latency_ms,
            quality,
            secondary: 1.0,
            rss_bytes: Some(rss_mib * 1048576.0),
        }
    }

    fn rules(floor: f64) -> Rules {
        Rules {
            quality_floor: floor,
            latency_budget_ms: None,
            memory_cap_bytes: None,
            statistic: "p50".into(),
            metric: "accuracy".into(),
        }
    }

    fn keys(points: &[Point], ix: &[usize]) -> Vec<String> {
        ix.iter().map(|&i| points[i].key.clone()).collect()
    }

    #[test]
    fn the_fastest_within_the_accuracy_floor_wins_and_the_front_is_non_dominated() {
        let pts = [
            pt("parent", 10.0, 0.90, 50.0),
            pt("a", 6.0, 0.89, 40.0),
            pt("b", 4.0, 0.85, 30.0), // fastest, but under the floor
            pt("c", 7.0, 0.88, 40.0), // dominated by a
            pt("d", 5.0, 0.885, 35.0),
        ];
        let c = choose(&pts, &rules(0.88));
        assert_eq!(c.winner.map(|w| pts[w].key.as_str()), Some("d"));
        assert_eq!(keys(&pts, &c.pareto), ["b", "d", "a", "parent"]);
        assert!(c.reason.contains("fastest p50"), "{}", c.reason);
        assert!(c.reason.contains("4 models meeting accuracy ≥ 88.00 %"), "{}", c.reason);
        assert!(c.closest.is_empty());
    }

    #[test]
    fn with_a_latency_budget_the_most_accurate_model_within_it_wins() {
        let pts =
            [pt("parent", 10.0, 0.90, 50.0), pt("a", 6.0, 0.89, 40.0), pt("d", 5.0, 0.885, 35.0)];
        let mut r = rules(0.80);
        r.latency_budget_ms = Some(8.0);
        let c = choose(&pts, &r);
        assert_eq!(c.winner.map(|w| pts[w].key.as_str()), Some("a"));
        assert!(c.reason.contains("within the p50 budget of 8 ms"), "{}", c.reason);
        // A slower class (every latency doubled) needs a smaller model for the same budget.
        let slow: Vec<Point> =
            pts.iter().map(|p| Point { latency_ms: p.latency_ms * 1.5, ..p.clone() }).collect();
        let c = choose(&slow, &r);
        assert_eq!(c.winner.map(|w| slow[w].key.as_str()), Some("d"));
    }

    #[test]
    fn a_language_model_s_ties_go_to_the_lower_perplexity_and_only_ties() {
        let lm = |key, ms, agreement, ppl| Point {
            secondary: tie_break(None, Some(ppl)).unwrap(),
            ..pt(key, ms, agreement, 50.0)
        };
        let pts =
            [lm("parent", 10.0, 1.0, 70.0), lm("a", 4.0, 0.3, 320.0), lm("b", 3.0, 0.3, 690.0)];
        let mut r = rules(0.2);
        r.latency_budget_ms = Some(5.0);
        let c = choose(&pts, &r);
        assert_eq!(
            c.winner.map(|w| pts[w].key.as_str()),
            Some("a"),
            "same agreement, lower perplexity"
        );
        // One position more of 1,024 in agreement outweighs any perplexity.
        let pts = [lm("a", 4.0, 0.3, 1.0), lm("b", 3.0, 0.3 + 1.0 / 1024.0, 1e6)];
        let c = choose(&pts, &r);
        assert_eq!(c.winner.map(|w| pts[w].key.as_str()), Some("b"));
        assert_eq!(tie_break(Some(0.9), Some(300.0)), Some(0.9), "the cosine first");
        assert_eq!(tie_break(None, Some(f64::NAN)), None);
    }

    #[test]
    fn equal_agreement_is_broken_by_the_cosine_with_the_parent() {
        let mut pts =
            [pt("parent", 10.0, 1.0, 50.0), pt("a", 6.0, 1.0, 40.0), pt("b", 4.0, 1.0, 30.0)];
        pts[1].secondary = 0.999;
        pts[2].secondary = 0.99;
        let mut r = rules(0.9);
        r.latency_budget_ms = Some(8.0);
        let c = choose(&pts, &r);
        assert_eq!(c.winner.map(|w| pts[w].key.as_str()), Some("a"), "closest within budget");
        assert_eq!(keys(&pts, &c.pareto), ["b", "a", "parent"]);
        r.latency_budget_ms = Some(20.0);
        let c = choose(&pts, &r);
        assert_eq!(c.winner.map(|w| pts[w].key.as_str()), Some("parent"));
    }

    #[test]
    fn a_memory_cap_excludes_larger_models() {
        let pts =
            [pt("parent", 10.0, 0.90, 50.0), pt("a", 6.0, 0.89, 40.0), pt("d", 5.0, 0.885, 35.0)];
        let mut r = rules(0.80);
        r.memory_cap_bytes = Some(36.0 * 1048576.0);
        let c = choose(&pts, &r);
        assert_eq!(c.winner.map(|w| pts[w].key.as_str()), Some("d"));
        r.memory_cap_bytes = Some(30.0 * 1048576.0);
        let c = choose(&pts, &r);
        assert_eq!(c.winner, None);
        assert!(c.reason.starts_with("no candidate meets"), "{}", c.reason);
        assert!(c.reason.contains("peak RSS within 30 MiB"), "{}", c.reason);
        assert_eq!(keys(&pts, &c.closest), ["d", "a", "parent"], "least over the cap first");
    }

    #[test]
    fn no_candidate_meets_names_the_closest_and_ignores_unmeasured_points() {
        let pts = [
            pt("parent", 10.0, 0.90, 50.0),
            pt("a", 6.0, 0.70, 40.0),
            pt("nan", f64::NAN, 0.95, 40.0),
        ];
        let c = choose(&pts, &rules(0.95));
        assert_eq!(c.winner, None);
        assert_eq!(keys(&pts, &c.closest), ["parent", "a"]);
        assert!(!c.pareto.contains(&2));
        let c = choose(&[], &rules(0.5));
        assert_eq!((c.winner, c.pareto.len(), c.closest.len()), (None, 0, 0));
    }
}
