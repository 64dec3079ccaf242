//! Access logs, as Istio's sidecars write them: one line per call, in Envoy's default text
//! format (Istio's default `envoy` provider) or as JSON with the same fields, to the sidecar's
//! stdout, filtered by a Telemetry resource's expression. Lines are written by a thread of
//! their own through a bounded queue ([`writer`]), so a slow reader of stdout never slows a
//! call: when the queue is full, lines are dropped and counted.

pub mod filter;
pub mod writer;

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub use filter::Filter;
pub use writer::Writer;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// Envoy's default format, as Istio configures it.
    #[serde(rename = "TEXT")]
    Text,
    /// One JSON object per line, with Envoy's field names.
    #[serde(rename = "JSON")]
    Json,
}

/// A provider Weft's mesh configuration defines, by the name a Telemetry resource gives.
pub fn provider(name: &str) -> Option<Encoding> {
    match name {
        "envoy" => Some(Encoding::Text),
        "envoy-json" => Some(Encoding::Json),
        _ => None,
    }
}

/// The providers [`provider`] knows, for messages.
pub const PROVIDERS: &str =
    "envoy (Envoy's text format on stdout), envoy-json (the same fields as JSON on stdout)";

/// One call, as its log line tells it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// When the request head arrived.
    pub start: Option<SystemTime>,
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The status sent; 0 when none was.
    pub response_code: u16,
    /// Envoy's flags (`URX`, `UF,URX`) or `-`.
    pub response_flags: String,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Milliseconds from the head to the end of the response.
    pub duration_ms: u64,
    /// `x-forwarded-for` as the request carried it.
    pub x_forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `:authority` / `Host`.
    pub authority: Option<String>,
    /// The endpoint that answered (`ip:port`).
    pub upstream_host: Option<String>,
    /// Istio's cluster name (`outbound|80|v1|payments.default.svc.cluster.local`).
    pub upstream_cluster: Option<String>,
    /// The caller's address.
    pub downstream_remote_address: Option<String>,
    /// The route taken (a VirtualService `http` entry's name), when one was named.
    pub route_name: Option<String>,
}

/// RFC 3339 in UTC with milliseconds, as Envoy's `%START_TIME%`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

impl Entry {
    /// The line, without its newline.
    pub fn format(&self, encoding: Encoding) -> String {
        let start = self.start.map_or_else(|| "-".to_string(), rfc3339);
        match encoding {
            // Istio's default: [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%
            // %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%
            // %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
            // %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
            // "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%"
            // "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS%
            // %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME%
            // %ROUTE_NAME%
            Encoding::Text => {
                let mut line = String::with_capacity(256);
                let _ = write!(
                    line,
                    "[{start}] \"{} {} {}\" {} {} - - \"-\" {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - - {} - {}",
                    self.method,
                    self.path,
                    self.protocol,
                    self.response_code,
                    self.response_flags,
                    self.bytes_received,
                    self.bytes_sent,
                    self.duration_ms,
                    or_dash(&self.x_forwarded_for),
                    or_dash(&self.user_agent),
                    or_dash(&self.request_id),
                    or_dash(&self.authority),
                    or_dash(&self.upstream_host),
                    or_dash(&self.upstream_cluster),
                    or_dash(&self.downstream_remote_address),
                    or_dash(&self.route_name),
                );
                line
            }
            Encoding::Json => self.to_json().to_string(),
        }
    }

    /// Its fields as a JSON object, under Envoy's names.
    pub fn to_json(&self) -> serde_json::Value {
        let start = self.start.map_or_else(|| "-".to_string(), rfc3339);
        serde_json::json!({
                "start_time": start,
                "method": self.method,
                "path": self.path,
                "protocol": self.protocol,
                "response_code": self.response_code,
                "response_flags": self.response_flags,
                "bytes_received": self.bytes_received,
                "bytes_sent": self.bytes_sent,
                "duration": self.duration_ms,
                "x_forwarded_for": self.x_forwarded_for,
                "user_agent": self.user_agent,
                "request_id": self.request_id,
                "authority": self.authority,
                "upstream_host": self.upstream_host,
                "upstream_cluster": self.upstream_cluster,
                "downstream_remote_address": self.downstream_remote_address,
                "route_name": self.route_name,
        })
    }
}

/// Where and how one side's calls are logged, as a snapshot gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sink {
    /// The line format.
    pub encoding: Encoding,
    /// Only calls the expression holds for (Istio's CEL, the subset [`Filter`] reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The file lines are appended to; none: stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A sidecar's access logging, per side of its calls; both empty: off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sides {
    /// The calls its workload makes (the outbound side).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client: Vec<Sink>,
    /// The calls its workload takes (the inbound side).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server: Vec<Sink>,
}

impl Sides {
    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.client.is_empty() && self.server.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry() -> Entry {
        Entry {
            start: Some(UNIX_EPOCH + Duration::from_millis(1_796_874_979_123)),
            method: "GET".into(),
            path: "/charge?x=1".into(),
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: "URX".into(),
            bytes_received: 0,
            bytes_sent: 12,
            duration_ms: 7,
            x_forwarded_for: Some("198.18.0.5".into()),
            user_agent: Some("curl/7.88.1".into()),
            request_id: Some("abc".into()),
            authority: Some("payments".into()),
            upstream_host: Some("198.18.0.3:15006".into()),
            upstream_cluster: Some("outbound|80|v2|payments.default.svc.cluster.local".into()),
            downstream_remote_address: Some("198.18.0.5:40000".into()),
            route_name: None,
        }
    }

    #[test]
    fn text_lines_follow_envoys_default_format() {
        assert_eq!(
            entry().format(Encoding::Text),
            "[2026-12-10T03:56:19.123Z] \"GET /charge?x=1 HTTP/1.1\" 503 URX - - \"-\" 0 12 7 - \"198.18.0.5\" \"curl/7.88.1\" \"abc\" \"payments\" \"198.18.0.3:15006\" outbound|80|v2|payments.default.svc.cluster.local - - 198.18.0.5:40000 - -"
        );
    }

    #[test]
    fn json_lines_carry_the_same_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&entry().format(Encoding::Json)).expect("JSON");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_flags"], "URX");
        assert_eq!(v["upstream_host"], "198.18.0.3:15006");
        assert_eq!(v["start_time"], "2026-12-10T03:56:19.123Z");
        assert_eq!(v["route_name"], serde_json::Value::Null);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
