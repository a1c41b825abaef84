//! `#[component(...)]` attributes, parsed into values that keep the user's tokens for errors.
//!
//! Each key is set through a setter that refuses a second value (tokio-macros style). A key that
//! fails to parse is reported and skipped; the keys before it keep their values, so the derive
//! still expands what it can.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, LitBool, LitStr, Path, Token, Type};

use crate::duration;

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
    "health",
    "start_timeout",
    "stop_timeout",
    "critical",
    "depends_on",
    "crate",
];

/// The struct-level `#[component(...)]` keys.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) name: Option<Set<LitStr>>,
    pub(crate) start: Option<Set<HookPath>>,
    pub(crate) drain: Option<Set<HookPath>>,
    pub(crate) stop: Option<Set<HookPath>>,
    pub(crate) health: Option<Set<HookPath>>,
    pub(crate) start_timeout: Option<Set<Timeout>>,
    pub(crate) stop_timeout: Option<Set<Timeout>>,
    pub(crate) critical: Option<Set<bool>>,
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

    fn parse_key(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
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
            "health" => set(&mut self.health, hook_path(meta)?, meta, "health"),
            "start_timeout" => set(&mut self.start_timeout, timeout(meta)?, meta, "start_timeout"),
            "stop_timeout" => set(&mut self.stop_timeout, timeout(meta)?, meta, "stop_timeout"),
            "critical" => {
                // A bare `critical` means true.
                let value =
                    if meta.input.peek(Token![=]) { meta.value()?.parse::<LitBool>()?.value } else { true };
                set(&mut self.critical, value, meta, "critical")
            }
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

pub(crate) const FIELD_KEYS: &[&str] = &["close", "skip", "dep"];

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

pub(crate) fn field_role(attrs: &[Attribute], errors: &mut Errors) -> FieldRole {
    let mut role: Option<Set<FieldRole>> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("component")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = key_name(&meta);
            let span = meta.path.span();
            let value = match key.as_str() {
                "close" => FieldRole::Close,
                "skip" => FieldRole::Skip,
                "dep" => FieldRole::Dep,
                _ => return Err(unknown(&meta, &key, FIELD_KEYS, "on a field")),
            };
            if let Some(first) = &role {
                let mut error = meta.error(format!(
                    "`{key}` conflicts with the field's other attribute: a field is a resource to close, a \
                     dependency, or skipped, not several"
                ));
                error.combine(syn::Error::new(first.key, "first set here"));
                return Err(error);
            }
            role = Some(Set { value, key: span });
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    role.map_or(FieldRole::Auto, |r| r.value)
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

/// An unknown key, with the valid ones and the closest of them.
fn unknown(meta: &ParseNestedMeta<'_>, key: &str, valid: &[&str], place: &str) -> syn::Error {
    let closest = valid.iter().map(|v| (strsim::levenshtein(key, v), *v)).filter(|(d, _)| *d <= 2).min();
    let hint = closest.map(|(_, v)| format!("; did you mean `{v}`?")).unwrap_or_default();
    meta.error(format!(
        "unknown `component` attribute `{key}` {place}{hint}\nvalid here: {}",
        valid.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
    ))
}
