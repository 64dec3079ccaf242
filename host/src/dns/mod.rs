//! The pod's DNS proxy, as Istio's sidecar runs one: the capture rules send the app's DNS
//! queries here; names of mesh services are answered with the virtual IPs the control plane
//! gave them, names under the cluster domain that name no service get NXDOMAIN at once, and
//! everything else goes to the upstream resolvers unchanged, from a socket carrying the
//! sidecar's mark so the capture rules let it out.

pub mod server;
pub mod wire;

pub use server::{Lookup, Names, Upstreams, serve};
