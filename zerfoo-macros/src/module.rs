//! `#[derive(Module)]`: parameter traversal, dtype moves (`ToDtype`),
//! device moves (`ToDevice`) and, with `#[module(sequential)]`, a chained
//! `Forward`.
//!
//! Every misuse is a `syn::Error` pointing at the offending spot; the macro
//! never panics.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Error, GenericParam, Generics, Ident, LitStr, Member, Type, TypeParamBound,
    WherePredicate,
};

/// One field of the struct (traversed or skipped).
struct Field {
    /// `self.<member>`, and `Name { <member>: .. }` when rebuilding.
    member: Member,
    /// Path segment in checkpoints.
    name: String,
    ty: Type,
    skip: bool,
    /// The field's type, where errors about it point.
    span: Span,
}

#[derive(Default)]
struct FieldAttrs {
    skip: Option<Span>,
    rename: Option<(String, Span)>,
}

fn field_attrs(attrs: &[syn::Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                out.skip = Some(meta.path.span());
                Ok(())
            } else if meta.path.is_ident("rename") {
                let s: LitStr = meta.value()?.parse()?;
                if s.value().is_empty() || s.value().contains('.') {
                    return Err(Error::new(
                        s.span(),
                        "`rename` needs a non-empty name without dots",
                    ));
                }
                out.rename = Some((s.value(), meta.path.span()));
                Ok(())
            } else if meta.path.is_ident("sequential")
                || meta.path.is_ident("dtype")
                || meta.path.is_ident("device")
            {
                Err(meta.error("this option goes on the struct, not on a field"))
            } else {
                Err(meta.error(
                    "unknown field option: expected `#[module(skip)]` or `#[module(rename = \"...\")]`",
                ))
            }
        })?;
    }
    if let (Some(_), Some((_, span))) = (&out.skip, &out.rename) {
        return Err(Error::new(
            *span,
            "`rename` on a skipped field: a skipped field has no checkpoint name, drop `rename` or `skip`",
        ));
    }
    Ok(out)
}

#[derive(Default)]
struct StructOpts {
    /// Where `sequential` was written.
    sequential: Option<Span>,
    /// `#[module(dtype = E)]`.
    dtype: Option<Ident>,
    /// `#[module(device = D)]`.
    device: Option<Ident>,
}

fn struct_opts(attrs: &[syn::Attribute]) -> syn::Result<StructOpts> {
    let mut out = StructOpts::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("sequential") {
                out.sequential = Some(meta.path.span());
                Ok(())
            } else if meta.path.is_ident("dtype") {
                out.dtype = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("device") {
                out.device = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("skip") || meta.path.is_ident("rename") {
                Err(meta.error("this option goes on a field, not on the struct"))
            } else {
                Err(meta.error(
                    "unknown struct option: expected `#[module(sequential)]`, `#[module(dtype = E)]` or `#[module(device = D)]`",
                ))
            }
        })?;
    }
    Ok(out)
}

/// Whether `ty` mentions one of `params`.
fn mentions(ty: &impl ToTokens, params: &[Ident]) -> bool {
    fn walk(ts: TokenStream, params: &[Ident]) -> bool {
        ts.into_iter().any(|tt| match tt {
            TokenTree::Ident(i) => params.contains(&i),
            TokenTree::Group(g) => walk(g.stream(), params),
            _ => false,
        })
    }
    walk(ty.to_token_stream(), params)
}

/// Replaces the type parameters in `map` by their new types, token by token
/// (idents after `::`, `.` or a lifetime's `'` are left alone).
fn subst(ts: TokenStream, map: &HashMap<Ident, TokenStream>) -> TokenStream {
    let mut out = TokenStream::new();
    let mut prev_blocks = false;
    let mut prev_colon = false;
    for tt in ts {
        let (blocks, colon) = match &tt {
            TokenTree::Punct(p) => (
                p.as_char() == '.' || p.as_char() == '\'' || (p.as_char() == ':' && prev_colon),
                p.as_char() == ':',
            ),
            _ => (false, false),
        };
        match tt {
            TokenTree::Ident(ref i) if !prev_blocks && map.contains_key(i) => {
                out.extend(map[i].clone());
            }
            TokenTree::Group(g) => {
                let mut ng = proc_macro2::Group::new(g.delimiter(), subst(g.stream(), map));
                ng.set_span(g.span());
                out.extend([TokenTree::Group(ng)]);
            }
            other => out.extend([other]),
        }
        prev_blocks = blocks;
        prev_colon = colon;
    }
    out
}

/// The trait bounds on type parameter `p`, inline and in the where clause.
fn bounds_of<'a>(generics: &'a Generics, p: &Ident) -> Vec<&'a TypeParamBound> {
    let mut out = Vec::new();
    for gp in &generics.params {
        if let GenericParam::Type(t) = gp {
            if &t.ident == p {
                out.extend(t.bounds.iter());
            }
        }
    }
    if let Some(w) = &generics.where_clause {
        for pred in &w.predicates {
            if let WherePredicate::Type(pt) = pred {
                if let Type::Path(tp) = &pt.bounded_ty {
                    if tp.qself.is_none() && tp.path.is_ident(p) {
                        out.extend(pt.bounds.iter());
                    }
                }
            }
        }
    }
    out
}

/// Whether one of `bounds` is a trait whose last path segment is `name`.
fn has_bound(bounds: &[&TypeParamBound], name: &str) -> bool {
    bounds.iter().any(|b| match b {
        TypeParamBound::Trait(t) => t.path.segments.last().is_some_and(|s| s.ident == name),
        _ => false,
    })
}

pub fn derive(input: DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let opts = struct_opts(&input.attrs)?;
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
    for (i, f) in data.fields.iter().enumerate() {
        let a = field_attrs(&f.attrs)?;
        let member = match &f.ident {
            Some(ident) => Member::Named(ident.clone()),
            None => Member::Unnamed(syn::Index::from(i)),
        };
        let default_name = match &f.ident {
            Some(ident) => ident.to_string(),
            None => i.to_string(),
        };
        fields.push(Field {
            member,
            name: a.rename.map(|(n, _)| n).unwrap_or(default_name),
            ty: f.ty.clone(),
            skip: a.skip.is_some(),
            span: f.ty.span(),
        });
    }

    let type_params: Vec<Ident> = input
        .generics
        .type_params()
        .map(|t| t.ident.clone())
        .collect();

    // A field whose type is a bare dtype or dim parameter can never be a module.
    for f in fields.iter().filter(|f| !f.skip) {
        if let Type::Path(tp) = &f.ty {
            if let Some(p) = type_params
                .iter()
                .find(|p| tp.qself.is_none() && tp.path.is_ident(*p))
            {
                let bounds = bounds_of(&input.generics, p);
                let kind = if has_bound(&bounds, "FloatDtype") || has_bound(&bounds, "Dtype") {
                    Some("a dtype")
                } else if has_bound(&bounds, "Dim") || has_bound(&bounds, "StaticDim") {
                    Some("a dim")
                } else {
                    None
                };
                if let Some(kind) = kind {
                    return Err(Error::new(
                        f.span,
                        format!(
                            "this field's type `{p}` is {kind}, not a module: mark the field `#[module(skip)]`"
                        ),
                    ));
                }
            }
        }
    }

    let traversed: Vec<&Field> = fields.iter().filter(|f| !f.skip).collect();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let own_preds: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    let mut where_preds = own_preds.clone();
    for f in &traversed {
        if mentions(&f.ty, &type_params) {
            let ty = &f.ty;
            where_preds.push(quote_spanned!(f.span=> #ty: ::zerfoo::nn::Module));
        }
    }

    let visits = traversed.iter().map(|f| {
        let (member, path) = (&f.member, &f.name);
        quote_spanned! {f.span=>
            ::zerfoo::nn::Module::visit_params(&self.#member, &::zerfoo::nn::join_path(prefix, #path), v);
        }
    });
    let visits_mut = traversed.iter().map(|f| {
        let (member, path) = (&f.member, &f.name);
        quote_spanned! {f.span=>
            ::zerfoo::nn::Module::visit_params_mut(&mut self.#member, &::zerfoo::nn::join_path(prefix, #path), v);
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

    out.extend(to_dtype_impl(&input, &opts, &fields, &type_params)?);
    out.extend(to_device_impl(&input, &opts, &fields, &type_params)?);
    if let Some(span) = opts.sequential {
        out.extend(sequential_forward(&input, &traversed, span)?);
    }
    Ok(out)
}

/// `impl<.., __E2: FloatDtype> ToDtype<__E2>`: the same struct with its dtype
/// parameter replaced by `__E2` and every sub-module parameter (a type
/// parameter bounded by `Module`) replaced by its own converted type.
fn to_dtype_impl(
    input: &DeriveInput,
    opts: &StructOpts,
    fields: &[Field],
    type_params: &[Ident],
) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let generics = &input.generics;

    // The dtype parameter: marked, or the one bounded by `FloatDtype`.
    let dtype = marked_param(
        input,
        &opts.dtype,
        "FloatDtype",
        "dtype",
        "to_dtype",
        type_params,
    )?;
    let MovePlan {
        map,
        changing,
        modules,
        mut preds,
        impl_generics: impl_gen,
        out_ty,
    } = move_plan(
        input,
        dtype.as_ref(),
        quote!(__E2),
        syn::parse_quote!(__E2: ::zerfoo::kernels::FloatDtype),
        quote!(::zerfoo::nn::ToDtype<__E2>),
        type_params,
    );
    let (_, ty_generics, where_clause) = generics.split_for_impl();
    let (impl_generics, _, _) = impl_gen.split_for_impl();

    let has_dtype = dtype.is_some();
    let mut inits = Vec::new();
    for f in fields {
        let (ty, member) = (&f.ty, &f.member);
        if !f.skip && !has_dtype && !mentions(ty, &changing) {
            // No dtype parameter: the field must already have dtype `__E2`.
            preds.push(quote_spanned!(f.span=> #ty: ::zerfoo::nn::FixedDtype<__E2>));
            inits.push(quote_spanned!(f.span=>
                #member: ::zerfoo::nn::FixedDtype::<__E2>::keep_dtype(&self.#member)
            ));
        } else if mentions(ty, &changing) {
            let bare_module = matches!(ty, Type::Path(tp)
                if tp.qself.is_none() && modules.iter().any(|m| tp.path.is_ident(m)));
            if !bare_module {
                // (for a bare sub-module parameter `M`, `M: ToDtype<__E2>` is above)
                let new_ty = subst(ty.to_token_stream(), &map);
                preds.push(
                    quote_spanned!(f.span=> #ty: ::zerfoo::nn::ToDtype<__E2, Output = #new_ty>),
                );
            }
            inits.push(quote_spanned!(f.span=>
                #member: ::zerfoo::nn::ToDtype::<__E2>::convert_dtype(&self.#member)
            ));
        } else {
            preds.push(clone_bound(f, type_params));
            inits.push(clone_init(f));
        }
    }

    // `FixedDtype<__E2>`: every parameter already has dtype `__E2`.
    let mut fixed_preds: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    let mut fixed_inits = Vec::new();
    for f in fields {
        let (ty, member) = (&f.ty, &f.member);
        if f.skip {
            fixed_preds.push(clone_bound(f, type_params));
            fixed_inits.push(clone_init(f));
        } else {
            fixed_preds.push(quote_spanned!(f.span=> #ty: ::zerfoo::nn::FixedDtype<__E2>));
            fixed_inits.push(quote_spanned!(f.span=>
                #member: ::zerfoo::nn::FixedDtype::<__E2>::keep_dtype(&self.#member)
            ));
        }
    }

    Ok(quote! {
        impl #impl_generics ::zerfoo::nn::ToDtype<__E2> for #name #ty_generics
        where #(#preds,)*
        {
            type Output = #out_ty;
            fn convert_dtype(&self) -> Self::Output {
                #name { #(#inits,)* }
            }
        }
        impl #impl_generics ::zerfoo::nn::FixedDtype<__E2> for #name #ty_generics
        where #(#fixed_preds,)*
        {
            fn keep_dtype(&self) -> Self {
                #name { #(#fixed_inits,)* }
            }
        }
    })
}

/// What a dtype or device move of a struct replaces, and what the impl needs.
struct MovePlan {
    /// Each replaced type parameter and its new type: the moved parameter
    /// becomes the new one, each sub-module parameter `M` becomes
    /// `<M as Trait>::Output`.
    map: HashMap<Ident, TokenStream>,
    /// The replaced parameters.
    changing: Vec<Ident>,
    /// The sub-module parameters (bounded by `Module`).
    modules: Vec<Ident>,
    /// The struct's own predicates, the same bounds restated for the new
    /// types, and `M: Trait` for each sub-module parameter.
    preds: Vec<TokenStream>,
    /// The struct's generics plus the new parameter.
    impl_generics: Generics,
    /// The struct with its parameters replaced.
    out_ty: TokenStream,
}

/// The [`MovePlan`] of moving `moved` (if the struct has it) to `new`
/// (declared as `new_decl`) through the trait `tr` (`ToDtype<__E2>`).
fn move_plan(
    input: &DeriveInput,
    moved: Option<&Ident>,
    new: TokenStream,
    new_decl: GenericParam,
    tr: TokenStream,
    type_params: &[Ident],
) -> MovePlan {
    let (name, generics) = (&input.ident, &input.generics);
    let modules: Vec<Ident> = type_params
        .iter()
        .filter(|p| Some(*p) != moved && has_bound(&bounds_of(generics, p), "Module"))
        .cloned()
        .collect();
    let mut map: HashMap<Ident, TokenStream> = HashMap::new();
    if let Some(d) = moved {
        map.insert(d.clone(), new);
    }
    for m in &modules {
        map.insert(m.clone(), quote!(<#m as #tr>::Output));
    }
    let changing: Vec<Ident> = map.keys().cloned().collect();
    let mut impl_generics = generics.clone();
    impl_generics.params.push(new_decl);
    let where_clause = generics.where_clause.as_ref();
    let mut preds: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    // The output type must satisfy the struct's own bounds.
    for p in &changing {
        let new = &map[p];
        let bounds = bounds_of(generics, p);
        if !bounds.is_empty() {
            let b = bounds.iter().map(|b| subst(b.to_token_stream(), &map));
            preds.push(quote!(#new: #(#b)+*));
        }
    }
    if let Some(w) = where_clause {
        for pred in &w.predicates {
            if mentions(pred, &changing) {
                preds.push(subst(pred.to_token_stream(), &map));
            }
        }
    }
    for m in &modules {
        preds.push(quote!(#m: #tr));
    }
    let out_args = generics.params.iter().map(|gp| match gp {
        GenericParam::Type(t) => subst(t.ident.to_token_stream(), &map),
        GenericParam::Lifetime(l) => l.lifetime.to_token_stream(),
        GenericParam::Const(c) => c.ident.to_token_stream(),
    });
    let out_ty = if generics.params.is_empty() {
        quote!(#name)
    } else {
        quote!(#name<#(#out_args),*>)
    };
    MovePlan {
        map,
        changing,
        modules,
        preds,
        impl_generics,
        out_ty,
    }
}

/// The type parameter a `derive` option names (checked to exist), or the
/// only one bounded by `bound`; an error when several are and none is named.
fn marked_param(
    input: &DeriveInput,
    named: &Option<Ident>,
    bound: &str,
    option: &str,
    mover: &str,
    type_params: &[Ident],
) -> syn::Result<Option<Ident>> {
    let name = &input.ident;
    if let Some(d) = named {
        if !type_params.contains(d) {
            return Err(Error::new(
                d.span(),
                format!("`{d}` is not a type parameter of `{name}`"),
            ));
        }
        return Ok(Some(d.clone()));
    }
    let found: Vec<&Ident> = type_params
        .iter()
        .filter(|p| has_bound(&bounds_of(&input.generics, p), bound))
        .collect();
    if found.len() > 1 {
        return Err(Error::new(
            found[1].span(),
            format!(
                "`{}` and `{}` are both bounded by `{bound}`: mark the one `{mover}` changes with `#[module({option} = {})]` on the struct",
                found[0], found[1], found[0]
            ),
        ));
    }
    Ok(found.first().map(|p| (*p).clone()))
}

/// `impl<.., __D2: Backend> ToDevice<__D2>`: the same struct with its device
/// parameter (bounded by `Backend`, or named by `#[module(device = D)]`)
/// replaced by `__D2`, every sub-module parameter by its own moved type, and
/// every parameter tensor copied to the new device. Fields whose type does
/// not mention those parameters must move to themselves (they hold no
/// device memory); skipped fields are cloned.
fn to_device_impl(
    input: &DeriveInput,
    opts: &StructOpts,
    fields: &[Field],
    type_params: &[Ident],
) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let generics = &input.generics;
    let device = marked_param(
        input,
        &opts.device,
        "Backend",
        "device",
        "to_device",
        type_params,
    )?;
    let MovePlan {
        map,
        modules,
        mut preds,
        impl_generics: impl_gen,
        out_ty,
        ..
    } = move_plan(
        input,
        device.as_ref(),
        quote!(__D2),
        syn::parse_quote!(__D2: ::zerfoo::kernels::Backend),
        quote!(::zerfoo::nn::ToDevice<__D2>),
        type_params,
    );
    let (_, ty_generics, _) = generics.split_for_impl();
    let (impl_generics, _, _) = impl_gen.split_for_impl();

    let mut inits = Vec::new();
    for f in fields {
        let (ty, member) = (&f.ty, &f.member);
        if f.skip {
            preds.push(clone_bound(f, type_params));
            inits.push(clone_init(f));
            continue;
        }
        let bare_module = matches!(ty, Type::Path(tp)
            if tp.qself.is_none() && modules.iter().any(|m| tp.path.is_ident(m)));
        if !bare_module {
            // A field that does not mention the changing parameters moves to
            // its own type (it holds no device memory).
            let new_ty = subst(ty.to_token_stream(), &map);
            preds
                .push(quote_spanned!(f.span=> #ty: ::zerfoo::nn::ToDevice<__D2, Output = #new_ty>));
        }
        inits.push(quote_spanned!(f.span=>
            #member: ::zerfoo::nn::ToDevice::<__D2>::convert_device(&self.#member, device)?
        ));
    }

    Ok(quote! {
        impl #impl_generics ::zerfoo::nn::ToDevice<__D2> for #name #ty_generics
        where #(#preds,)*
        {
            type Output = #out_ty;
            fn convert_device(&self, device: &__D2) -> ::zerfoo::Result<Self::Output> {
                ::core::result::Result::Ok(#name { #(#inits,)* })
            }
        }
    })
}

/// `Ty: Clone` for a field copied as it is.
fn clone_bound(f: &Field, type_params: &[Ident]) -> TokenStream {
    let ty = &f.ty;
    if mentions(ty, type_params) {
        quote_spanned!(f.span=> #ty: ::core::clone::Clone)
    } else {
        // No generics in the bound: `for<'..>` keeps a field that is not
        // `Clone` from being a "trivially false" bound (an error).
        quote_spanned!(f.span=> for<'__z> #ty: ::core::clone::Clone)
    }
}

/// `member: Clone::clone(&self.member)`.
fn clone_init(f: &Field) -> TokenStream {
    let member = &f.member;
    quote_spanned!(f.span=> #member: ::core::clone::Clone::clone(&self.#member))
}

/// `impl<X> Forward<X>`: feeds `x` through the traversed fields in order.
fn sequential_forward(
    input: &DeriveInput,
    fields: &[&Field],
    attr_span: Span,
) -> syn::Result<TokenStream> {
    let name = &input.ident;
    if fields.is_empty() {
        return Err(Error::new(
            attr_span,
            format!(
                "`#[module(sequential)]` needs at least one layer field, and every field of `{name}` is skipped or absent"
            ),
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
        let member = &f.member;
        preds.push(quote_spanned!(f.span=> #ty: ::zerfoo::nn::Forward<#input_ty>));
        steps.push(
            quote_spanned!(f.span=> let x = ::zerfoo::nn::Forward::forward(&self.#member, x);),
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
