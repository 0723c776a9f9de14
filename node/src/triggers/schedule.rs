//! Cron schedules: parsing (five fields, or six with a leading seconds
//! field, in an IANA time zone; DST as Vixie cron: a time skipped by a
//! spring-forward fires once after the jump, a repeated hour once) and the
//! pure decision of which tick a trigger claims next.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Ticks examined per decision: older ones are counted as missed in bulk.
const SCAN_LIMIT: usize = 10_000;

impl Schedule {
    /// Parses `expr` in `timezone`; errors name the field and the rule.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, (&'static str, String)> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err((
                "schedule",
                format!(
                    "{expr:?} has {fields} fields; a cron schedule has 5 (minute hour day-of-month month day-of-week) or 6 (a leading seconds field)"
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ("schedule", format!("{expr:?} is not a cron schedule: {e}")))?;
        let tz: Tz = timezone.parse().map_err(|_| {
            (
                "timezone",
                format!("{timezone:?} is not an IANA time zone (e.g. UTC, Europe/Paris)"),
            )
        })?;
        Ok(Schedule { cron, tz })
    }

    /// The first tick strictly after `after_ms` (ms since the epoch).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = self.tz.from_utc_datetime(&utc(after_ms)?.naive_utc());
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.with_timezone(&Utc).timestamp_millis()).ok()
    }
}

fn utc(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// What a trigger should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing is due; the next tick is at this time.
    Wait(Option<u64>),
    /// Claim `tick` (late, by less than the catch-up window), after
    /// `missed` older ticks that are past it.
    Claim { tick: u64, missed: u64 },
    /// Every due tick is past the catch-up window: record them as missed
    /// by claiming the last one without delivering it.
    Missed { tick: u64, missed: u64 },
}

/// The next tick to claim after `last_ms` (the last claimed tick, or when
/// the trigger was created or enabled) at `now_ms`.
pub fn due(schedule: &Schedule, last_ms: u64, now_ms: u64, catch_up_ms: u64) -> Due {
    let mut missed = 0;
    let mut t = match schedule.next_after(last_ms) {
        Some(t) => t,
        None => return Due::Wait(None),
    };
    if t > now_ms {
        return Due::Wait(Some(t));
    }
    for _ in 0..SCAN_LIMIT {
        if now_ms - t <= catch_up_ms {
            return Due::Claim { tick: t, missed };
        }
        match schedule.next_after(t) {
            Some(n) if n <= now_ms => {
                missed += 1;
                t = n;
            }
            _ => return Due::Missed { tick: t, missed },
        }
    }
    Due::Missed { tick: t, missed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis() as u64
    }

    #[test]
    fn five_and_six_fields_parse_others_are_refused_by_field() {
        assert!(Schedule::parse("*/5 * * * *", "UTC").is_ok());
        assert!(Schedule::parse("*/2 * * * * *", "UTC").is_ok());
        let (field, rule) = Schedule::parse("* * * *", "UTC").unwrap_err();
        assert_eq!(field, "schedule");
        assert!(rule.contains("4 fields"), "{rule}");
        let (field, _) = Schedule::parse("0 0 * * * * 2030", "UTC").unwrap_err();
        assert_eq!(field, "schedule");
        let (field, rule) = Schedule::parse("61 * * * *", "UTC").unwrap_err();
        assert_eq!(field, "schedule", "{rule}");
        let (field, rule) = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(field, "timezone");
        assert!(rule.contains("IANA"), "{rule}");
    }

    #[test]
    fn seconds_field_ticks_every_two_seconds() {
        let s = Schedule::parse("*/2 * * * * *", "UTC").unwrap();
        let t0 = ms("2026-01-01T00:00:00Z");
        assert_eq!(s.next_after(t0), Some(t0 + 2000));
        assert_eq!(s.next_after(t0 + 1), Some(t0 + 2000));
        // Five fields: the minute's start.
        let m = Schedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(m.next_after(t0 + 1), Some(t0 + 60_000));
    }

    #[test]
    fn time_zones_and_dst_as_cron_users_expect() {
        // 02:30 every day in Paris: on 2026-03-29 02:30 does not exist
        // (02:00 → 03:00); it fires once, right after the jump, at 03:00.
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        let before = ms("2026-03-28T12:00:00Z");
        let next = s.next_after(before).unwrap();
        let after_jump = s.next_after(ms("2026-03-29T00:00:00Z")).unwrap();
        assert_eq!(next, ms("2026-03-29T01:00:00Z"), "03:00 CEST is 01:00 UTC");
        assert_eq!(after_jump, next);
        // 02:30 on 2026-10-25 happens twice (03:00 → 02:00): fired once.
        let first = s.next_after(ms("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, ms("2026-10-25T00:30:00Z"), "02:30 CEST");
        let second = s.next_after(first).unwrap();
        assert_eq!(
            second,
            ms("2026-10-26T01:30:00Z"),
            "the next day, 02:30 CET"
        );
        // Noon in New York is 17:00 UTC in winter.
        let ny = Schedule::parse("0 12 * * *", "America/New_York").unwrap();
        assert_eq!(
            ny.next_after(ms("2026-01-10T00:00:00Z")),
            Some(ms("2026-01-10T17:00:00Z"))
        );
    }

    #[test]
    fn late_ticks_fire_within_the_catch_up_window_and_are_missed_past_it() {
        let s = Schedule::parse("*/2 * * * * *", "UTC").unwrap();
        let t0 = ms("2026-01-01T00:00:00Z");
        assert_eq!(due(&s, t0, t0 + 1000, 60_000), Due::Wait(Some(t0 + 2000)));
        assert_eq!(
            due(&s, t0, t0 + 2000, 60_000),
            Due::Claim {
                tick: t0 + 2000,
                missed: 0
            }
        );
        // 10 s without a leader, catch-up 60 s: the oldest owed tick first.
        assert_eq!(
            due(&s, t0, t0 + 10_500, 60_000),
            Due::Claim {
                tick: t0 + 2000,
                missed: 0
            }
        );
        // Catch-up 3 s: the ticks at 2, 4, 6 s are missed, 8 s is claimed.
        assert_eq!(
            due(&s, t0, t0 + 10_500, 3000),
            Due::Claim {
                tick: t0 + 8000,
                missed: 3
            }
        );
        // Catch-up 0 and now between ticks: all due ticks are missed.
        assert_eq!(
            due(&s, t0, t0 + 10_500, 0),
            Due::Missed {
                tick: t0 + 10_000,
                missed: 4
            }
        );
    }
}
