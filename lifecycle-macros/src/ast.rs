//! The derive's input as a typed tree: the struct, its `#[component]` keys and its fields, each
//! keeping the user's tokens.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, Member, PathArguments, Type};

use crate::attr::{ContainerAttrs, Errors, FieldAttrs, FieldRole, field_attrs};

pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: ContainerAttrs,
    pub(crate) fields: Vec<Field<'a>>,
}

pub(crate) struct Field<'a> {
    pub(crate) member: Member,
    pub(crate) ty: &'a Type,
    pub(crate) role: FieldRole,
    /// Where `#[component(optional)]` was written, if it was.
    pub(crate) optional: Option<Span>,
}

impl Field<'_> {
    /// The component type `T` when the field is written `Dep<T>` (any path ending in `Dep`).
    pub(crate) fn dep_target(&self) -> Option<&Type> {
        dep_target(self.ty)
    }

    /// Whether the field is a dependency.
    pub(crate) fn is_dependency(&self) -> bool {
        match self.role {
            FieldRole::Auto => self.dep_target().is_some(),
            FieldRole::Dep => true,
            FieldRole::Close | FieldRole::Skip => false,
        }
    }

    /// The field's name as the report writes it: `pool`, or `0` in a tuple struct.
    pub(crate) fn label(&self) -> String {
        match &self.member {
            Member::Named(ident) => ident.to_string(),
            Member::Unnamed(index) => index.index.to_string(),
        }
    }
}

fn dep_target(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Dep" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.first()? {
        GenericArgument::Type(target) if args.args.len() == 1 => Some(target),
        _ => None,
    }
}

impl<'a> Input<'a> {
    /// Parses a struct. An enum or a union is an error; `None` then means "nothing to expand
    /// beyond the fallback".
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> Option<Self> {
        let attrs = ContainerAttrs::parse(&input.attrs, errors);
        let fields = match &input.data {
            Data::Struct(data) => &data.fields,
            Data::Enum(data) => {
                errors.push(syn::Error::new(
                    data.enum_token.span(),
                    "`#[derive(Component)]` works on structs only: a component is one resource and its fields; \
                     wrap the enum in a struct",
                ));
                return None;
            }
            Data::Union(data) => {
                errors.push(syn::Error::new(
                    data.union_token.span(),
                    "`#[derive(Component)]` works on structs only, not unions",
                ));
                return None;
            }
        };
        let fields = match fields {
            Fields::Named(named) => named.named.iter().collect::<Vec<_>>(),
            Fields::Unnamed(unnamed) => unnamed.unnamed.iter().collect(),
            Fields::Unit => Vec::new(),
        }
        .into_iter()
        .enumerate()
        .map(|(index, field)| {
            let FieldAttrs { role, optional } = field_attrs(&field.attrs, errors);
            Field {
                member: field.ident.clone().map_or_else(|| Member::from(index), Member::Named),
                ty: &field.ty,
                role,
                optional,
            }
        })
        .collect();
        Some(Self { original: input, attrs, fields })
    }

    pub(crate) fn ident(&self) -> &Ident {
        &self.original.ident
    }
}
