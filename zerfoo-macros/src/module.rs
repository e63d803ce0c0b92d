//! `#[derive(Module)]`: parameter traversal (and, with
//! `#[module(sequential)]`, a chained `Forward`).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, Fields, GenericParam, Ident, LitStr, Type};

/// One traversed field.
struct Field {
    /// `self.<access>`
    access: TokenStream,
    /// Path segment in checkpoints.
    name: String,
    ty: Type,
    span: Span,
}

#[derive(Default)]
struct FieldAttrs {
    skip: bool,
    rename: Option<String>,
}

fn field_attrs(attrs: &[syn::Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                out.skip = true;
                Ok(())
            } else if meta.path.is_ident("rename") {
                let s: LitStr = meta.value()?.parse()?;
                if s.value().is_empty() || s.value().contains('.') {
                    return Err(meta.error("`rename` needs a non-empty name without dots"));
                }
                out.rename = Some(s.value());
                Ok(())
            } else {
                Err(meta.error(
                    "unknown field option: expected `#[module(skip)]` or `#[module(rename = \"...\")]`",
                ))
            }
        })?;
    }
    if out.skip && out.rename.is_some() {
        return Err(Error::new(
            attrs[0].span(),
            "a skipped field has no checkpoint name: drop `rename` or `skip`",
        ));
    }
    Ok(out)
}

fn struct_sequential(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut seq = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("sequential") {
                seq = true;
                Ok(())
            } else {
                Err(meta.error("unknown struct option: expected `#[module(sequential)]`"))
            }
        })?;
    }
    Ok(seq)
}

/// Whether `ty` mentions one of the struct's type parameters.
fn mentions_generic(ty: &Type, params: &[Ident]) -> bool {
    let text = quote!(#ty).to_string();
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|tok| params.iter().any(|p| p == tok))
}

pub fn derive(input: DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let sequential = struct_sequential(&input.attrs)?;
    let data = match &input.data {
        Data::Struct(s) => s,
        Data::Enum(e) => {
            return Err(Error::new(
                e.enum_token.span(),
                "`#[derive(Module)]` needs a struct: an enum has no fixed set of parameters",
            ))
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span(),
                "`#[derive(Module)]` needs a struct, not a union",
            ))
        }
    };
    let mut fields = Vec::new();
    match &data.fields {
        Fields::Named(named) => {
            for f in &named.named {
                let a = field_attrs(&f.attrs)?;
                if a.skip {
                    continue;
                }
                let ident = f.ident.clone().expect("named field");
                fields.push(Field {
                    access: quote!(#ident),
                    name: a.rename.unwrap_or_else(|| ident.to_string()),
                    ty: f.ty.clone(),
                    span: f.ty.span(),
                });
            }
        }
        Fields::Unnamed(unnamed) => {
            for (i, f) in unnamed.unnamed.iter().enumerate() {
                let a = field_attrs(&f.attrs)?;
                if a.skip {
                    continue;
                }
                let index = syn::Index::from(i);
                fields.push(Field {
                    access: quote!(#index),
                    name: a.rename.unwrap_or_else(|| i.to_string()),
                    ty: f.ty.clone(),
                    span: f.ty.span(),
                });
            }
        }
        Fields::Unit => {}
    }

    let type_params: Vec<Ident> = input
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            _ => None,
        })
        .collect();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut where_preds: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    for f in &fields {
        if mentions_generic(&f.ty, &type_params) {
            let ty = &f.ty;
            where_preds.push(quote!(#ty: ::zerfoo::nn::Module));
        }
    }

    let visits = fields.iter().map(|f| {
        let (access, path) = (&f.access, &f.name);
        quote_spanned! {f.span=>
            ::zerfoo::nn::Module::visit_params(&self.#access, &::zerfoo::nn::join_path(prefix, #path), v);
        }
    });
    let visits_mut = fields.iter().map(|f| {
        let (access, path) = (&f.access, &f.name);
        quote_spanned! {f.span=>
            ::zerfoo::nn::Module::visit_params_mut(&mut self.#access, &::zerfoo::nn::join_path(prefix, #path), v);
        }
    });

    let mut out = quote! {
        impl #impl_generics ::zerfoo::nn::Module for #name #ty_generics
        where #(#where_preds,)*
        {
            fn visit_params<__V: ::zerfoo::nn::ParamVisitor>(&self, prefix: &str, v: &mut __V) {
                #(#visits)*
            }
            fn visit_params_mut<__V: ::zerfoo::nn::ParamVisitorMut>(&mut self, prefix: &str, v: &mut __V) {
                #(#visits_mut)*
            }
        }
    };

    if sequential {
        out.extend(sequential_forward(&input, &fields)?);
    }
    Ok(out)
}

/// `impl<X> Forward<X>`: feeds `x` through the traversed fields in order.
fn sequential_forward(input: &DeriveInput, fields: &[Field]) -> syn::Result<TokenStream> {
    let name = &input.ident;
    if fields.is_empty() {
        return Err(Error::new(
            name.span(),
            "`#[module(sequential)]` needs at least one layer field",
        ));
    }
    let mut generics = input.generics.clone();
    generics.params.push(syn::parse_quote!(__X));
    let (impl_generics, _, _) = generics.split_for_impl();
    let (_, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut preds: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    let mut input_ty = quote!(__X);
    let mut steps = Vec::new();
    for f in fields {
        let ty = &f.ty;
        let access = &f.access;
        preds.push(quote_spanned!(f.span=> #ty: ::zerfoo::nn::Forward<#input_ty>));
        steps.push(
            quote_spanned!(f.span=> let x = ::zerfoo::nn::Forward::forward(&self.#access, x);),
        );
        input_ty = quote!(<#ty as ::zerfoo::nn::Forward<#input_ty>>::Output);
    }
    Ok(quote! {
        impl #impl_generics ::zerfoo::nn::Forward<__X> for #name #ty_generics
        where #(#preds,)*
        {
            type Output = #input_ty;
            fn forward(&self, x: __X) -> Self::Output {
                #(#steps)*
                x
            }
        }
    })
}
