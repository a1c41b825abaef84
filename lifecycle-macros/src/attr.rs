//! `#[component(...)]` attributes, parsed into values that keep the user's tokens for errors.
//!
//! Each key is set through a setter that refuses a second value (tokio-macros style). A key that
//! fails to parse is reported and skipped; the keys before it keep their values, so the derive
//! still expands what it can.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Lit, LitBool, LitStr, Path, Token, Type};

use crate::duration;
use crate::restart::{self, Backoff, MaxRestarts};

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn into_compile_errors(self) -> proc_macro2::TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// A value set by a key, with the key's span for "already set here".
pub(crate) struct Set<T> {
    pub(crate) value: T,
    pub(crate) key: Span,
}

fn set<T>(slot: &mut Option<Set<T>>, value: T, meta: &ParseNestedMeta<'_>, name: &str) -> syn::Result<()> {
    if let Some(first) = slot {
        let mut error = meta.error(format!("duplicate `{name}`: it is already set"));
        error.combine(syn::Error::new(first.key, format!("`{name}` first set here")));
        return Err(error);
    }
    *slot = Some(Set { value, key: meta.path.span() });
    Ok(())
}

/// A hook method named by the user: `start = connect` or `start = Self::connect`.
pub(crate) type HookPath = Path;

/// A duration in nanoseconds, with the literal it came from.
pub(crate) struct Timeout {
    pub(crate) nanos: u64,
}

pub(crate) const CONTAINER_KEYS: &[&str] = &[
    "name",
    "start",
    "drain",
    "stop",
    "reload",
    "health",
    "start_timeout",
    "stop_timeout",
    "critical",
    "run_to_completion",
    "restart",
    "backoff",
    "max_restarts",
    "jitter",
    "depends_on",
    "crate",
];

/// When a derived component starts again: `restart = "never" | "on_failure"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    Never,
    OnFailure,
}

/// The struct-level `#[component(...)]` keys.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) name: Option<Set<LitStr>>,
    pub(crate) start: Option<Set<HookPath>>,
    pub(crate) drain: Option<Set<HookPath>>,
    pub(crate) stop: Option<Set<HookPath>>,
    pub(crate) reload: Option<Set<HookPath>>,
    pub(crate) health: Option<Set<HookPath>>,
    pub(crate) start_timeout: Option<Set<Timeout>>,
    pub(crate) stop_timeout: Option<Set<Timeout>>,
    pub(crate) critical: Option<Set<bool>>,
    pub(crate) run_to_completion: Option<Set<bool>>,
    pub(crate) restart: Option<Set<Restart>>,
    pub(crate) backoff: Option<Set<Backoff>>,
    pub(crate) max_restarts: Option<Set<MaxRestarts>>,
    pub(crate) jitter: Option<Set<f64>>,
    pub(crate) depends_on: Option<Set<Vec<Type>>>,
    pub(crate) krate: Option<Set<Path>>,
}

impl ContainerAttrs {
    pub(crate) fn parse(attrs: &[Attribute], errors: &mut Errors) -> Self {
        let mut parsed = Self::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("component")) {
            if let Err(error) = attr.parse_nested_meta(|meta| parsed.parse_key(&meta)) {
                errors.push(error);
            }
        }
        parsed
    }

    pub(crate) fn parse_key(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = key_name(meta);
        match key.as_str() {
            "name" => {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().trim().is_empty() {
                    return Err(syn::Error::new(name.span(), "a component name cannot be empty"));
                }
                set(&mut self.name, name, meta, "name")
            }
            "start" => set(&mut self.start, hook_path(meta)?, meta, "start"),
            "drain" => set(&mut self.drain, hook_path(meta)?, meta, "drain"),
            "stop" => set(&mut self.stop, hook_path(meta)?, meta, "stop"),
            "reload" => set(&mut self.reload, hook_path(meta)?, meta, "reload"),
            "health" => set(&mut self.health, hook_path(meta)?, meta, "health"),
            "start_timeout" => set(&mut self.start_timeout, timeout(meta)?, meta, "start_timeout"),
            "stop_timeout" => set(&mut self.stop_timeout, timeout(meta)?, meta, "stop_timeout"),
            "critical" => {
                // A bare `critical` means true.
                let value =
                    if meta.input.peek(Token![=]) { meta.value()?.parse::<LitBool>()?.value } else { true };
                set(&mut self.critical, value, meta, "critical")
            }
            "run_to_completion" => {
                // A bare `run_to_completion` means true, like `critical`.
                let value =
                    if meta.input.peek(Token![=]) { meta.value()?.parse::<LitBool>()?.value } else { true };
                set(&mut self.run_to_completion, value, meta, "run_to_completion")
            }
            "restart" => set(&mut self.restart, restart_value(meta)?, meta, "restart"),
            "backoff" => set(&mut self.backoff, string_value(meta, restart::backoff)?, meta, "backoff"),
            "max_restarts" => {
                set(&mut self.max_restarts, string_value(meta, restart::max_restarts)?, meta, "max_restarts")
            }
            "jitter" => set(&mut self.jitter, jitter(meta)?, meta, "jitter"),
            "depends_on" => {
                let content;
                syn::parenthesized!(content in meta.input);
                let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                if types.is_empty() {
                    return Err(
                        meta.error("`depends_on` needs at least one component type: `depends_on(Database)`")
                    );
                }
                set(&mut self.depends_on, types.into_iter().collect(), meta, "depends_on")
            }
            "crate" => {
                let path: LitStr = meta.value()?.parse()?;
                set(&mut self.krate, path.parse()?, meta, "crate")
            }
            _ => Err(unknown(meta, &key, CONTAINER_KEYS, "on a struct")),
        }
    }
}

pub(crate) const FIELD_KEYS: &[&str] = &["close", "skip", "dep", "optional"];

/// What a field is to the component.
#[derive(Clone, Copy)]
pub(crate) enum FieldRole {
    /// A `Dep<T>` field becomes a dependency; any other field is plain data.
    Auto,
    /// A resource closed after the stop method.
    Close,
    /// Ignored, even when it is a `Dep<T>`.
    Skip,
    /// A dependency although its type is not written `Dep<T>` (an alias).
    Dep,
}

impl FieldRole {
    /// Whether `optional` may go with this role: only when the field is (or may be) a dependency.
    fn may_be_optional(self) -> bool {
        matches!(self, FieldRole::Auto | FieldRole::Dep)
    }
}

/// The field-level `#[component(...)]` keys.
pub(crate) struct FieldAttrs {
    pub(crate) role: FieldRole,
    /// `optional`: the dependency is optional. Its span is where `valid` reports a field that is
    /// not a dependency.
    pub(crate) optional: Option<Span>,
}

pub(crate) fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut role: Option<Set<FieldRole>> = None;
    let mut optional: Option<Set<()>> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("component")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = key_name(&meta);
            let span = meta.path.span();
            let value = match key.as_str() {
                "close" => FieldRole::Close,
                "skip" => FieldRole::Skip,
                "dep" => FieldRole::Dep,
                "optional" => {
                    // Only a dependency can be optional: a role that says otherwise conflicts.
                    if let Some(first) = role.as_ref().filter(|r| !r.value.may_be_optional()) {
                        return Err(conflict(&meta, &key, first.key, &optional_conflict(first.value)));
                    }
                    return set(&mut optional, (), &meta, "optional");
                }
                _ => return Err(unknown(&meta, &key, FIELD_KEYS, "on a field")),
            };
            if let Some(first) = &role {
                return Err(conflict(&meta, &key, first.key, ROLE_CONFLICT));
            }
            if let Some(first) = optional.take_if(|_| !value.may_be_optional()) {
                // Forgotten with the conflict, so that `valid` does not report it a second time.
                return Err(conflict(&meta, &key, first.key, &optional_conflict(value)));
            }
            role = Some(Set { value, key: span });
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    FieldAttrs { role: role.map_or(FieldRole::Auto, |r| r.value), optional: optional.map(|o| o.key) }
}

const ROLE_CONFLICT: &str = "a field is a resource to close, a dependency, or skipped, not several";

fn optional_conflict(role: FieldRole) -> String {
    let what = if matches!(role, FieldRole::Skip) { "a skipped field" } else { "a resource to close" };
    format!("only a dependency can be optional, and {what} is not one")
}

/// Two field keys that cannot go together: reported on the second, with the first.
fn conflict(meta: &ParseNestedMeta<'_>, key: &str, first: Span, why: &str) -> syn::Error {
    let mut error = meta.error(format!("`{key}` conflicts with the field's other attribute: {why}"));
    error.combine(syn::Error::new(first, "first set here"));
    error
}

fn key_name(meta: &ParseNestedMeta<'_>) -> String {
    let path = &meta.path;
    path.get_ident().map_or_else(|| quote::quote!(#path).to_string().replace(' ', ""), ToString::to_string)
}

fn hook_path(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let input = meta.value()?;
    if input.peek(LitStr) {
        let text: LitStr = input.parse()?;
        return Err(syn::Error::new(
            text.span(),
            format!("write the method as a path, without quotes: `{} = {}`", key_name(meta), text.value()),
        ));
    }
    input.parse()
}

fn timeout(meta: &ParseNestedMeta<'_>) -> syn::Result<Timeout> {
    let text: LitStr = meta.value()?.parse()?;
    duration::parse(&text.value())
        .map(|nanos| Timeout { nanos })
        .map_err(|message| syn::Error::new(text.span(), message))
}

/// `restart = "on_failure"`. `"always"` is refused here rather than by `RegistryBuilder::build`
/// at run time: it is a mistake that the attribute alone shows.
fn restart_value(meta: &ParseNestedMeta<'_>) -> syn::Result<Restart> {
    const VALID: &[(&str, Restart)] = &[("never", Restart::Never), ("on_failure", Restart::OnFailure)];
    let text: LitStr = meta.value()?.parse()?;
    if text.value() == "always" {
        return Err(syn::Error::new(
            text.span(),
            format!(
                "`always` restarts a task when it ends; a component restarts on failure: use `on_failure`\n\
                 valid: {}",
                choices(VALID)
            ),
        ));
    }
    choice(&text, "restart", VALID)
}

/// A string value read by `parse`, whose error is reported on the string.
fn string_value<T>(meta: &ParseNestedMeta<'_>, parse: fn(&str) -> Result<T, String>) -> syn::Result<T> {
    let text: LitStr = meta.value()?.parse()?;
    parse(&text.value()).map_err(|message| syn::Error::new(text.span(), message))
}

/// `jitter = 0.2`: the share of each restart delay taken off at random.
fn jitter(meta: &ParseNestedMeta<'_>) -> syn::Result<f64> {
    let lit: Lit = meta.value()?.parse()?;
    let value = match &lit {
        Lit::Float(float) => float.base10_parse::<f64>()?,
        // `jitter = 0` and `jitter = 1` read as integers.
        Lit::Int(int) => int.base10_parse::<f64>()?,
        _ => {
            return Err(syn::Error::new(
                lit.span(),
                "write `jitter` as a number from 0 to 1: `jitter = 0.2`",
            ));
        }
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(syn::Error::new(
            lit.span(),
            format!("`jitter` is the share of each delay taken off at random: from 0 to 1, not {value}"),
        ));
    }
    Ok(value)
}

/// One of a few string values; the first is the default.
pub(crate) fn choice<T: Copy>(text: &LitStr, key: &str, valid: &[(&str, T)]) -> syn::Result<T> {
    let value = text.value();
    if let Some((_, chosen)) = valid.iter().find(|(name, _)| *name == value) {
        return Ok(*chosen);
    }
    Err(syn::Error::new(text.span(), format!("unknown `{key}` value \"{value}\"; valid: {}", choices(valid))))
}

/// `"never" (the default), "on_failure"`.
fn choices<T>(valid: &[(&str, T)]) -> String {
    let names: Vec<String> = valid.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    match names.split_first() {
        Some((default, [])) => format!("{default} (the default)"),
        Some((default, rest)) => format!("{default} (the default), {}", rest.join(", ")),
        None => String::new(),
    }
}

/// An unknown key, with the valid ones and the closest of them.
fn unknown(meta: &ParseNestedMeta<'_>, key: &str, valid: &[&str], place: &str) -> syn::Error {
    let closest = valid.iter().map(|v| (strsim::levenshtein(key, v), *v)).filter(|(d, _)| *d <= 2).min();
    let hint = closest.map(|(_, v)| format!("; did you mean `{v}`?")).unwrap_or_default();
    meta.error(format!(
        "unknown `component` attribute `{key}` {place}{hint}\nvalid here: {}",
        valid.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
    ))
}
