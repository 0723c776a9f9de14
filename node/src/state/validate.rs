//! Input rules, checked before anything is proposed. Each failure names
//! the field and the rule it broke.

use std::collections::BTreeMap;

use super::ContainerSpec;

/// A rule broken by one field of a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Invalid {
    pub field: String,
    pub rule: String,
}

fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

pub const MAX_ENV_VARS: usize = 100;
pub const MAX_ENV_KEY_BYTES: usize = 256;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
pub const MAX_ENV_TOTAL_BYTES: usize = 64 * 1024;
pub const MIN_TIMEOUT_SECS: u32 = 10;
pub const MAX_TIMEOUT_SECS: u32 = 900;
pub const MIN_CPU_MVCPU: u32 = 100;
pub const MAX_CPU_MVCPU: u32 = 16_000;
pub const MIN_MEMORY_MB: u32 = 64;
pub const MAX_MEMORY_MB: u32 = 65_536;
pub const MIN_CONCURRENCY: u32 = 1;
pub const MAX_CONCURRENCY: u32 = 1000;
pub const DEFAULT_SCALE_CAP: u32 = 50;
pub const MIN_SCALE_TO_ZERO_SECS: u32 = 10;
pub const MAX_SCALE_TO_ZERO_SECS: u32 = 86_400;
pub const MAX_IMAGE_BYTES: usize = 1024;
/// Env var names rouse sets itself.
pub const RESERVED_ENV: &[&str] = &["PORT"];

/// A DNS label: 1–63 chars of a-z, 0-9 and '-', not starting or ending with '-'.
pub fn dns_label(field: &str, value: &str) -> Result<(), Invalid> {
    const RULE: &str = "must be a DNS label (1-63 characters of a-z, 0-9 and '-', not starting or ending with '-')";
    if value.is_empty() {
        return Err(invalid(field, format!("is empty; {RULE}")));
    }
    if value.len() > 63 {
        return Err(invalid(
            field,
            format!("{:?} is {} characters long; {RULE}", value, value.len()),
        ));
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(field, format!("{value:?} {RULE}")));
    }
    Ok(())
}

/// POSIX env var names (`[A-Za-z_][A-Za-z0-9_]*`) and size caps.
pub fn env(field: &str, env: &BTreeMap<String, String>, reserved: &[&str]) -> Result<(), Invalid> {
    if env.len() > MAX_ENV_VARS {
        return Err(invalid(
            field,
            format!(
                "{} variables; at most {MAX_ENV_VARS} are allowed",
                env.len()
            ),
        ));
    }
    let mut total = 0usize;
    for (k, v) in env {
        let f = format!("{field}.{k}");
        let mut bytes = k.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid(
                if k.is_empty() { field.to_string() } else { f },
                format!("{k:?} is not a POSIX variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if k.len() > MAX_ENV_KEY_BYTES {
            return Err(invalid(
                f,
                format!("name is {} bytes; at most {MAX_ENV_KEY_BYTES}", k.len()),
            ));
        }
        if v.len() > MAX_ENV_VALUE_BYTES {
            return Err(invalid(
                f,
                format!("value is {} bytes; at most {MAX_ENV_VALUE_BYTES}", v.len()),
            ));
        }
        if reserved.contains(&k.as_str()) {
            return Err(invalid(f, "is reserved: rouse sets it for every instance"));
        }
        if v.contains('\0') {
            return Err(invalid(f, "value contains a NUL byte"));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(invalid(
            field,
            format!("{total} bytes in all; at most {MAX_ENV_TOTAL_BYTES}"),
        ));
    }
    Ok(())
}

fn range(field: &str, value: u32, min: u32, max: u32, unit: &str) -> Result<(), Invalid> {
    if value < min {
        return Err(invalid(
            field,
            format!("{value}{unit} is below the minimum {min}{unit}"),
        ));
    }
    if value > max {
        return Err(invalid(
            field,
            format!("{value}{unit} is above the maximum {max}{unit}"),
        ));
    }
    Ok(())
}

/// An image reference: non-empty, printable, no whitespace.
pub fn image(field: &str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(invalid(
            field,
            "is required (an OCI image reference such as registry/repo:tag)",
        ));
    }
    if value.len() > MAX_IMAGE_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {MAX_IMAGE_BYTES}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!("{value:?} contains whitespace or control characters"),
        ));
    }
    if value.starts_with(['/', ':', '@']) || value.ends_with(['/', ':', '@']) {
        return Err(invalid(
            field,
            format!("{value:?} is not an image reference"),
        ));
    }
    Ok(())
}

/// Every rule on a complete container spec.
pub fn container_spec(spec: &ContainerSpec, scale_cap: u32) -> Result<(), Invalid> {
    image("image", &spec.image)?;
    range("port", spec.port, 1, 65_535, "")?;
    env("env", &spec.env, RESERVED_ENV)?;
    range(
        "cpu",
        spec.cpu_mvcpu,
        MIN_CPU_MVCPU,
        MAX_CPU_MVCPU,
        " mVCPU",
    )?;
    range(
        "memory",
        spec.memory_mb,
        MIN_MEMORY_MB,
        MAX_MEMORY_MB,
        " MB",
    )?;
    range(
        "timeout",
        spec.timeout_secs,
        MIN_TIMEOUT_SECS,
        MAX_TIMEOUT_SECS,
        "s",
    )?;
    range(
        "max_concurrency",
        spec.max_concurrency,
        MIN_CONCURRENCY,
        MAX_CONCURRENCY,
        "",
    )?;
    range(
        "scale_to_zero_after",
        spec.scale_to_zero_after_secs,
        MIN_SCALE_TO_ZERO_SECS,
        MAX_SCALE_TO_ZERO_SECS,
        "s",
    )?;
    if let Some(p) = &spec.health_path {
        if !p.starts_with('/')
            || p.len() > 1024
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "health_path",
                format!("{p:?} must be an absolute URL path such as /healthz"),
            ));
        }
    }
    if spec.max_scale == 0 {
        return Err(invalid("max_scale", "must be at least 1"));
    }
    if spec.max_scale > scale_cap {
        return Err(invalid(
            "max_scale",
            format!("{} is above the cluster cap {scale_cap}", spec.max_scale),
        ));
    }
    if spec.min_scale > spec.max_scale {
        return Err(invalid(
            "min_scale",
            format!(
                "{} is above max_scale {}; need 0 <= min_scale <= max_scale",
                spec.min_scale, spec.max_scale
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "a-b", "abc123", &"x".repeat(63)] {
            assert!(dns_label("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64), "é"] {
            let e = dns_label("name", bad).unwrap_err();
            assert_eq!(e.field, "name");
        }
    }

    #[test]
    fn env_rules() {
        let mut m = BTreeMap::new();
        m.insert("GOOD_1".to_string(), "v".to_string());
        assert!(env("env", &m, RESERVED_ENV).is_ok());
        m.insert("1BAD".to_string(), "v".to_string());
        assert_eq!(env("env", &m, RESERVED_ENV).unwrap_err().field, "env.1BAD");
        let mut m = BTreeMap::new();
        m.insert("PORT".to_string(), "1".to_string());
        assert!(env("env", &m, RESERVED_ENV)
            .unwrap_err()
            .rule
            .contains("reserved"));
        let many: BTreeMap<_, _> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("K{i}"), String::new()))
            .collect();
        assert!(env("env", &many, &[]).is_err());
        let mut big = BTreeMap::new();
        big.insert("K".to_string(), "x".repeat(MAX_ENV_VALUE_BYTES + 1));
        assert_eq!(env("env", &big, &[]).unwrap_err().field, "env.K");
    }

    #[test]
    fn spec_rules_name_the_field() {
        let ok = ContainerSpec::with_image("registry.local/app:1");
        assert!(container_spec(&ok, DEFAULT_SCALE_CAP).is_ok());
        type Mutation = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("timeout", Box::new(|s| s.timeout_secs = 5)),
            ("timeout", Box::new(|s| s.timeout_secs = 901)),
            ("cpu", Box::new(|s| s.cpu_mvcpu = 99)),
            ("cpu", Box::new(|s| s.cpu_mvcpu = 16_001)),
            ("memory", Box::new(|s| s.memory_mb = 63)),
            ("memory", Box::new(|s| s.memory_mb = 65_537)),
            ("max_concurrency", Box::new(|s| s.max_concurrency = 0)),
            ("max_concurrency", Box::new(|s| s.max_concurrency = 1001)),
            ("max_scale", Box::new(|s| s.max_scale = 51)),
            ("max_scale", Box::new(|s| s.max_scale = 0)),
            (
                "min_scale",
                Box::new(|s| {
                    s.min_scale = 3;
                    s.max_scale = 2
                }),
            ),
            ("image", Box::new(|s| s.image = String::new())),
            ("image", Box::new(|s| s.image = "a b".into())),
            ("port", Box::new(|s| s.port = 0)),
            ("port", Box::new(|s| s.port = 70_000)),
        ];
        for (field, mutate) in cases {
            let mut s = ok.clone();
            mutate(&mut s);
            let e = container_spec(&s, DEFAULT_SCALE_CAP).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let e = container_spec(
            &ContainerSpec {
                timeout_secs: 5,
                ..ok
            },
            50,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "timeout: 5s is below the minimum 10s");
    }
}
