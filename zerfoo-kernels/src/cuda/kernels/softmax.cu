// Softmax / log-softmax along one axis, forward and backward (the CPU's
// cpu/softmax.rs). The shape is viewed as outer x n x inner; row r is
// (o = r / inner, j = r % inner). One block per row (grid-stride over rows).
// Outputs are contiguous in the original order.

ZF_KERNEL ZF_NAME(softmax_fwd)(const T* x, ZfLayout lx, u64 rows, u64 n, u64 inner, u64 stride, int log_, T* y) {
    __shared__ ACC scratch[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 o = r / inner, j = r % inner;
        u64 base = zf_index(lx, o * n * inner + j);
        u64 obase = o * n * inner + j;
        ACC m = -acc_inf();
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            ACC v = ld(x, base + k * stride);
            if (v > m || isnan(v)) m = v;
        }
        m = zf_block_max(m, scratch);
        ACC s = (ACC)0;
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) s += exp(ld(x, base + k * stride) - m);
        s = zf_block_sum(s, scratch);
        if (log_) {
            ACC ls = log(s);
            for (u64 k = threadIdx.x; k < n; k += blockDim.x)
                y[obase + k * inner] = rnd((ld(x, base + k * stride) - m) - ls);
        } else {
            ACC inv = (ACC)1 / s;
            for (u64 k = threadIdx.x; k < n; k += blockDim.x)
                y[obase + k * inner] = rnd(exp(ld(x, base + k * stride) - m) * inv);
        }
    }
}

// softmax: gx = y * (gy - sum(gy * y)); log-softmax: gx = gy - exp(y) * sum(gy).
// y, gy, gx contiguous.
ZF_KERNEL ZF_NAME(softmax_bwd)(const T* y, const T* gy, u64 rows, u64 n, u64 inner, int log_, T* gx) {
    __shared__ ACC scratch[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 o = r / inner, j = r % inner;
        u64 base = o * n * inner + j;
        ACC s = (ACC)0;
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            u64 at = base + k * inner;
            s += log_ ? ld(gy, at) : ld(gy, at) * ld(y, at);
        }
        s = zf_block_sum(s, scratch);
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            u64 at = base + k * inner;
            ACC yv = ld(y, at), g = ld(gy, at);
            gx[at] = rnd(log_ ? g - exp(yv) * s : yv * (g - s));
        }
    }
}
