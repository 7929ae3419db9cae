//! CycloneDX 1.5 JSON, written from an [`Sbom`] (built, or read back from the image's SPDX).

use serde_json::{json, Value};

use super::{rfc3339, Component, Kind, Sbom};

impl Sbom {
    /// The CycloneDX 1.5 JSON document (keys sorted, components sorted, a newline at the end).
    pub fn to_cyclonedx(&self) -> Vec<u8> {
        let components: Vec<Value> = self.components.iter().map(component).collect();
        let (tool, tool_version) = self.tool.rsplit_once('-').unwrap_or((&self.tool, ""));
        let doc = json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "serialNumber": format!("urn:uuid:{}", self.id),
            "version": 1,
            "metadata": {
                "timestamp": rfc3339(self.created),
                "tools": {"components": [{"type": "application", "name": tool, "version": tool_version}]},
                "component": {
                    "type": "operating-system",
                    "bom-ref": "image",
                    "name": self.name,
                    "version": self.version,
                },
            },
            "components": components,
        });
        let mut out = serde_json::to_vec_pretty(&doc).expect("JSON values serialise");
        out.push(b'\n');
        out
    }
}

fn component(c: &Component) -> Value {
    let bom_ref = match (&c.purl, &c.detail) {
        (Some(purl), _) => purl.clone(),
        (None, Some(path)) => format!("file:{path}"),
        (None, None) => format!("file:{}", c.name),
    };
    let mut v = json!({
        "type": if c.kind == Kind::File { "application" } else { "library" },
        "bom-ref": bom_ref,
        "name": c.name,
    });
    if let Some(x) = &c.version {
        v["version"] = json!(x);
    }
    if let Some(x) = &c.purl {
        v["purl"] = json!(x);
    }
    if let Some(x) = &c.sha256 {
        v["hashes"] = json!([{"alg": "SHA-256", "content": x}]);
    }
    if let Some(x) = &c.licence {
        v["licenses"] = json!([{"expression": x}]);
    }
    if let (Kind::File, Some(path)) = (c.kind, &c.detail) {
        v["properties"] = json!([{"name": "capstan:path", "value": path}]);
    }
    v
}
