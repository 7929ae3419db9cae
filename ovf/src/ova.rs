//! OVA archives: a tar with the `.ovf` first, then the `.mf`, then the referenced files.
