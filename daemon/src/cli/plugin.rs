//! `lanyard plugin inspect`: loads a plugin file and prints what it says about itself.

use lanyard::providers::plugin::Plugin;

pub(crate) fn inspect(path: &std::path::Path) -> u8 {
    match Plugin::load(path) {
        Ok(plugin) => {
            let out = serde_json::json!({
                "path": plugin.path(),
                "kind": plugin.kind(),
                "plugin_version": plugin.version(),
                "abi_version": plugin.abi_version(),
                "description": plugin.description(),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            0
        }
        Err(error) => {
            eprintln!("lanyard: {error}");
            1
        }
    }
}
