//! kube-runtime reconcilers and the pieces they call.
pub mod node_side;
