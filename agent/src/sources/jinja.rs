//! `## template: jinja` user-data, rendered like cloud-init renders it: the first line is the
//! header, the rest a Jinja template over the instance data (`v1.*`, its top-level aliases such
//! as `local_hostname`, and `ds.meta_data.*` with `-` in keys also reachable as `_`).
//!
//! Cluster API's kubeadm bootstrap for vSphere renders `{{ ds.meta_data.hostname }}` and
//! `{{ local_hostname }}`; cloud-init fills `ds.meta_data.hostname` from the host name it just
//! set from `local-hostname`, so we do the same when the metadata has no `hostname`.

use serde_json::{Map, Value};

use super::encoding::DecodeError;

/// Rendering work is bounded (loops in hostile templates); this is minijinja "fuel".
const FUEL: u64 = 200_000;
/// The rendered text may not exceed this (a template can repeat a string).
const MAX_OUTPUT: usize = super::encoding::INFLATED_LIMIT;

/// True when `text` starts with cloud-init's jinja header line.
pub fn is_jinja_template(text: &str) -> bool {
    let first = text.lines().next().unwrap_or("");
    first.trim_end().eq_ignore_ascii_case("## template: jinja")
}

/// The variables cloud-init exposes to templates, built from the metadata mapping.
pub fn instance_data(
    metadata: &Map<String, Value>,
    instance_id: &str,
    local_hostname: &str,
) -> Value {
    let mut meta = metadata.clone();
    // cloud-init keeps the metadata's own keys and adds host facts, `hostname` among them.
    meta.entry("hostname").or_insert_with(|| Value::String(local_hostname.to_owned()));
    let ds_meta = with_underscore_aliases(&Value::Object(meta));
    let mut v1 = Map::new();
    for (k, v) in [
        ("instance_id", instance_id),
        ("local_hostname", local_hostname),
        ("cloud_name", "vmware"),
        ("cloud_id", "vmware"),
        ("platform", "vmware"),
        ("subplatform", "guestinfo"),
    ] {
        v1.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    v1.insert("region".into(), Value::Null);
    v1.insert("availability_zone".into(), Value::Null);
    let mut root = Map::new();
    // cloud-init copies every v1 key to the top level.
    for (k, v) in &v1 {
        root.insert(k.clone(), v.clone());
    }
    root.insert("v1".into(), Value::Object(v1));
    let mut ds = Map::new();
    ds.insert("meta_data".into(), ds_meta);
    root.insert("ds".into(), Value::Object(ds));
    Value::Object(root)
}

fn with_underscore_aliases(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let conv = with_underscore_aliases(v);
                if k.contains('-') {
                    out.entry(k.replace('-', "_")).or_insert_with(|| conv.clone());
                }
                out.insert(k.clone(), conv);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Renders a `## template: jinja` document (header included) over `vars`. Undefined
/// variables are an error (cloud-init would leave a `CI_MISSING_JINJA_VAR/` marker in, say, a
/// host name; we refuse instead).
pub fn render(text: &str, vars: &Value) -> Result<String, DecodeError> {
    let body = match text.split_once('\n') {
        Some((_, rest)) => rest,
        None => "",
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env.set_recursion_limit(50);
    let tmpl = env.template_from_str(body).map_err(|e| DecodeError::Jinja(e.to_string()))?;
    let out = tmpl.render(vars).map_err(|e| DecodeError::Jinja(e.to_string()))?;
    if out.len() > MAX_OUTPUT {
        return Err(DecodeError::Jinja(format!("rendered output exceeds {MAX_OUTPUT} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Map<String, Value> {
        serde_json::from_str(
            r#"{"instance-id":"i-42","local-hostname":"cp-0","wait-on-network":{"ipv4":true}}"#,
        )
        .unwrap()
    }

    #[test]
    fn capv_variables_render() {
        let vars = instance_data(&meta(), "i-42", "cp-0");
        let t = "## template: jinja\n#cloud-config\nhostname: '{{ ds.meta_data.hostname }}'\nname: {{ local_hostname }}/{{ v1.local_hostname }}/{{ v1.instance_id }}/{{ ds.meta_data.local_hostname }}/{{ ds.meta_data.wait_on_network.ipv4 }}\n";
        assert!(is_jinja_template(t));
        let out = render(t, &vars).unwrap();
        assert_eq!(out, "#cloud-config\nhostname: 'cp-0'\nname: cp-0/cp-0/i-42/cp-0/True\n");
    }

    #[test]
    fn undefined_and_runaway_templates_fail() {
        let vars = instance_data(&meta(), "i", "h");
        let e = render("## template: jinja\n{{ nope.x }}", &vars).unwrap_err();
        assert!(e.to_string().contains("jinja"), "{e}");
        let e = render(
            "## template: jinja\n{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            &vars,
        )
        .unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        assert!(!is_jinja_template("#cloud-config\n"));
    }
}
