//! The kube preflight's reading of an API server's answer to the cluster-info GET (outside input:
//! whatever answers on `kube.endpoint`): HTTP head and chunking, the ConfigMap's JSON, its
//! kubeconfig's YAML, the CA's base64 PEM and the JWS signatures. Any bytes give a pin and a
//! token verdict or an error, never a panic.
#![no_main]

use capstan_agent::roles::kube::preflight::inspect_cluster_info;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = "abcdef.0123456789abcdef".parse().expect("a valid token");
    if let Ok((pin, verdict)) = inspect_cluster_info(data, &token) {
        assert!(pin.to_string().starts_with("sha256:"));
        if let Err(why) = verdict {
            assert!(!why.contains("0123456789abcdef"), "the secret in {why}");
        }
    }
});
