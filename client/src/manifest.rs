//! `rouse.yaml`: one file describing namespaces, their env and secrets,
//! their containers (with an image or a build) and triggers, read by
//! `rouse apply`, `rouse diff` and written by `rouse export`.
//!
//! The shape is a contract (scripts rely on it): keys are camelCase, new
//! keys may be added, these are never renamed. Unknown keys, wrong types,
//! values out of range, names that are not DNS labels and secret values
//! written inline are refused with the line and column (the checks run as
//! the file is read, so the YAML reader places them). A JSON Schema of the
//! file is in `schema/rouse.schema.json`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The file's version: `rouse/v1`.
pub const API_VERSION: &str = "rouse/v1";

/// A whole `rouse.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "rouse.yaml",
    description = "Namespaces, containers and triggers that `rouse apply -f` makes the cluster hold."
)]
pub struct Manifest {
    pub api_version: ApiVersion,
    pub namespaces: Vec<Namespace>,
}

/// `rouse/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApiVersion;

impl Serialize for ApiVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(API_VERSION)
    }
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if v == API_VERSION {
            Ok(ApiVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "apiVersion: {v:?} is not {API_VERSION:?} (the only version this rouse reads)"
            )))
        }
    }
}

impl JsonSchema for ApiVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ApiVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "const": API_VERSION })
    }
}

/// A namespace and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub name: Name,
    /// Env vars every container of the namespace gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets every container of the namespace gets as env vars.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Ids of the namespace's tokens to keep: with `--prune`, apply revokes
    /// its other live tokens. Left out: tokens are not touched. (Tokens are
    /// minted with `rouse token create`; their values never go in a file.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
}

/// A container: every setting `rouse container deploy` has, and `build`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub name: Name,
    /// An image reference; with `build`, where the built image is pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Build the image from a Dockerfile (with buildah).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_scale: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
    /// Request timeout, 10s to 900s (`60s`, `5m`, or seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// CPU in mVCPU (1000 = 1 vCPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Memory in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Idle time before scaling to zero (`5m`, or seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_after: Option<Span>,
    /// Ready when this path answers 2xx (default: the port accepting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// Place instances only on nodes of this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Which instances a node's mesh sends requests to (default local-first:
    /// its own, its zone's, its region's, then anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_rootfs: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
}

/// How to build a container's image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Build {
    /// The build context, relative to the file.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// `--build-arg`s.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// A trigger: a cron schedule or a NATS JetStream subject.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Trigger {
    pub name: Name,
    /// 5 fields, or 6 with leading seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Seconds a tick missed with no leader may still fire late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// A secret (its name) holding the NATS credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_credentials: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    Public,
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    LocalFirst,
    Any,
}

impl Routing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Routing::LocalFirst => "local-first",
            Routing::Any => "any",
        }
    }
}

/// Where a secret's value comes from, on the machine running `rouse`:
/// never the value itself. Written `{env: VAR}` or `{file: PATH}`.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// An env var of the `rouse` process.
    Env(String),
    /// A file, relative to the manifest.
    File(PathBuf),
}

/// The written form: one of the two keys.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceMap {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
}

impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SecretSource::Env(e) => SourceMap {
                env: Some(e.clone()),
                file: None,
            },
            SecretSource::File(f) => SourceMap {
                env: None,
                file: Some(f.clone()),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        if !v.is_mapping() {
            return Err(serde::de::Error::custom(
                "secrets are never written inline: use {env: VAR} or {file: PATH}",
            ));
        }
        match serde_yaml::from_value::<SourceMap>(v) {
            Ok(SourceMap {
                env: Some(e),
                file: None,
            }) => Ok(SecretSource::Env(e)),
            Ok(SourceMap {
                env: None,
                file: Some(f),
            }) => Ok(SecretSource::File(f)),
            _ => Err(serde::de::Error::custom(
                "a secret is {env: VAR} or {file: PATH} (one of them)",
            )),
        }
    }
}

/// A DNS label: 1–63 of a-z, 0-9 and `-`, starting with a letter, not
/// ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, JsonSchema)]
#[schemars(transparent)]
pub struct Name(#[schemars(regex(pattern = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"))] pub String);

impl Name {
    pub fn check(v: &str) -> Result<(), String> {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_lowercase())
            && !v.ends_with('-')
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "name {v:?} is not a DNS label (1-63 of a-z, 0-9 and '-', starting with a letter, not ending with '-')"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        Name::check(&v).map_err(serde::de::Error::custom)?;
        Ok(Name(v))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration written `90s`, `5m`, `1h` or as seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(transparent)]
pub struct Span(#[schemars(with = "DurationText")] pub Duration);

/// `90s`, `5m`, `1h30m`, or a number of seconds.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DurationText {
    Text(#[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))] String),
    Seconds(u32),
}

fn duration_of<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|_| {
            serde::de::Error::custom(format!("{t:?} is not a duration (90s, 5m, 1h, or seconds)"))
        }),
    }
}

fn text_of(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration_of(d).map(Span)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&text_of(self.0))
    }
}

/// A request timeout: 10 s to 900 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(transparent)]
pub struct Timeout(#[schemars(with = "DurationText")] pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = duration_of(d)?;
        if t < Duration::from_secs(10) || t > Duration::from_secs(900) {
            return Err(serde::de::Error::custom(format!(
                "timeout {} is outside 10s-900s",
                humantime::format_duration(t)
            )));
        }
        Ok(Timeout(t))
    }
}

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&text_of(self.0))
    }
}

/// Why a file was refused: one line, with where.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub message: String,
}

/// Keys whose values are checked as they are read: the YAML reader places
/// such an error at the start of the enclosing mapping, so it is moved to
/// the key's own line (the first `KEY:` at or below that mapping's
/// indentation, from its line on).
const CHECKED_KEYS: &[(&str, &str)] = &[("timeout ", "timeout"), ("name ", "name")];

fn relocate(text: &str, message: &str) -> String {
    let Some((head, at)) = message.rsplit_once(" at line ") else {
        // The document's own keys: placed nowhere by the reader.
        if message.starts_with("apiVersion: ") {
            if let Some(i) = text.lines().position(|l| l.starts_with("apiVersion:")) {
                return format!("{message} at line {} column 1", i + 1);
            }
        }
        return message.to_string();
    };
    let Some((line, col)) = at
        .split_once(" column ")
        .and_then(|(l, c)| Some((l.parse::<usize>().ok()?, c.trim().parse::<usize>().ok()?)))
    else {
        return message.to_string();
    };
    let what = head.rsplit(": ").next().unwrap_or(head);
    let Some((_, key)) = CHECKED_KEYS.iter().find(|(p, _)| what.starts_with(p)) else {
        return message.to_string();
    };
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let body = l.trim_start();
        let indent = l.len() - body.len();
        let body = body.strip_prefix("- ").unwrap_or(body);
        let indent = if l.trim_start().starts_with("- ") {
            indent + 2
        } else {
            indent
        };
        if indent + 1 < col && i + 1 > line {
            break;
        }
        if body.starts_with(&format!("{key}:")) {
            return format!("{head} at line {} column {}", i + 1, indent + 1);
        }
    }
    message.to_string()
}

impl Manifest {
    /// Reads `text` (the file named `file`, for messages). Every refusal
    /// names the line and column and the rule.
    pub fn parse(file: &str, text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = serde_yaml::from_str(text).map_err(|e| ManifestError {
            file: file.to_string(),
            message: relocate(text, &e.to_string()),
        })?;
        m.check().map_err(|message| ManifestError {
            file: file.to_string(),
            message,
        })?;
        Ok(m)
    }

    /// What cannot be checked value by value: duplicates, image or build.
    fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for ns in &self.namespaces {
            if !seen.insert(&ns.name) {
                return Err(format!("namespaces: {} is named twice", ns.name));
            }
            let mut cts = std::collections::BTreeSet::new();
            for c in &ns.containers {
                if !cts.insert(&c.name) {
                    return Err(format!(
                        "namespaces.{}.containers: {} is named twice",
                        ns.name, c.name
                    ));
                }
                if c.image.is_none() && c.build.is_none() {
                    return Err(format!(
                        "namespaces.{}.containers.{}: needs image or build",
                        ns.name, c.name
                    ));
                }
                let mut trs = std::collections::BTreeSet::new();
                for t in &c.triggers {
                    if !trs.insert(&t.name) {
                        return Err(format!(
                            "namespaces.{}.containers.{}.triggers: {} is named twice",
                            ns.name, c.name, t.name
                        ));
                    }
                    if t.cron.is_some() == t.nats_subject.is_some() {
                        return Err(format!(
                            "namespaces.{}.containers.{}.triggers.{}: needs cron or natsSubject (one of them)",
                            ns.name, c.name, t.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The JSON Schema of the file.
    pub fn schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Manifest)).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: rouse/v1
namespaces:
  - name: shop
    env: {CURRENCY: EUR}
    secrets: {DB_PASSWORD: {env: DB_PASSWORD}}
    containers:
      - name: web
        image: registry.local/web:1.4
        port: 8080
        minScale: 0
        maxScale: 10
        maxConcurrency: 80
        timeout: 60s
        cpu: 500
        memory: 256
        privacy: public
        protocol: http1
        scaleToZeroAfter: 5m
        healthPath: /healthz
        env: {MODE: prod}
        secrets: {API_KEY: {file: ./api.key}}
        triggers:
          - name: nightly
            cron: \"0 3 * * *\"
            timezone: Europe/Paris
            path: /jobs/nightly
";

    #[test]
    fn the_contract_shape_reads() {
        let m = Manifest::parse("rouse.yaml", GOOD).unwrap();
        let c = &m.namespaces[0].containers[0];
        assert_eq!(c.timeout, Some(Timeout(Duration::from_secs(60))));
        assert_eq!(c.scale_to_zero_after, Some(Span(Duration::from_secs(300))));
        assert_eq!(
            c.secrets["API_KEY"],
            SecretSource::File(PathBuf::from("./api.key"))
        );
        // Written back, it reads the same.
        let again = serde_yaml::to_string(&m).unwrap();
        assert_eq!(Manifest::parse("again", &again).unwrap(), m);
    }

    /// Each bad file: one error, with the line and column and the rule.
    #[test]
    fn bad_files_name_line_column_and_rule() {
        let cases = [
            (
                "unknown key",
                GOOD.replace("maxScale: 10", "maxScal: 10"),
                "line 11",
                "unknown field `maxScal`",
            ),
            (
                "wrong type",
                GOOD.replace("cpu: 500", "cpu: lots"),
                "line 14",
                "invalid type",
            ),
            (
                "timeout out of range",
                GOOD.replace("timeout: 60s", "timeout: 20m"),
                "line 13",
                "outside 10s-900s",
            ),
            (
                "inline secret",
                GOOD.replace(
                    "{DB_PASSWORD: {env: DB_PASSWORD}}",
                    "{DB_PASSWORD: hunter2}",
                ),
                "line 5",
                "never written inline",
            ),
            (
                "not a DNS label",
                GOOD.replace("name: web", "name: Web_1"),
                "line 7",
                "not a DNS label",
            ),
            (
                "version",
                GOOD.replace("rouse/v1", "rouse/v9"),
                "line 1",
                "apiVersion",
            ),
        ];
        for (what, text, line, rule) in cases {
            let e = Manifest::parse("rouse.yaml", &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(line) && e.contains(rule), "{what}: {e}");
            assert!(e.contains("column"), "{what}: {e}");
            assert!(!e.contains("hunter2"), "{what} shows the secret: {e}");
        }
    }

    /// The examples validate against the schema (as editors check them),
    /// and a bad one does not.
    #[test]
    fn the_examples_validate_against_the_schema() {
        let schema = Manifest::schema();
        let v = jsonschema::validator_for(&schema).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for dir in std::fs::read_dir(&root).unwrap() {
            let file = dir.unwrap().path().join("rouse.yaml");
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            Manifest::parse(&file.display().to_string(), &text).unwrap();
            seen += 1;
        }
        assert!(seen >= 1);
        let good: serde_json::Value = serde_yaml::from_str(GOOD).unwrap();
        assert!(v.is_valid(&good));
        for bad in [
            GOOD.replace("maxScale: 10", "maxScal: 10"),
            GOOD.replace(
                "{DB_PASSWORD: {env: DB_PASSWORD}}",
                "{DB_PASSWORD: hunter2}",
            ),
            GOOD.replace("name: web", "name: Web_1"),
        ] {
            let doc: serde_json::Value = serde_yaml::from_str(&bad).unwrap();
            assert!(!v.is_valid(&doc), "{bad}");
        }
    }

    #[test]
    fn a_container_needs_an_image_or_a_build() {
        let e = Manifest::parse(
            "f",
            &GOOD.replace("        image: registry.local/web:1.4\n", ""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("shop.containers.web: needs image or build"),
            "{e}"
        );
    }
}
