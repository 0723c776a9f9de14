//! Which images to delete: those no instance here has wanted for
//! `after`. Pure; the agent keeps the last-use times between passes and
//! deletes what this returns.

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

#[cfg(test)]
mod tests {
    use super::*;

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
