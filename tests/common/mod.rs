//! Helpers shared by the render tests.
#![allow(dead_code)]

use std::path::Path;

use meshops::load::{LoadOptions, Tree};
use meshops::model::RenderSettings;
use meshops::render::{render, settings_of, Object};
use meshops::validate::{validate, Schemas, ValidateOptions};
use serde_json::Value;

/// The objects as `meshops render` prints them.
pub fn to_yaml(objects: &[Object]) -> String {
    objects
        .iter()
        .map(|o| meshops::render::yaml_document(o.clone()))
        .collect()
}

/// Validates and renders `path`, with its meshops.yaml unless `settings` are given.
pub fn render_path(path: &Path, settings: Option<RenderSettings>) -> Vec<Object> {
    let tree = Tree::load(path, &LoadOptions::default());
    let validation = validate(&tree, &Schemas::new(), ValidateOptions::default());
    assert!(validation.is_valid(), "{:#?}", validation.diagnostics);
    let settings = settings.unwrap_or_else(|| settings_of(&validation.checked));
    render(&validation.checked, &settings, "test").unwrap()
}

pub fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    &objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
        .value
}

/// The `bash -c` script of a container.
pub fn script(container: &Value) -> &str {
    container["command"][2].as_str().unwrap()
}

/// The `--function_details` JSON a runner container is started with.
pub fn function_details(container: &Value) -> Value {
    let text = script(container)
        .split("--function_details '")
        .nth(1)
        .unwrap()
        .split("' --pulsar_serviceurl")
        .next()
        .unwrap();
    serde_json::from_str(text).unwrap()
}
