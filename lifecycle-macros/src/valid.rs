//! Checks on the parsed input that the compiler would report late, or confusingly.

use syn::spanned::Spanned;
use syn::{GenericParam, Type};

use crate::ast::Input;
use crate::attr::{ContainerAttrs, Errors, FieldRole, Restart};

pub(crate) fn check(input: &Input<'_>, errors: &mut Errors) {
    for param in &input.original.generics.params {
        if let GenericParam::Lifetime(lifetime) = param {
            errors.push(syn::Error::new(
                lifetime.span(),
                format!(
                    "a component lives as long as the service, so it cannot borrow: remove `{}` and own the \
                     data (share it with `Arc`)",
                    lifetime.lifetime
                ),
            ));
        }
    }
    for field in &input.fields {
        if let Some(target) = field.is_dependency().then(|| field.dep_target()).flatten() {
            check_not_self(input, target, errors);
        }
        // `skip` and `close` with `optional` were refused as conflicts while parsing.
        let not_a_dependency = matches!(field.role, FieldRole::Auto) && field.dep_target().is_none();
        if let Some(optional) = field.optional.filter(|_| not_a_dependency) {
            errors.push(syn::Error::new(
                optional,
                format!(
                    "`optional` makes a dependency optional, and `{}` is not one: its type is not `Dep<T>` \
                     (for an alias of `Dep<T>`, write `#[component(dep, optional)]`)",
                    field.label()
                ),
            ));
        }
    }
    check_restart_keys(&input.attrs, errors);
    if let Some(depends_on) = &input.attrs.depends_on {
        for ty in &depends_on.value {
            check_not_self(input, ty, errors);
        }
    }
}

/// `backoff`, `max_restarts` and `jitter` shape restarts: without `restart = "on_failure"` they
/// would be ignored in silence.
pub(crate) fn check_restart_keys(attrs: &ContainerAttrs, errors: &mut Errors) {
    let why = match &attrs.restart {
        Some(restart) if restart.value == Restart::OnFailure => return,
        Some(_) => "`restart = \"never\"` never restarts",
        None => "without it the component never restarts",
    };
    let keys = [
        ("backoff", attrs.backoff.as_ref().map(|k| k.key)),
        ("max_restarts", attrs.max_restarts.as_ref().map(|k| k.key)),
        ("jitter", attrs.jitter.as_ref().map(|k| k.key)),
    ];
    for (key, span) in keys.into_iter().filter_map(|(key, span)| Some((key, span?))) {
        errors.push(syn::Error::new(
            span,
            format!("`{key}` needs `restart = \"on_failure\"`: it shapes restarts, and {why}"),
        ));
    }
}

/// Whether `ty` names the struct being derived: `Self`, or its own name.
pub(crate) fn is_self(input: &Input<'_>, ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    path.qself.is_none()
        && path.path.segments.len() == 1
        && (path.path.segments[0].ident == "Self" || path.path.segments[0].ident == *input.ident())
}

/// A component cannot depend on itself.
fn check_not_self(input: &Input<'_>, ty: &Type, errors: &mut Errors) {
    if is_self(input, ty) {
        errors.push(syn::Error::new(
            ty.span(),
            format!("`{}` cannot depend on itself: a component starts after its dependencies", input.ident()),
        ));
    }
}
