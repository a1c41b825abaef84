//! Writes the `Component` impl of a derive: fully qualified paths, `#[automatically_derived]`,
//! only the methods the attributes ask for, and a fallback impl when the input cannot be used.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, GenericParam, Path, WhereClause, parse_quote, parse_quote_spanned};

use crate::ast::{Field, Input};
use crate::attr::{ContainerAttrs, Errors, FieldRole, HookPath, Restart, Set};
use crate::{crate_path, valid};

/// Methods of `Component` that a hook must not be named after: `Self::start` would resolve to
/// the trait method being generated and call itself forever.
const TRAIT_METHODS: &[&str] =
    &["name", "dependencies", "options", "start", "drain", "stop", "reload", "health"];

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let parsed = Input::from_syn(input, &mut errors);
    let core = parsed
        .as_ref()
        .and_then(|p| p.attrs.krate.as_ref().map(|k| k.value.clone()))
        .unwrap_or_else(crate_path::core);
    let body = match &parsed {
        Some(parsed) => {
            valid::check(parsed, &mut errors);
            if borrows(input) { TokenStream::new() } else { component_impl(parsed, &core, &mut errors) }
        }
        None => fallback(input, &core),
    };
    let errors = errors.into_compile_errors();
    quote! {
        #body
        #errors
    }
}

/// A struct with lifetime parameters cannot be a component (it must be `'static`); its error is
/// reported by `valid`, and no impl is written that would only add errors.
fn borrows(input: &DeriveInput) -> bool {
    input.generics.params.iter().any(|p| matches!(p, GenericParam::Lifetime(_)))
}

/// An impl with every method defaulted, so that a type the derive refused does not also fail
/// wherever it is used as a component.
fn fallback(input: &DeriveInput, core: &Path) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #core::Component for #ident #ty_generics #where_clause {}
    }
}

fn component_impl(input: &Input<'_>, core: &Path, errors: &mut Errors) -> TokenStream {
    let ident = input.ident();
    let generics = &input.original.generics;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let mut where_clause: WhereClause = where_clause.cloned().unwrap_or_else(|| parse_quote!(where));
    if !generics.params.is_empty() {
        where_clause
            .predicates
            .push(parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static));
    }

    let attrs = &input.attrs;
    let name = attrs.name.as_ref().map(|name| {
        let name = &name.value;
        quote! {
            fn name(&self) -> #core::ComponentId {
                #core::ComponentId::from(#name)
            }
        }
    });
    let dependencies = dependencies(input, core);
    let options = options(input, core);
    let start = hook(core, "start", attrs.start.as_ref(), errors);
    let drain = hook(core, "drain", attrs.drain.as_ref(), errors);
    let reload = hook(core, "reload", attrs.reload.as_ref(), errors);
    let stop = stop(input, core, errors);
    let health = attrs.health.as_ref().and_then(|path| {
        let callee = method(path, errors)?;
        Some(quote_spanned! {callee.span()=>
            fn health(&self) -> impl ::core::future::Future<Output = #core::Health> + ::core::marker::Send {
                #core::macro_support::call_health::<Self, _>(#callee, self)
            }
        })
    });

    quote! {
        #[automatically_derived]
        impl #impl_generics #core::Component for #ident #ty_generics #where_clause {
            #name
            #dependencies
            #options
            #start
            #drain
            #stop
            #reload
            #health
        }
    }
}

fn dependencies(input: &Input<'_>, core: &Path) -> Option<TokenStream> {
    let from_fields = input.fields.iter().filter(|f| f.is_dependency()).filter_map(|field| {
        // A dependency on itself was reported by `valid`; leaving it out keeps the rest compiling.
        if field.dep_target().is_some_and(|target| valid::is_self(input, target)) {
            return None;
        }
        let member = &field.member;
        let optional = field.optional.map(|span| quote_spanned! {span=> .optional() });
        Some(quote_spanned! {field.ty.span()=> #core::Dependency::from(&self.#member) #optional })
    });
    let by_type = input
        .attrs
        .depends_on
        .iter()
        .flat_map(|d| &d.value)
        .filter(|ty| !valid::is_self(input, ty))
        .map(|ty| quote_spanned! {ty.span()=> #core::Dependency::on_type::<#ty>() });
    let all: Vec<TokenStream> = from_fields.chain(by_type).collect();
    (!all.is_empty()).then(|| {
        quote! {
            fn dependencies(&self) -> ::std::vec::Vec<#core::Dependency> {
                ::std::vec![#(#all),*]
            }
        }
    })
}

fn options(input: &Input<'_>, core: &Path) -> Option<TokenStream> {
    let attrs = &input.attrs;
    if attrs.start_timeout.is_none()
        && attrs.stop_timeout.is_none()
        && attrs.critical.is_none()
        && attrs.run_to_completion.is_none()
        && attrs.restart.is_none()
    {
        return None;
    }
    let mut options = quote!(#core::ComponentOptions::new());
    if let Some(timeout) = &attrs.start_timeout {
        let nanos = timeout.value.nanos;
        options = quote!(#options.start_timeout(::core::time::Duration::from_nanos(#nanos)));
    }
    if let Some(timeout) = &attrs.stop_timeout {
        let nanos = timeout.value.nanos;
        options = quote!(#options.stop_timeout(::core::time::Duration::from_nanos(#nanos)));
    }
    if let Some(critical) = &attrs.critical {
        let critical = critical.value;
        options = quote!(#options.critical(#critical));
    }
    if let Some(completes) = &attrs.run_to_completion {
        let completes = completes.value;
        options = quote!(#options.run_to_completion(#completes));
    }
    if let Some(policy) = restart_policy(attrs, core) {
        options = quote!(#options.restart(#policy));
    }
    Some(quote! {
        fn options(&self) -> #core::ComponentOptions {
            #options
        }
    })
}

/// `restart` with the keys that shape it. Without `on_failure` those keys were reported by `valid`
/// and are left out.
pub(crate) fn restart_policy(attrs: &ContainerAttrs, core: &Path) -> Option<TokenStream> {
    let duration = |nanos: u64| quote!(::core::time::Duration::from_nanos(#nanos));
    match attrs.restart.as_ref()?.value {
        Restart::Never => Some(quote!(#core::RestartPolicy::never())),
        Restart::OnFailure => {
            let mut policy = quote!(#core::RestartPolicy::on_failure());
            if let Some(backoff) = &attrs.backoff {
                let (initial, max) = (duration(backoff.value.initial), duration(backoff.value.max));
                policy = quote!(#policy.backoff(#initial, #max));
            }
            if let Some(max_restarts) = &attrs.max_restarts {
                let (count, window) = (max_restarts.value.count, duration(max_restarts.value.window));
                policy = quote!(#policy.max_restarts(#count, #window));
            }
            if let Some(jitter) = &attrs.jitter {
                let jitter = jitter.value;
                policy = quote!(#policy.jitter(#jitter));
            }
            Some(policy)
        }
    }
}

/// The path to call for a hook: a bare `connect` means `Self::connect`.
fn method(path: &Set<HookPath>, errors: &mut Errors) -> Option<Path> {
    let path = &path.value;
    let bare = path.leading_colon.is_none() && path.segments.len() == 1;
    let through_self = path.segments.len() == 2 && path.segments[0].ident == "Self";
    if bare || through_self {
        let method = &path.segments[path.segments.len() - 1].ident;
        if TRAIT_METHODS.iter().any(|m| method == m) {
            errors.push(syn::Error::new(
                method.span(),
                format!(
                    "give this method another name than `{method}`: `Self::{method}` is also the `Component` \
                     method being generated, which would call itself"
                ),
            ));
            return None;
        }
        // Spanned on the user's method name, so the compiler's errors about it point there.
        return Some(if bare { parse_quote_spanned!(method.span()=> Self::#method) } else { path.clone() });
    }
    Some(path.clone())
}

fn hook(core: &Path, which: &str, path: Option<&Set<HookPath>>, errors: &mut Errors) -> Option<TokenStream> {
    let callee = method(path?, errors)?;
    let name = format_ident!("{which}");
    let call =
        quote_spanned! {callee.span()=> #core::macro_support::call_hook::<Self, _, _>(#callee, self, ctx) };
    Some(quote! {
        fn #name(
            &self,
            ctx: &#core::Context,
        ) -> impl ::core::future::Future<Output = ::core::result::Result<(), #core::BoxError>> + ::core::marker::Send {
            // An `async` block captures `self` and `ctx` with their own lifetimes, as the trait's
            // signature promises, where the hook's future alone would tie them together.
            async move { #call.await }
        }
    })
}

/// `stop`: the stop method, then every `#[component(close)]` field in reverse declaration order.
fn stop(input: &Input<'_>, core: &Path, errors: &mut Errors) -> Option<TokenStream> {
    let hook = input.attrs.stop.as_ref().and_then(|path| method(path, errors)).map(|callee| {
        let call = quote_spanned! {callee.span()=> #core::macro_support::call_hook::<Self, _, _>(#callee, self, ctx) };
        quote!(stop.hook(#call.await);)
    });
    let closes: Vec<TokenStream> = input
        .fields
        .iter()
        .rev()
        .filter(|f| matches!(f.role, FieldRole::Close))
        .map(|field: &Field<'_>| {
            let member = &field.member;
            let label = field.label();
            let close = quote_spanned! {field.ty.span()=> #core::macro_support::close_field(&self.#member) };
            quote!(stop.field(#label, #close.await);)
        })
        .collect();
    if hook.is_none() && closes.is_empty() {
        return None;
    }
    Some(quote! {
        fn stop(
            &self,
            ctx: &#core::Context,
        ) -> impl ::core::future::Future<Output = ::core::result::Result<(), #core::BoxError>> + ::core::marker::Send {
            async move {
                let _ = ctx;
                let mut stop = #core::macro_support::StopSequence::default();
                #hook
                #(#closes)*
                stop.finish()
            }
        }
    })
}
