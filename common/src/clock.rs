//! The one wall clock of Hone: job expiries, statuses and database times are all Unix
//! milliseconds from [`now_ms`]. Reading the clock is the only thing here that touches the
//! system; it does no IO.

/// Unix time in milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
