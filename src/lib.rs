//! meshops: a GitOps reconciler for Function Mesh.
//!
//! The modules follow the pipeline of `docs/` and DESIGN.md: [`load`] reads a tree into
//! documents with source positions, [`model`] types them, [`validate`] checks them,
//! [`render`] turns them into Kubernetes objects and [`plan`] compares those with the cluster
//! that [`cluster`] reads and writes; [`reconcile`] is one pass through all of it, and the
//! [`cli`] wires the stages to commands. [`git`] reads commits of a remote repository without
//! a working tree. [`report`] words what the agent tells GitHub and queues it off the deploy
//! path; [`github`] posts it.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod git;
pub mod github;
pub mod load;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod report;
pub mod validate;
