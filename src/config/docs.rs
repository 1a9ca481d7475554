//! The reference table in docs/configuration.md, generated from the key
//! table. A unit test compares it with the file; running that test with
//! `WSRELAY_UPDATE_DOCS=1` rewrites the file instead.

use super::cli::{env_name, flag_name};
use super::keys::key_infos;

/// Marker lines around the generated table in docs/configuration.md.
pub(crate) const BEGIN: &str = "<!-- BEGIN GENERATED: config keys (cargo test --lib config; WSRELAY_UPDATE_DOCS=1 to rewrite) -->";
pub(crate) const END: &str = "<!-- END GENERATED -->";

/// One Markdown row per key: key, flag, env var, type, default, range, description.
pub(crate) fn reference_table() -> String {
    let mut out = String::from(
        "| Key | Flag | Environment | Type | Default | Range | Description |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for k in key_infos() {
        let flag = if k.switch {
            format!("{}[=BOOL]", flag_name(k.name))
        } else {
            format!("{} {}", flag_name(k.name), k.value_name)
        };
        out.push_str(&format!(
            "| `{}` | `{}` | `{}` | {} | `{}` | {} | {} |\n",
            k.name,
            flag,
            env_name(k.name),
            k.type_name,
            k.default,
            k.range,
            k.help.replace('|', "\\|"),
        ));
    }
    out
}

/// `doc` with the text between the markers replaced by `table`; `None`
/// when a marker is missing.
pub(crate) fn splice(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = start + doc[start..].find(END)?;
    Some(format!("{}\n{}{}", &doc[..start], table, &doc[end..]))
}
