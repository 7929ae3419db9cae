//! `.mf` manifests: `SHA256(name)= hex` lines.
