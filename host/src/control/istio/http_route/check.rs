//! The checks one HTTPRoute gets when it is read: what Weft routes (Services), the filters
//! it reads and how they combine, durations and statuses.

use super::*;

pub(in crate::control::istio) fn check_http_route(
    hr: &GatewayHttpRoute,
    namespace: &str,
    problems: &mut Problems,
) {
    if hr.parent_refs.is_empty() {
        problems.at("spec.parentRefs", "give the Service this route is for");
    }
    for (i, p) in hr.parent_refs.iter().enumerate() {
        if !is_service(&p.group, &p.kind, "Gateway") {
            problems.at(
                format!("spec.parentRefs[{i}]"),
                format!(
                    "{} {:?}: Weft routes mesh traffic (GAMMA) only: give group: \"\" and kind: Service",
                    p.kind.as_deref().unwrap_or("Gateway"),
                    p.name
                ),
            );
        }
        if let Err(e) = crate::names::host_ref(
            &host_of(&p.name, p.namespace.as_deref(), namespace),
            namespace,
        ) {
            problems.at(format!("spec.parentRefs[{i}].name"), e);
        }
    }
    for (r, rule) in hr.rules.iter().enumerate() {
        let at = format!("spec.rules[{r}]");
        for (k, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{k}]");
            if let Some(p) = &m.path {
                let kind = p.kind.as_deref().unwrap_or("PathPrefix");
                let value = p.value.as_deref().unwrap_or("/");
                match kind {
                    "Exact" | "PathPrefix" if !value.starts_with('/') => {
                        problems.at(
                            format!("{at}.path.value"),
                            format!("{value:?} must start with /"),
                        );
                    }
                    "Exact" | "PathPrefix" => {}
                    // Its syntax is judged with the route's plugins' configurations.
                    "RegularExpression" => {}
                    other => problems.at(
                        format!("{at}.path.type"),
                        format!(
                            "unknown type {other:?} (known: Exact, PathPrefix, RegularExpression)"
                        ),
                    ),
                }
            }
            for (field, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                for (j, n) in list.iter().enumerate() {
                    match n.kind.as_deref().unwrap_or("Exact") {
                        "Exact" | "RegularExpression" => {}
                        other => problems.at(
                            format!("{at}.{field}[{j}].type"),
                            format!("unknown type {other:?} (known: Exact, RegularExpression)"),
                        ),
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (j, f) in rule.filters.iter().enumerate() {
            let at = format!("{at}.filters[{j}]");
            let given = [
                ("RequestHeaderModifier", f.request_header_modifier.is_some()),
                (
                    "ResponseHeaderModifier",
                    f.response_header_modifier.is_some(),
                ),
                ("URLRewrite", f.url_rewrite.is_some()),
                ("RequestRedirect", f.request_redirect.is_some()),
                ("RequestMirror", f.request_mirror.is_some()),
            ];
            match given.iter().find(|(name, _)| *name == f.kind) {
                None => problems.at(
                    format!("{at}.type"),
                    format!("{:?} is not supported by Weft yet (it reads RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror)", f.kind),
                ),
                Some((_, false)) => problems.at(&at, format!("type {} needs its settings", f.kind)),
                Some(_) => {}
            }
            if given.iter().filter(|(_, set)| *set).count() > 1 {
                problems.at(&at, "give the settings of its type only");
            }
            if f.kind != "RequestMirror" && !seen.insert(f.kind.clone()) {
                problems.at(&at, format!("{} is given twice in one rule", f.kind));
            }
            for p in [
                f.url_rewrite.as_ref().and_then(|u| u.path.as_ref()),
                f.request_redirect.as_ref().and_then(|u| u.path.as_ref()),
            ]
            .into_iter()
            .flatten()
            {
                let ok = match p.kind.as_str() {
                    "ReplaceFullPath" => {
                        p.replace_full_path.is_some() && p.replace_prefix_match.is_none()
                    }
                    "ReplacePrefixMatch" => {
                        f.url_rewrite.is_some()
                            && p.replace_prefix_match.is_some()
                            && p.replace_full_path.is_none()
                            && !rule.matches.is_empty()
                            && rule.matches.iter().all(|m| {
                                m.path.as_ref().is_none_or(|p| {
                                    p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix"
                                })
                            })
                    }
                    _ => false,
                };
                if !ok {
                    problems.at(
                        format!("{at}.path"),
                        "ReplaceFullPath with replaceFullPath, or (in URLRewrite, on a rule whose every match is a PathPrefix) ReplacePrefixMatch with replacePrefixMatch",
                    );
                }
            }
            if let Some(r) = &f.request_redirect
                && let Some(code) = r.status_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                problems.at(
                    format!("{at}.requestRedirect.statusCode"),
                    format!("{code} is not a redirect (301, 302, 303, 307, 308)"),
                );
            }
            if let Some(m) = &f.request_mirror {
                if !is_service(&m.backend_ref.group, &m.backend_ref.kind, "Service") {
                    problems.at(
                        format!("{at}.requestMirror.backendRef"),
                        "must be a Service",
                    );
                }
                if m.percent.is_some() && m.fraction.is_some() {
                    problems.at(
                        format!("{at}.requestMirror"),
                        "give percent or fraction, not both",
                    );
                }
                if m.percent.is_some_and(|p| p > 100)
                    || m.fraction.as_ref().is_some_and(|f| {
                        f.denominator == Some(0) || f.numerator > f.denominator.unwrap_or(100)
                    })
                {
                    problems.at(
                        format!("{at}.requestMirror"),
                        "the share must be between 0 and 100%",
                    );
                }
            }
        }
        if rule.filters.iter().any(|f| f.request_redirect.is_some())
            && rule.filters.iter().any(|f| f.url_rewrite.is_some())
        {
            problems.at(
                format!("{at}.filters"),
                "RequestRedirect and URLRewrite cannot go together",
            );
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            if !is_service(&b.group, &b.kind, "Service") {
                problems.at(
                    format!("{at}.backendRefs[{j}]"),
                    "must be a Service (group: \"\", kind: Service)",
                );
            }
        }
        if let Some(t) = &rule.timeouts {
            for (field, value) in [
                ("request", &t.request),
                ("backendRequest", &t.backend_request),
            ] {
                if let Some(v) = value {
                    check_duration(v, &format!("{at}.timeouts.{field}"), false, problems);
                }
            }
            if let (Some(req), Some(be)) = (&t.request, &t.backend_request)
                && let (Ok(req), Ok(be)) = (parse_duration(req), parse_duration(be))
                && !req.is_zero()
                && be > req
            {
                problems.at(
                    format!("{at}.timeouts.backendRequest"),
                    "must not be longer than request",
                );
            }
        }
        if let Some(r) = &rule.retry {
            for (j, c) in r.codes.iter().enumerate() {
                if !(400..=599).contains(c) {
                    problems.at(
                        format!("{at}.retry.codes[{j}]"),
                        format!("{c} is not an error status (400-599)"),
                    );
                }
            }
            if let Some(b) = &r.backoff {
                check_duration(b, &format!("{at}.retry.backoff"), false, problems);
            }
        }
    }
}
