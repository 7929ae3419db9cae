//! The Kubernetes roles, `control-plane` and `worker`: their settings (`kube.*`, vApp
//! properties of the node profile), the kubeadm configuration of the vApp path in the API
//! version the carried kubeadm speaks, the preflight that fails in seconds naming the key,
//! the role's health, and the pod network without a downloadable CNI (bridge + host-local per
//! node, host-gw routes between nodes).
//!
//! - [`settings`]: the typed `kube.*` values and the rules across them;
//! - [`kubeadm`]: `InitConfiguration`/`ClusterConfiguration`/`KubeletConfiguration` and
//!   `JoinConfiguration` in v1beta2, v1beta3 or v1beta4;
//! - [`preflight`]: endpoint, CA pin, token, clock, runtime, swap, modules, sysctls;
//! - [`health`]: kubelet active and healthy, containerd up;
//! - [`cni`]: the conflist; [`routes`]: the routes to the other nodes' pod CIDRs;
//! - [`podnet`]: after kubeadm, the node's pod CIDR → the conflist, then `Ready`;
//! - [`bootstrap`]: the first-boot steps: the vApp path's preflight → kubeadm → sentinel, and
//!   the preflight before Cluster API's `kubeadm init|join` in `runcmd`;
//! - [`role_impl`]: the [`crate::roles::Role`] implementations.
//!
//! Not here yet (see docs/kube.md): the controller that feeds [`routes`] from the Node
//! objects.

pub mod bootstrap;
pub mod cni;
pub mod health;
pub mod kubeadm;
pub mod podnet;
pub mod preflight;
pub mod role_impl;
pub mod routes;
pub mod settings;

pub use settings::KubeSettings;
