// Elementwise unary maths, forward and backward (the CPU's cpu/unary.rs).
// `op` is the host's `UnaryKind` code; `p0`, `p1` its constants.

#define U_NEG 0
#define U_ABS 1
#define U_EXP 2
#define U_LOG 3
#define U_SQRT 4
#define U_RSQRT 5
#define U_SIN 6
#define U_COS 7
#define U_TANH 8
#define U_SIGMOID 9
#define U_RELU 10
#define U_GELU_ERF 11
#define U_GELU_TANH 12
#define U_SILU 13
#define U_SQUARE 14
#define U_POWF 15
#define U_CLAMP 16
#define U_ADD_SCALAR 17
#define U_MUL_SCALAR 18
#define U_SCALAR_DIV 19
#define U_SCALAR_POW 20
#define U_MAX_SCALAR 21
#define U_MIN_SCALAR 22
#define U_IDENTITY 23

__device__ __forceinline__ ACC u_sigmoid(ACC x) {
    if (x >= (ACC)0) return (ACC)1 / ((ACC)1 + exp(-x));
    ACC e = exp(x);
    return e / ((ACC)1 + e);
}
// 1 if a > b, 1/2 if equal, 0 otherwise.
__device__ __forceinline__ ACC tie_grad(ACC a, ACC b) {
    return a > b ? (ACC)1 : (a == b ? (ACC)0.5 : (ACC)0);
}

__device__ __forceinline__ ACC u_f(int op, ACC x, ACC p0, ACC p1) {
    switch (op) {
    case U_NEG: return -x;
    case U_ABS: return fabs(x);
    case U_EXP: return exp(x);
    case U_LOG: return log(x);
    case U_SQRT: return sqrt(x);
    case U_RSQRT: return (ACC)1 / sqrt(x);
    case U_SIN: return sin(x);
    case U_COS: return cos(x);
    case U_TANH: return tanh(x);
    case U_SIGMOID: return u_sigmoid(x);
    case U_RELU: return x > (ACC)0 ? x : (ACC)0;
    case U_GELU_ERF: return (ACC)0.5 * x * ((ACC)1 + erf(x * (ACC)0.70710678118654752440));
    case U_GELU_TANH: {
        ACC k = (ACC)0.7978845608028654;
        return (ACC)0.5 * x * ((ACC)1 + tanh(k * (x + (ACC)0.044715 * x * x * x)));
    }
    case U_SILU: return x * u_sigmoid(x);
    case U_SQUARE: return x * x;
    case U_POWF: return pow(x, p0);
    case U_CLAMP: return fmin(fmax(x, p0), p1);
    case U_ADD_SCALAR: return x + p0;
    case U_MUL_SCALAR: return x * p0;
    case U_SCALAR_DIV: return p0 / x;
    case U_SCALAR_POW: return pow(p0, x);
    case U_MAX_SCALAR: return fmax(x, p0);
    case U_MIN_SCALAR: return fmin(x, p0);
    default: return x;
    }
}

// dy/dx at x, given y = f(x).
__device__ __forceinline__ ACC u_df(int op, ACC x, ACC y, ACC p0, ACC p1) {
    switch (op) {
    case U_NEG: return (ACC)-1;
    case U_ABS: return x > (ACC)0 ? (ACC)1 : (x < (ACC)0 ? (ACC)-1 : (ACC)0);
    case U_EXP: return y;
    case U_LOG: return (ACC)1 / x;
    case U_SQRT: return (ACC)0.5 / y;
    case U_RSQRT: return (ACC)-0.5 * y * y * y;
    case U_SIN: return cos(x);
    case U_COS: return -sin(x);
    case U_TANH: return (ACC)1 - y * y;
    case U_SIGMOID: return y * ((ACC)1 - y);
    case U_RELU: return x > (ACC)0 ? (ACC)1 : (ACC)0;
    case U_GELU_ERF: {
        ACC cdf = (ACC)0.5 * ((ACC)1 + erf(x * (ACC)0.70710678118654752440));
        ACC pdf = exp((ACC)-0.5 * x * x) * (ACC)0.3989422804014327;
        return cdf + x * pdf;
    }
    case U_GELU_TANH: {
        ACC k = (ACC)0.7978845608028654;
        ACC inner = k * (x + (ACC)0.044715 * x * x * x);
        ACC t = tanh(inner);
        ACC dinner = k * ((ACC)1 + (ACC)(3.0 * 0.044715) * x * x);
        return (ACC)0.5 * ((ACC)1 + t) + (ACC)0.5 * x * ((ACC)1 - t * t) * dinner;
    }
    case U_SILU: {
        ACC s = u_sigmoid(x);
        return s * ((ACC)1 + x * ((ACC)1 - s));
    }
    case U_SQUARE: return (ACC)2 * x;
    case U_POWF: return p0 == (ACC)0 ? (ACC)0 : p0 * pow(x, p0 - (ACC)1);
    case U_CLAMP: return (x >= p0 && x <= p1) ? (ACC)1 : (ACC)0;
    case U_ADD_SCALAR: return (ACC)1;
    case U_MUL_SCALAR: return p0;
    case U_SCALAR_DIV: return -p0 / (x * x);
    case U_SCALAR_POW: return y * log(p0);
    case U_MAX_SCALAR: return tie_grad(x, p0);
    case U_MIN_SCALAR: return tie_grad(p0, x);
    default: return (ACC)1;
    }
}

// y[i] = f(x[lx[i]]), y contiguous.
ZF_KERNEL ZF_NAME(unary_fwd)(int op, double p0, double p1, const T* x, ZfLayout lx, T* y, u64 n) {
    ZF_FOR(i, n) { y[i] = rnd(u_f(op, ld(x, zf_index(lx, i)), (ACC)p0, (ACC)p1)); }
}

// gx[i] = gy[i] * f'(x[lx[i]]); y and gy contiguous.
ZF_KERNEL ZF_NAME(unary_bwd)(int op, double p0, double p1, const T* x, ZfLayout lx, const T* y,
                             const T* gy, T* gx, u64 n) {
    ZF_FOR(i, n) {
        ACC xv = ld(x, zf_index(lx, i));
        gx[i] = rnd(ld(gy, i) * u_df(op, xv, ld(y, i), (ACC)p0, (ACC)p1));
    }
}
