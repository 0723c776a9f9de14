//! The one way a test waits for something: retry until it holds, with one
//! patience setting, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] keeps trying.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Retries `f` until it returns `Ok`, or panics after [`PATIENCE`] with the
/// last error.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    eventually_within(PATIENCE, what, f).await
}

/// Like [`eventually`], with another patience.
pub async fn eventually_within<T, E: std::fmt::Debug, F, Fut>(
    patience: Duration,
    what: &str,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > patience => {
                panic!("{what}: still failing after {patience:?}: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Retries a blocking check from synchronous code (no runtime around).
pub fn eventually_blocking<T, E: std::fmt::Debug>(
    patience: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > patience => {
                panic!("{what}: still failing after {patience:?}: {e:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_until_ok() {
        let mut n = 0;
        let v = eventually("counts to 3", || {
            n += 1;
            let now = n;
            async move {
                if now >= 3 {
                    Ok(now)
                } else {
                    Err("not yet")
                }
            }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: still failing")]
    async fn gives_up_with_the_last_error() {
        eventually_within(Duration::from_millis(250), "never", || async {
            Err::<(), _>("nope")
        })
        .await;
    }
}
