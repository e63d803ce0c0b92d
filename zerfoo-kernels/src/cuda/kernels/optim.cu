// Fused optimizer updates (the CPU's cpu/optim.rs, PyTorch's arithmetic):
// parameter in the element type, state in the compute type, one pass.

// One Adam/AdamW step. `decoupled`: AdamW's decay; otherwise the decay (if
// any) is added to the gradient.
ZF_KERNEL ZF_NAME(adam_update)(T* param, const T* grad, ACC* m, ACC* v, u64 n, double lr, double beta1, double beta2,
                               double eps, double wd, int decoupled, double step_size, double bc2_sqrt,
                               double grad_scale) {
    ACC one = (ACC)1, b1 = (ACC)beta1, b2 = (ACC)beta2, e = (ACC)eps, l = (ACC)lr, w = (ACC)wd;
    ACC ss = (ACC)step_size, bc = (ACC)bc2_sqrt, gs = (ACC)grad_scale;
    bool coupled = !decoupled && wd != 0.0;
    ZF_FOR(i, n) {
        ACC x = ld(param, i);
        // The gradient times grad_scale, rounded as scaling it in place would.
        ACC g = zf_to_acc(rnd(ld(grad, i) * gs));
        if (decoupled) {
            x *= one - l * w;
        } else if (coupled) {
            g += w * x;
        }
        ACC mi = m[i] + (one - b1) * (g - m[i]);
        ACC vi = v[i] * b2 + (one - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        ACC denom = sqrt(vi) / bc + e;
        param[i] = rnd(x - ss * mi / denom);
    }
}

// One SGD step with optional momentum (buf unused when momentum == 0).
ZF_KERNEL ZF_NAME(sgd_update)(T* param, const T* grad, ACC* buf, u64 n, double lr, double momentum, double dampening,
                              int nesterov, double wd, int first, double grad_scale) {
    ACC one = (ACC)1, l = (ACC)lr, w = (ACC)wd, mo = (ACC)momentum, damp = (ACC)dampening, gs = (ACC)grad_scale;
    ZF_FOR(i, n) {
        ACC x = ld(param, i);
        ACC d = zf_to_acc(rnd(ld(grad, i) * gs));
        if (wd != 0.0) d += w * x;
        if (momentum != 0.0) {
            ACC b = first ? d : mo * buf[i] + (one - damp) * d;
            buf[i] = b;
            d = nesterov ? d + mo * b : b;
        }
        param[i] = rnd(x - l * d);
    }
}

// Partial sums of squares in double: partial[c] = sum of x[i]^2 over
// i in [c * chunk, (c + 1) * chunk), one block per chunk (a fixed split,
// chosen from n only, so the result is deterministic).
ZF_KERNEL ZF_NAME(sumsq_partial)(const T* x, u64 n, u64 chunk, u64 chunks, double* partial) {
    __shared__ double scratch[32];
    for (u64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        u64 lo = c * chunk, hi = min(n, lo + chunk);
        double s = 0.0;
        for (u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double v = (double)zf_to_acc(x[i]);
            s += v * v;
        }
        s = zf_block_sum_t<double>(s, scratch);
        if (threadIdx.x == 0) partial[c] = s;
    }
}

// out[0] = (accumulate ? out[0] : 0) + sum of v[0..n) (block 0 alone, fixed order).
ZF_KERNEL ZF_NAME(sum_f64)(const double* v, u64 n, int accumulate, double* out) {
    __shared__ double scratch[32];
    if (blockIdx.x != 0) return;
    double s = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    s = zf_block_sum_t<double>(s, scratch);
    if (threadIdx.x == 0) out[0] = accumulate ? out[0] + s : s;
}

// coef[0] = min(1, max_norm / (sqrt(total_sq[0]) + 1e-6)) (PyTorch's clip_grad_norm_).
ZF_KERNEL ZF_NAME(clip_coef)(const double* total_sq, double max_norm, double* coef) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double c = max_norm / (sqrt(total_sq[0]) + 1e-6);
        coef[0] = c < 1.0 ? c : 1.0;
    }
}

// x[i] = x[i] * factor in the compute type, rounded once; the factor is
// `f`, or `fp[0]` when fp is not null (a factor computed on the device).
ZF_KERNEL ZF_NAME(scale)(T* x, u64 n, double f, const double* fp) {
    ACC s = (ACC)(fp ? fp[0] : f);
    ZF_FOR(i, n) { x[i] = rnd(ld(x, i) * s); }
}
