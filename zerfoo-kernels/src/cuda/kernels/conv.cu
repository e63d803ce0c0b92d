// 2-D convolution, pooling and batch normalization over [N, C, H, W] (the
// CPU's cpu/conv.rs). Direct kernels: every output element (or gradient
// element) is computed by one thread (one warp for the long weight and bias
// gradient sums) in a fixed order, in the compute type, rounded once:
// deterministic, no atomics. Inputs in any layout (their shapes carry the
// dims); outputs contiguous.

// The input coordinate of tap k of window i along an axis, or -1 if it lies
// in the padding.
__device__ __forceinline__ i64 cv_tap(u64 i, u64 k, u64 stride, u64 dil, u64 pad, u64 len) {
    i64 v = (i64)(i * stride + k * dil) - (i64)pad;
    return (v >= 0 && (u64)v < len) ? v : -1;
}

__device__ __forceinline__ u64 cv_off(const ZfLayout& l, u64 a, u64 b, u64 c, u64 d) {
    return l.offset + a * l.strides[0] + b * l.strides[1] + c * l.strides[2] + d * l.strides[3];
}

// y[n, o, oy, ox] = b[o] + sum over the group's channels and the kernel taps
// of x * w. x: lx [N, C, H, W]; w: lw [O, C / groups, KH, KW]; bias lb [O].
ZF_KERNEL ZF_NAME(conv2d_fwd)(const T* x, ZfLayout lx, const T* w, ZfLayout lw, const T* bias, ZfLayout lb,
                              int has_bias, u64 groups, u64 sh, u64 sw, u64 ph, u64 pw, u64 dh, u64 dw, u64 oh,
                              u64 ow, T* y, u64 n) {
    u64 h = lx.shape[2], wd = lx.shape[3];
    u64 o_all = lw.shape[0], cg = lw.shape[1], kh = lw.shape[2], kw = lw.shape[3];
    u64 og = o_all / groups;
    ZF_FOR(e, n) {
        u64 ox = e % ow, oy = (e / ow) % oh, o = (e / (ow * oh)) % o_all, ni = e / (ow * oh * o_all);
        u64 c0 = (o / og) * cg;
        ACC s = (ACC)0;
        for (u64 c = 0; c < cg; ++c) {
            for (u64 i = 0; i < kh; ++i) {
                i64 ih = cv_tap(oy, i, sh, dh, ph, h);
                if (ih < 0) continue;
                for (u64 j = 0; j < kw; ++j) {
                    i64 iw = cv_tap(ox, j, sw, dw, pw, wd);
                    if (iw < 0) continue;
                    s += ld(x, cv_off(lx, ni, c0 + c, (u64)ih, (u64)iw)) * ld(w, cv_off(lw, o, c, i, j));
                }
            }
        }
        if (has_bias) s += ld(bias, zf_index(lb, o));
        y[e] = rnd(s);
    }
}

// gx[n, c, ih, iw] = sum over the outputs whose window taps (ih, iw) of
// gy * w (gy contiguous [N, O, OH, OW]).
ZF_KERNEL ZF_NAME(conv2d_bwd_x)(const T* w, ZfLayout lw, const T* gy, u64 c_all, u64 h, u64 wd, u64 groups, u64 sh,
                                u64 sw, u64 ph, u64 pw, u64 dh, u64 dw, u64 oh, u64 ow, T* gx, u64 n) {
    u64 o_all = lw.shape[0], cg = lw.shape[1], kh = lw.shape[2], kw = lw.shape[3];
    u64 og = o_all / groups;
    ZF_FOR(e, n) {
        u64 iw = e % wd, ih = (e / wd) % h, c = (e / (wd * h)) % c_all, ni = e / (wd * h * c_all);
        u64 g = c / cg, cc = c % cg;
        ACC s = (ACC)0;
        for (u64 o = g * og; o < (g + 1) * og; ++o) {
            for (u64 i = 0; i < kh; ++i) {
                i64 ty = (i64)(ih + ph) - (i64)(i * dh);
                if (ty < 0 || (u64)ty % sh != 0) continue;
                u64 oy = (u64)ty / sh;
                if (oy >= oh) continue;
                for (u64 j = 0; j < kw; ++j) {
                    i64 tx = (i64)(iw + pw) - (i64)(j * dw);
                    if (tx < 0 || (u64)tx % sw != 0) continue;
                    u64 ox = (u64)tx / sw;
                    if (ox >= ow) continue;
                    s += ld(gy, ((ni * o_all + o) * oh + oy) * ow + ox) * ld(w, cv_off(lw, o, cc, i, j));
                }
            }
        }
        gx[e] = rnd(s);
    }
}

// gw[o, cc, i, j] = sum over (n, oy, ox) of gy * x at the tap; one warp per
// weight element (lanes over (n, oy, ox), merged in a fixed order).
ZF_KERNEL ZF_NAME(conv2d_bwd_w)(const T* x, ZfLayout lx, const T* gy, u64 o_all, u64 cg, u64 kh, u64 kw, u64 groups,
                                u64 sh, u64 sw, u64 ph, u64 pw, u64 dh, u64 dw, u64 oh, u64 ow, T* gw) {
    u64 nb = lx.shape[0], h = lx.shape[2], wd = lx.shape[3];
    u64 og = o_all / groups;
    u64 total = o_all * cg * kh * kw, per = nb * oh * ow;
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    for (u64 e = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < total; e += warps) {
        u64 j = e % kw, i = (e / kw) % kh, cc = (e / (kw * kh)) % cg, o = e / (kw * kh * cg);
        u64 c = (o / og) * cg + cc;
        ACC s = (ACC)0;
        for (u64 k = lane; k < per; k += 32) {
            u64 ox = k % ow, oy = (k / ow) % oh, ni = k / (ow * oh);
            i64 ih = cv_tap(oy, i, sh, dh, ph, h), iw = cv_tap(ox, j, sw, dw, pw, wd);
            if (ih < 0 || iw < 0) continue;
            s += ld(gy, ((ni * o_all + o) * oh + oy) * ow + ox) * ld(x, cv_off(lx, ni, c, (u64)ih, (u64)iw));
        }
        s = zf_warp_sum(s);
        if (lane == 0) gw[e] = rnd(s);
    }
}

// Per-channel sums of a contiguous [N, C, HW] buffer, one warp per channel:
// out[c] = sum over n, k of g[(n * C + c) * hw + k].
ZF_KERNEL ZF_NAME(channel_sum)(const T* g, u64 nb, u64 c_all, u64 hw, T* out) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    u64 per = nb * hw;
    for (u64 c = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; c < c_all; c += warps) {
        ACC s = (ACC)0;
        for (u64 k = lane; k < per; k += 32) s += ld(g, ((k / hw) * c_all + c) * hw + k % hw);
        s = zf_warp_sum(s);
        if (lane == 0) out[c] = rnd(s);
    }
}

// ---- pooling over clipped window ranges (rows[2 oy], rows[2 oy + 1]) ----
#define PL_NONE 0xffffffffu

// Max pooling: PyTorch's loop (start at -inf on the window's first
// position, take a strictly larger value or a NaN); argmax = h * W + w in
// the plane, PL_NONE for an empty window (output -inf).
ZF_KERNEL ZF_NAME(max_pool_fwd)(const T* x, ZfLayout lx, const u32* rows, u64 oh, const u32* cols, u64 ow, T* y,
                                u32* arg, u64 n) {
    u64 c_all = lx.shape[1], wd = lx.shape[3];
    ZF_FOR(e, n) {
        u64 ox = e % ow, oy = (e / ow) % oh, p = e / (ow * oh);
        u64 h0 = rows[2 * oy], h1 = rows[2 * oy + 1], w0 = cols[2 * ox], w1 = cols[2 * ox + 1];
        u64 base = lx.offset + (p / c_all) * lx.strides[0] + (p % c_all) * lx.strides[1];
        ACC best = -acc_inf();
        u32 a = (h0 < h1 && w0 < w1) ? (u32)(h0 * wd + w0) : PL_NONE;
        for (u64 ih = h0; ih < h1; ++ih) {
            for (u64 iw = w0; iw < w1; ++iw) {
                ACC v = ld(x, base + ih * lx.strides[2] + iw * lx.strides[3]);
                if (v > best || isnan(v)) {
                    best = v;
                    a = (u32)(ih * wd + iw);
                }
            }
        }
        y[e] = rnd(best);
        arg[e] = a;
    }
}

// Max pooling backward, one thread per plane in the CPU's order: acc[plane,
// arg[k]] += gy[k] (acc zeroed by the caller, rounded afterwards).
ZF_KERNEL ZF_NAME(max_pool_bwd_acc)(const T* gy, const u32* arg, u64 planes, u64 oplane, u64 hw, ACC* acc) {
    ZF_FOR(p, planes) {
        for (u64 k = p * oplane; k < (p + 1) * oplane; ++k) {
            u32 a = arg[k];
            if (a != PL_NONE && (u64)a < hw) acc[p * hw + a] += ld(gy, k);
        }
    }
}

__device__ __forceinline__ ACC pl_div(int count, u64 fixed, u64 h0, u64 h1, u64 w0, u64 w1) {
    return (ACC)(double)(count ? (h1 - h0) * (w1 - w0) : fixed);
}

// Average pooling: the window sum over the divisor (`count`: the clipped
// window's size; else `fixed`).
ZF_KERNEL ZF_NAME(avg_pool_fwd)(const T* x, ZfLayout lx, const u32* rows, u64 oh, const u32* cols, u64 ow,
                                int count, u64 fixed, T* y, u64 n) {
    u64 c_all = lx.shape[1];
    ZF_FOR(e, n) {
        u64 ox = e % ow, oy = (e / ow) % oh, p = e / (ow * oh);
        u64 h0 = rows[2 * oy], h1 = rows[2 * oy + 1], w0 = cols[2 * ox], w1 = cols[2 * ox + 1];
        u64 base = lx.offset + (p / c_all) * lx.strides[0] + (p % c_all) * lx.strides[1];
        ACC s = (ACC)0;
        for (u64 ih = h0; ih < h1; ++ih)
            for (u64 iw = w0; iw < w1; ++iw) s += ld(x, base + ih * lx.strides[2] + iw * lx.strides[3]);
        y[e] = rnd(s / pl_div(count, fixed, h0, h1, w0, w1));
    }
}

// Average pooling backward: gx[p, ih, iw] = sum over the windows holding it
// (in output order) of gy / divisor. gy contiguous [planes, oh, ow].
ZF_KERNEL ZF_NAME(avg_pool_bwd)(const T* gy, const u32* rows, u64 oh, const u32* cols, u64 ow, int count, u64 fixed,
                                u64 h, u64 wd, T* gx, u64 n) {
    ZF_FOR(e, n) {
        u64 iw = e % wd, ih = (e / wd) % h, p = e / (wd * h);
        ACC s = (ACC)0;
        for (u64 oy = 0; oy < oh; ++oy) {
            u64 h0 = rows[2 * oy], h1 = rows[2 * oy + 1];
            if (ih < h0 || ih >= h1) continue;
            for (u64 ox = 0; ox < ow; ++ox) {
                u64 w0 = cols[2 * ox], w1 = cols[2 * ox + 1];
                if (iw < w0 || iw >= w1) continue;
                s += ld(gy, (p * oh + oy) * ow + ox) / pl_div(count, fixed, h0, h1, w0, w1);
            }
        }
        gx[e] = rnd(s);
    }
}

// ---- batch normalization ----
// Per channel (one block each): mean and biased variance over (N, H, W),
// two passes, and rstd = 1 / sqrt(var + eps).
ZF_KERNEL ZF_NAME(bn_stats)(const T* x, ZfLayout lx, double eps, ACC* mean, ACC* var, ACC* rstd) {
    __shared__ ACC scratch[32];
    u64 nb = lx.shape[0], c_all = lx.shape[1], h = lx.shape[2], wd = lx.shape[3];
    u64 per = nb * h * wd;
    ACC m = (ACC)(double)per;
    for (u64 c = blockIdx.x; c < c_all; c += gridDim.x) {
        ACC s = (ACC)0;
        for (u64 k = threadIdx.x; k < per; k += blockDim.x)
            s += ld(x, cv_off(lx, k / (h * wd), c, (k / wd) % h, k % wd));
        s = zf_block_sum(s, scratch);
        ACC mu = s / m;
        ACC q = (ACC)0;
        for (u64 k = threadIdx.x; k < per; k += blockDim.x) {
            ACC v = ld(x, cv_off(lx, k / (h * wd), c, (k / wd) % h, k % wd)) - mu;
            q += v * v;
        }
        q = zf_block_sum(q, scratch);
        if (threadIdx.x == 0) {
            ACC vr = q / m;
            mean[c] = mu;
            var[c] = vr;
            rstd[c] = (ACC)1 / sqrt(vr + (ACC)eps);
        }
    }
}

// Statistics from running mean and variance vectors ([C], any layout).
ZF_KERNEL ZF_NAME(bn_running)(const T* rm, ZfLayout lm, const T* rv, ZfLayout lv, double eps, ACC* mean, ACC* var,
                              ACC* rstd, u64 c_all) {
    ZF_FOR(c, c_all) {
        ACC v = ld(rv, zf_index(lv, c));
        mean[c] = ld(rm, zf_index(lm, c));
        var[c] = v;
        rstd[c] = (ACC)1 / sqrt(v + (ACC)eps);
    }
}

// y = (x - mean) * (rstd * w) + b per channel (w = 1, b = 0 when absent).
ZF_KERNEL ZF_NAME(bn_apply)(const T* x, ZfLayout lx, const ACC* mean, const ACC* rstd, const T* w, ZfLayout lw,
                            int has_w, const T* b, ZfLayout lb, int has_b, T* y, u64 n) {
    u64 c_all = lx.shape[1], h = lx.shape[2], wd = lx.shape[3];
    ZF_FOR(e, n) {
        u64 iw = e % wd, ih = (e / wd) % h, c = (e / (wd * h)) % c_all, ni = e / (wd * h * c_all);
        ACC scale = rstd[c] * (has_w ? ld(w, zf_index(lw, c)) : (ACC)1);
        ACC shift = has_b ? ld(b, zf_index(lb, c)) : (ACC)0;
        y[e] = rnd((ld(x, cv_off(lx, ni, c, ih, iw)) - mean[c]) * scale + shift);
    }
}

// Per channel (one block each): sg = sum gy, sgx = sum gy * xhat; the
// weight and bias gradients are their roundings.
ZF_KERNEL ZF_NAME(bn_bwd_sums)(const T* x, ZfLayout lx, const ACC* mean, const ACC* rstd, const T* gy, ACC* sg_out,
                               ACC* sgx_out, T* gw, T* gb) {
    __shared__ ACC scratch[32];
    u64 nb = lx.shape[0], c_all = lx.shape[1], h = lx.shape[2], wd = lx.shape[3];
    u64 hw = h * wd, per = nb * hw;
    for (u64 c = blockIdx.x; c < c_all; c += gridDim.x) {
        ACC mu = mean[c], rs = rstd[c];
        ACC sg = (ACC)0, sgx = (ACC)0;
        for (u64 k = threadIdx.x; k < per; k += blockDim.x) {
            u64 ni = k / hw, r = k % hw;
            ACC g = ld(gy, (ni * c_all + c) * hw + r);
            sg += g;
            sgx += g * (ld(x, cv_off(lx, ni, c, r / wd, r % wd)) - mu) * rs;
        }
        sg = zf_block_sum(sg, scratch);
        sgx = zf_block_sum(sgx, scratch);
        if (threadIdx.x == 0) {
            sg_out[c] = sg;
            sgx_out[c] = sgx;
            gw[c] = rnd(sgx);
            gb[c] = rnd(sg);
        }
    }
}

// gx = w rstd (gy - mean(gy) - xhat mean(gy xhat)) in training (the
// statistics depend on x), w rstd gy in eval.
ZF_KERNEL ZF_NAME(bn_bwd_x)(const T* x, ZfLayout lx, const ACC* mean, const ACC* rstd, const T* w, ZfLayout lw,
                            int has_w, const T* gy, const ACC* sg, const ACC* sgx, int training, T* gx, u64 n) {
    u64 nb = lx.shape[0], c_all = lx.shape[1], h = lx.shape[2], wd = lx.shape[3];
    ACC m = (ACC)(double)(nb * h * wd);
    ZF_FOR(e, n) {
        u64 iw = e % wd, ih = (e / wd) % h, c = (e / (wd * h)) % c_all, ni = e / (wd * h * c_all);
        ACC rs = rstd[c];
        ACC scale = (has_w ? ld(w, zf_index(lw, c)) : (ACC)1) * rs;
        ACC g = ld(gy, e);
        if (training) {
            ACC xhat = (ld(x, cv_off(lx, ni, c, ih, iw)) - mean[c]) * rs;
            gx[e] = rnd(scale * (g - sg[c] / m - xhat * (sgx[c] / m)));
        } else {
            gx[e] = rnd(scale * g);
        }
    }
}
