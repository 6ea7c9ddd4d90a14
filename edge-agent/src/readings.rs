//! Temperatures and clocks of the host, read from sysfs while a benchmark runs. On a real
//! board this is how throttling shows up; on hosts without thermal zones or cpufreq the readings
//! stay empty (`None`), never invented.

use std::fs;
use std::time::{Duration, Instant};

use hone_common::bench::DeviceReadings;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t_s: f64,
    /// Hottest thermal zone, °C.
    pub temperature_c: Option<f64>,
    /// Slowest current core clock, MHz.
    pub cpu_mhz: Option<u32>,
    /// Whether any core ran below 95 % of its maximum clock.
    pub throttled: bool,
}

fn read_num(path: &std::path::Path) -> Option<f64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads the current sample.
pub fn sample(t_s: f64) -> Sample {
    let temperature_c = fs::read_dir("/sys/class/thermal")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| read_num(&e.path().join("temp")))
        .map(|milli| milli / 1000.0)
        .fold(None, |acc: Option<f64>, t| Some(acc.map_or(t, |a| a.max(t))));
    let mut cpu_mhz: Option<u32> = None;
    let mut throttled = false;
    for e in
        fs::read_dir("/sys/devices/system/cpu").ok().into_iter().flatten().filter_map(|e| e.ok())
    {
        let freq = e.path().join("cpufreq");
        if let Some(cur) = read_num(&freq.join("scaling_cur_freq")) {
            let mhz = (cur / 1000.0) as u32;
            cpu_mhz = Some(cpu_mhz.map_or(mhz, |m| m.min(mhz)));
            if let Some(max) = read_num(&freq.join("cpuinfo_max_freq")) {
                throttled |= cur < 0.95 * max;
            }
        }
    }
    Sample { t_s, temperature_c, cpu_mhz, throttled }
}

/// Samples every `interval` until `stop` is set; returns the samples.
pub async fn sample_until(
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Sample> {
    let start = Instant::now();
    let mut out = vec![sample(0.0)];
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => out.push(sample(start.elapsed().as_secs_f64())),
            _ = stop.changed() => break,
        }
    }
    out.push(sample(start.elapsed().as_secs_f64()));
    out
}

/// Summarises samples.
pub fn summarize(samples: &[Sample]) -> DeviceReadings {
    let clocks: Vec<u32> = samples.iter().filter_map(|s| s.cpu_mhz).collect();
    DeviceReadings {
        temperature_start_c: samples.first().and_then(|s| s.temperature_c),
        temperature_end_c: samples.last().and_then(|s| s.temperature_c),
        cpu_mhz_min: clocks.iter().min().copied(),
        cpu_mhz_max: clocks.iter().max().copied(),
        throttle_events: samples.iter().filter(|s| s.throttled).count() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_extremes_and_counts_throttled_samples() {
        let s = |t, temp, mhz, throttled| Sample {
            t_s: t,
            temperature_c: temp,
            cpu_mhz: mhz,
            throttled,
        };
        let r = summarize(&[
            s(0.0, Some(40.0), Some(1500), false),
            s(1.0, Some(70.0), Some(1000), true),
            s(2.0, Some(80.0), Some(1200), true),
        ]);
        assert_eq!((r.temperature_start_c, r.temperature_end_c), (Some(40.0), Some(80.0)));
        assert_eq!((r.cpu_mhz_min, r.cpu_mhz_max, r.throttle_events), (Some(1000), Some(1500), 2));
    }

    #[test]
    fn hosts_without_sensors_report_nothing_rather_than_zeros() {
        let r =
            summarize(&[Sample { t_s: 0.0, temperature_c: None, cpu_mhz: None, throttled: false }]);
        assert_eq!(r, DeviceReadings::default());
    }
}
