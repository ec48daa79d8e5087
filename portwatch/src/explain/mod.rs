//! The explain engine (placeholder while trace lands).

use serde::Serialize;

use crate::{event::Event, loader::KernelInfo, netns::Namespaces};

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    #[serde(skip)]
    pub ok: bool,
    pub rule: &'static str,
    pub message: String,
    pub details: Vec<String>,
    pub fix: Option<String>,
}

pub struct Explainer {}

impl Explainer {
    pub fn new(_kernel: &KernelInfo, _conflict_hook: bool) -> Self {
        Explainer {}
    }

    pub fn explain(&mut self, _ev: &Event, _ns: &mut Namespaces) -> Option<Verdict> {
        None
    }
}
