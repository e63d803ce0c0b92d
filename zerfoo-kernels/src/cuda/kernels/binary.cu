// Elementwise binary maths on same-shaped layouts (a broadcast operand has
// stride 0), forward and backward (the CPU's cpu/binary.rs).

#define B_ADD 0
#define B_SUB 1
#define B_MUL 2
#define B_DIV 3
#define B_MAXIMUM 4
#define B_MINIMUM 5
#define B_POW 6

__device__ __forceinline__ ACC b_tie(ACC a, ACC b) {
    return a > b ? (ACC)1 : (a == b ? (ACC)0.5 : (ACC)0);
}

__device__ __forceinline__ ACC b_f(int op, ACC a, ACC b) {
    switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_MAXIMUM: return fmax(a, b);
    case B_MINIMUM: return fmin(a, b);
    case B_POW: return pow(a, b);
    default: return a;
    }
}

__device__ __forceinline__ ACC b_da(int op, ACC a, ACC b) {
    switch (op) {
    case B_ADD: return (ACC)1;
    case B_SUB: return (ACC)1;
    case B_MUL: return b;
    case B_DIV: return (ACC)1 / b;
    case B_MAXIMUM: return b_tie(a, b);
    case B_MINIMUM: return b_tie(b, a);
    case B_POW: return b == (ACC)0 ? (ACC)0 : b * pow(a, b - (ACC)1);
    default: return (ACC)0;
    }
}

__device__ __forceinline__ ACC b_db(int op, ACC a, ACC b) {
    switch (op) {
    case B_ADD: return (ACC)1;
    case B_SUB: return (ACC)-1;
    case B_MUL: return a;
    case B_DIV: return -a / (b * b);
    case B_MAXIMUM: return b_tie(b, a);
    case B_MINIMUM: return b_tie(a, b);
    case B_POW: return a == (ACC)0 ? (ACC)0 : pow(a, b) * log(a);
    default: return (ACC)0;
    }
}

// y[i] = f(a[la[i]], b[lb[i]]), y contiguous.
ZF_KERNEL ZF_NAME(binary_fwd)(int op, const T* a, ZfLayout la, const T* b, ZfLayout lb, T* y, u64 n) {
    ZF_FOR(i, n) { y[i] = rnd(b_f(op, ld(a, zf_index(la, i)), ld(b, zf_index(lb, i)))); }
}

// ga[i] = gy[i] * df/da, gb[i] = gy[i] * df/db (full output shape, contiguous);
// a side whose flag is 0 is not written (its pointer may be null).
ZF_KERNEL ZF_NAME(binary_bwd)(int op, const T* a, ZfLayout la, const T* b, ZfLayout lb, const T* gy,
                              T* ga, T* gb, int need_a, int need_b, u64 n) {
    ZF_FOR(i, n) {
        ACC av = ld(a, zf_index(la, i)), bv = ld(b, zf_index(lb, i)), g = ld(gy, i);
        if (need_a) ga[i] = rnd(g * b_da(op, av, bv));
        if (need_b) gb[i] = rnd(g * b_db(op, av, bv));
    }
}
