// Fused optimizer updates (the CPU's cpu/optim.rs, PyTorch's arithmetic):
// parameter in the element type, state in the compute type, one pass.

// One Adam/AdamW step. `decoupled`: AdamW's decay; otherwise the decay (if
// any) is added to the gradient.
ZF_KERNEL ZF_NAME(adam_update)(T* param, const T* grad, ACC* m, ACC* v, u64 n, double lr, double beta1, double beta2,
                               double eps, double wd, int decoupled, double step_size, double bc2_sqrt) {
    ACC one = (ACC)1, b1 = (ACC)beta1, b2 = (ACC)beta2, e = (ACC)eps, l = (ACC)lr, w = (ACC)wd;
    ACC ss = (ACC)step_size, bc = (ACC)bc2_sqrt;
    bool coupled = !decoupled && wd != 0.0;
    ZF_FOR(i, n) {
        ACC x = ld(param, i);
        ACC g = ld(grad, i);
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
                              int nesterov, double wd, int first) {
    ACC one = (ACC)1, l = (ACC)lr, w = (ACC)wd, mo = (ACC)momentum, damp = (ACC)dampening;
    ZF_FOR(i, n) {
        ACC x = ld(param, i);
        ACC d = ld(grad, i);
        if (wd != 0.0) d += w * x;
        if (momentum != 0.0) {
            ACC b = first ? d : mo * buf[i] + (one - damp) * d;
            buf[i] = b;
            d = nesterov ? d + mo * b : b;
        }
        param[i] = rnd(x - l * d);
    }
}
