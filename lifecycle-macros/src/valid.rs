//! Checks on the parsed input that the compiler would report late, or confusingly.

use syn::spanned::Spanned;
use syn::{GenericParam, Type};

use crate::ast::Input;
use crate::attr::Errors;

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
    }
    if let Some(depends_on) = &input.attrs.depends_on {
        for ty in &depends_on.value {
            check_not_self(input, ty, errors);
        }
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
