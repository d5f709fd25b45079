//! The `http` probe: `HEAD` (or `GET`) a URL and map its status to a verdict, for other systems'
//! admin APIs. Default map: 2xx healthy, 404 and 410 deleted, anything else (and every transport
//! failure) transient.

use std::time::Duration;

use super::{Authority, BoxFuture, Evidence, Probe, Strength, TransientKind, Verdict};
use crate::config::{HttpMethod, HttpProbeSettings, StatusPattern};

/// See the module docs.
pub struct HttpProbe {
    url: String,
    method: reqwest::Method,
    healthy: Vec<StatusPattern>,
    deleted: Vec<StatusPattern>,
    strength: Strength,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpProbe {
    /// A probe of `settings.url` (patterns were validated with the configuration).
    pub fn new(settings: &HttpProbeSettings, client: reqwest::Client) -> HttpProbe {
        let parse = |list: &[String]| {
            list.iter()
                .filter_map(|p| StatusPattern::parse(p))
                .collect()
        };
        HttpProbe {
            url: settings.url.clone(),
            method: match settings.method {
                HttpMethod::Head => reqwest::Method::HEAD,
                HttpMethod::Get => reqwest::Method::GET,
            },
            healthy: parse(&settings.healthy),
            deleted: parse(&settings.deleted),
            strength: if settings.weak {
                Strength::Weak
            } else {
                Strength::Strong
            },
            timeout: settings.timeout,
            client,
        }
    }

    /// Map a status to a verdict.
    pub fn classify(&self, status: u16) -> Verdict {
        classify(
            status,
            &self.healthy,
            &self.deleted,
            self.strength,
            &self.url,
        )
    }
}

/// Map `status` through the two pattern lists (healthy first).
pub fn classify(
    status: u16,
    healthy: &[StatusPattern],
    deleted: &[StatusPattern],
    strength: Strength,
    url: &str,
) -> Verdict {
    if healthy.iter().any(|p| p.matches(status)) {
        Verdict::healthy()
    } else if deleted.iter().any(|p| p.matches(status)) {
        Verdict::Deleted(Evidence {
            source: format!("http {url}"),
            detail: format!("HTTP {status}"),
            strength,
            detached: false,
        })
    } else if status == 429 {
        Verdict::transient(TransientKind::RateLimited, format!("{url}: HTTP 429"))
    } else if (500..=599).contains(&status) {
        Verdict::transient(TransientKind::ServerError, format!("{url}: HTTP {status}"))
    } else {
        Verdict::transient(TransientKind::Unexpected, format!("{url}: HTTP {status}"))
    }
}

impl Probe for HttpProbe {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn authority(&self) -> Authority {
        Authority::Service
    }

    fn check(&self) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            let resp = self
                .client
                .request(self.method.clone(), &self.url)
                .timeout(self.timeout)
                .send()
                .await;
            match resp {
                // The status line is all we read; the body is dropped unread.
                Ok(r) => self.classify(r.status().as_u16()),
                Err(e) => super::transport_failure(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<StatusPattern> {
        list.iter()
            .map(|p| StatusPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn default_map() {
        let (h, d) = (pats(&["2xx"]), pats(&["404", "410"]));
        let c = |s| classify(s, &h, &d, Strength::Strong, "u");
        assert_eq!(c(200), Verdict::healthy());
        assert_eq!(c(204), Verdict::healthy());
        assert!(matches!(c(404), Verdict::Deleted(_)));
        assert!(matches!(c(410), Verdict::Deleted(_)));
        for s in [301, 400, 401, 403, 429, 500, 502, 503] {
            assert!(!c(s).is_authoritative(), "{s}");
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(StatusPattern::parse("5xx"), StatusPattern::parse("500-599"));
        assert!(StatusPattern::parse("6xx").is_none());
        assert!(StatusPattern::parse("299-200").is_none());
        assert!(StatusPattern::parse("abc").is_none());
        assert!(StatusPattern::parse("2xx").unwrap().matches(250));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn only_mapped_statuses_delete(status in 0u16..1000, pattern in "[0-9x-]{0,8}") {
                let (h, d) = (pats(&["2xx"]), pats(&["404", "410"]));
                let v = classify(status, &h, &d, Strength::Strong, "u");
                prop_assert_eq!(matches!(v, Verdict::Deleted(_)), status == 404 || status == 410);
                // Arbitrary pattern text never panics.
                let _ = StatusPattern::parse(&pattern);
            }
        }
    }
}
