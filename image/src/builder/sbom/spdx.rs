//! SPDX 2.3 JSON: written from an [`Sbom`], and read back (`capstan image sbom`) into one.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{rfc3339, Component, Kind, Sbom, SbomError};

/// The namespace prefix; the document's name and id follow it.
const NAMESPACE_BASE: &str = "https://capstan.dev/spdx/";

/// The SPDX id of a component: the kind, the name and the architecture or version, in the
/// characters SPDX allows (`[A-Za-z0-9.-]`; `+` spelled `-plus`, so `libstdc++6` stays apart
/// from any `libstdc--6`).
fn spdx_id(c: &Component) -> String {
    let (prefix, tail) = match c.kind {
        Kind::Deb => ("deb", arch(c).unwrap_or_default()),
        Kind::Crate => ("crate", c.version.clone().unwrap_or_default()),
        Kind::File => ("file", String::new()),
    };
    let mut id = format!("SPDXRef-{prefix}-");
    for ch in format!("{}-{tail}", c.name).trim_end_matches('-').chars() {
        match ch {
            '+' => id.push_str("-plus"),
            ch if ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' => id.push(ch),
            _ => id.push('-'),
        }
    }
    id
}

/// The `arch=` qualifier of a component's purl.
fn arch(c: &Component) -> Option<String> {
    let q = c.purl.as_ref()?.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.strip_prefix("arch=")).map(str::to_string)
}

impl Sbom {
    /// The SPDX 2.3 JSON document (keys sorted, packages sorted, a newline at the end).
    pub fn to_spdx(&self) -> Vec<u8> {
        let mut packages = vec![json!({
            "SPDXID": "SPDXRef-image",
            "name": self.name,
            "versionInfo": self.version,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        })];
        let mut relationships = vec![json!({
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-image",
        })];
        let mut refs = BTreeSet::new();
        for c in &self.components {
            let id = spdx_id(c);
            packages.push(package(c, &id));
            relationships.push(json!({
                "spdxElementId": "SPDXRef-image",
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": id,
            }));
            if let Some(l) = &c.licence {
                refs.extend(
                    l.split([' ', '(', ')'])
                        .filter(|t| t.starts_with("LicenseRef-"))
                        .map(String::from),
                );
            }
        }
        let extracted: Vec<Value> = refs
            .into_iter()
            .map(|id| {
                let name = id["LicenseRef-".len()..].to_string();
                json!({
                    "licenseId": id,
                    "name": name,
                    "extractedText": format!(
                        "A licence Debian copyright files (DEP-5) name \"{name}\"; no SPDX \
                         identifier matches it. Its text is in each package's copyright file."
                    ),
                })
            })
            .collect();
        let doc = json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": format!("{}-{}", self.name, self.version),
            "documentNamespace": format!("{NAMESPACE_BASE}{}-{}-{}", self.name, self.version, self.id),
            "creationInfo": {
                "created": rfc3339(self.created),
                "creators": [format!("Tool: {}", self.tool)],
            },
            "packages": packages,
            "relationships": relationships,
            "hasExtractedLicensingInfos": extracted,
        });
        let mut out = serde_json::to_vec_pretty(&doc).expect("JSON values serialise");
        out.push(b'\n');
        out
    }

    /// Reads back a document [`Sbom::to_spdx`] wrote.
    pub fn from_spdx(bytes: &[u8]) -> Result<Sbom, SbomError> {
        let bad =
            |key: &str, reason: &str| SbomError::Spdx { key: key.into(), reason: reason.into() };
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| bad("(document)", &e.to_string()))?;
        let str_at = |v: &Value, key: &str| -> Result<String, SbomError> {
            v.pointer(key)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| bad(key, "missing or not a string"))
        };
        if str_at(&doc, "/spdxVersion")? != "SPDX-2.3" {
            return Err(bad("spdxVersion", "not SPDX-2.3"));
        }
        let ns = str_at(&doc, "/documentNamespace")?;
        let id = ns
            .rsplit('-')
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("-");
        let id =
            Uuid::parse_str(&id).map_err(|_| bad("documentNamespace", "does not end in a UUID"))?;
        let created = parse_rfc3339(&str_at(&doc, "/creationInfo/created")?)
            .ok_or_else(|| bad("creationInfo.created", "not YYYY-MM-DDTHH:MM:SSZ"))?;
        let tool = str_at(&doc, "/creationInfo/creators/0")?;
        let tool =
            tool.strip_prefix("Tool: ").ok_or_else(|| bad("creationInfo.creators", "no Tool"))?;
        let packages = doc["packages"].as_array().ok_or_else(|| bad("packages", "not a list"))?;
        let image = packages
            .iter()
            .find(|p| p["SPDXID"] == "SPDXRef-image")
            .ok_or_else(|| bad("packages", "no SPDXRef-image"))?;
        let mut components = Vec::new();
        for (i, p) in packages.iter().enumerate() {
            let key = format!("packages[{i}]");
            let sid = p["SPDXID"].as_str().ok_or_else(|| bad(&key, "no SPDXID"))?;
            let kind = match sid.split('-').nth(1) {
                Some("image") => continue,
                Some("deb") => Kind::Deb,
                Some("crate") => Kind::Crate,
                Some("file") => Kind::File,
                _ => return Err(bad(&key, "SPDXID is not one capstan writes")),
            };
            components.push(component(p, kind).ok_or_else(|| bad(&key, "no name"))?);
        }
        components.sort();
        Ok(Sbom {
            name: str_at(image, "/name")?,
            version: str_at(image, "/versionInfo")?,
            created,
            id,
            tool: tool.to_string(),
            components,
        })
    }
}

fn package(c: &Component, id: &str) -> Value {
    let mut p = json!({
        "SPDXID": id,
        "name": c.name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": c.licence.as_deref().unwrap_or("NOASSERTION"),
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": if c.kind == Kind::File { "APPLICATION" } else { "LIBRARY" },
    });
    if let Some(v) = &c.version {
        p["versionInfo"] = json!(v);
    }
    if let Some(s) = &c.sha256 {
        p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": s}]);
    }
    if let Some(purl) = &c.purl {
        p["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl,
        }]);
    }
    if let Some(d) = &c.detail {
        p["sourceInfo"] = json!(match c.kind {
            Kind::Deb => format!("built from the Debian source package {d}"),
            _ => format!("installed as {d}"),
        });
    }
    p
}

fn component(p: &Value, kind: Kind) -> Option<Component> {
    let s = |k: &str| p.pointer(k).and_then(Value::as_str).map(String::from);
    let detail = s("/sourceInfo").map(|d| {
        d.strip_prefix("built from the Debian source package ")
            .or_else(|| d.strip_prefix("installed as "))
            .unwrap_or(&d)
            .to_string()
    });
    Some(Component {
        kind,
        name: s("/name")?,
        version: s("/versionInfo"),
        purl: s("/externalRefs/0/referenceLocator"),
        sha256: s("/checksums/0/checksumValue"),
        licence: s("/licenseDeclared").filter(|l| l != "NOASSERTION"),
        detail,
    })
}

/// The inverse of [`rfc3339`] for the dates it writes (checked by writing the result back).
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let out = u64::try_from(secs).ok()?;
    (rfc3339(out) == s).then_some(out)
}
