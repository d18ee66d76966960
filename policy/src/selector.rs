//! Label selectors (`metav1.LabelSelector`): matchLabels and
//! matchExpressions, all of them ANDed; an empty selector selects
//! everything. A malformed requirement (unknown operator, In without
//! values) selects nothing, as the API server would have refused it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|req| {
            let values = req.values.as_deref().unwrap_or_default();
            let value = labels.get(&req.key);
            match req.operator.as_str() {
                "In" => !values.is_empty() && value.is_some_and(|v| values.contains(v)),
                "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.contains(v)),
                "Exists" => values.is_empty() && value.is_some(),
                "DoesNotExist" => values.is_empty() && value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn operators() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let sel = |reqs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_expressions: Some(reqs),
            match_labels: None,
        };
        assert!(matches(&LabelSelector::default(), &pod), "empty selects all");
        assert!(matches(&sel(vec![req("app", "In", &["web", "db"])]), &pod));
        assert!(!matches(&sel(vec![req("app", "In", &["db"])]), &pod));
        assert!(matches(&sel(vec![req("app", "NotIn", &["db"])]), &pod));
        assert!(
            matches(&sel(vec![req("missing", "NotIn", &["db"])]), &pod),
            "NotIn holds when absent"
        );
        assert!(!matches(&sel(vec![req("app", "NotIn", &["web"])]), &pod));
        assert!(matches(&sel(vec![req("tier", "Exists", &[])]), &pod));
        assert!(!matches(&sel(vec![req("x", "Exists", &[])]), &pod));
        assert!(matches(&sel(vec![req("x", "DoesNotExist", &[])]), &pod));
        assert!(!matches(&sel(vec![req("app", "DoesNotExist", &[])]), &pod));
        assert!(
            !matches(&sel(vec![req("app", "Like", &["web"])]), &pod),
            "unknown operator"
        );
        let both = LabelSelector {
            match_labels: Some(labels(&[("app", "web")]).into_iter().collect()),
            match_expressions: Some(vec![req("tier", "In", &["back"])]),
        };
        assert!(!matches(&both, &pod), "labels and expressions are ANDed");
    }
}
