//! What to delete: images no instance here has wanted for `after`, and
//! log files of instances gone for longer than the log retention. Pure;
//! the agent keeps the last-use times between passes and deletes what
//! these return.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Updates `last_use` (images in use are used now; images never seen start
/// their clock now) and returns the images unused for `after`.
pub fn unused(
    images: &[String],
    in_use: &HashSet<String>,
    last_use: &mut HashMap<String, Instant>,
    now: Instant,
    after: Duration,
) -> Vec<String> {
    let mut doomed = Vec::new();
    for img in images {
        if in_use.contains(img) {
            last_use.insert(img.clone(), now);
            continue;
        }
        let last = *last_use.entry(img.clone()).or_insert(now);
        if now.duration_since(last) >= after {
            doomed.push(img.clone());
        }
    }
    doomed
}

/// Log files (`<id>.log`, `<id>.log.1`) of instances not in `live` whose
/// last write is older than `retention` (kept that long so that `logs` can
/// show why a crashed or removed instance ended).
pub fn stale_logs(
    files: &[(String, std::time::SystemTime)],
    live: &HashSet<String>,
    now: std::time::SystemTime,
    retention: Duration,
) -> Vec<String> {
    files
        .iter()
        .filter(|(name, modified)| {
            let id = name
                .strip_suffix(".log")
                .or_else(|| name.strip_suffix(".log.1"));
            id.is_some_and(|id| !live.contains(id))
                && now.duration_since(*modified).unwrap_or_default() >= retention
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_of_gone_instances_go_after_the_retention() {
        let now = std::time::SystemTime::now();
        let hour = Duration::from_secs(3600);
        let files = vec![
            ("live.log".to_string(), now - 2 * hour),
            ("gone.log".to_string(), now - 2 * hour),
            ("gone.log.1".to_string(), now - 2 * hour),
            ("recent.log".to_string(), now - Duration::from_secs(60)),
            ("notes.txt".to_string(), now - 2 * hour),
        ];
        let live = HashSet::from(["live".to_string()]);
        let mut doomed = stale_logs(&files, &live, now, hour);
        doomed.sort();
        assert_eq!(doomed, ["gone.log", "gone.log.1"]);
    }

    #[test]
    fn an_image_goes_only_after_a_full_unused_period() {
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let images = vec!["a".to_string(), "b".to_string()];
        let in_use = HashSet::from(["a".to_string()]);
        let mut last = HashMap::new();
        assert!(
            unused(&images, &in_use, &mut last, t0, after).is_empty(),
            "b's clock starts"
        );
        assert!(unused(
            &images,
            &in_use,
            &mut last,
            t0 + Duration::from_secs(9),
            after
        )
        .is_empty());
        assert_eq!(
            unused(
                &images,
                &in_use,
                &mut last,
                t0 + Duration::from_secs(10),
                after
            ),
            vec!["b"]
        );
        // Wanted again: its clock restarts.
        let both = HashSet::from(["a".to_string(), "b".to_string()]);
        unused(
            &images,
            &both,
            &mut last,
            t0 + Duration::from_secs(11),
            after,
        );
        assert!(unused(
            &images,
            &in_use,
            &mut last,
            t0 + Duration::from_secs(12),
            after
        )
        .is_empty());
    }
}
