/* CPU kernels for the sparse masked residual and its two chain gradients.
 *
 * Plain C99, no torch headers: dlrl_kernels/cpu/__init__.py compiles this file with the
 * system C compiler on first use (cached by source, flags and CPU), loads it with ctypes and
 * calls it on the data pointers of contiguous tensors. ctypes releases the GIL during a call,
 * so the Python side may run two calls on two threads (R and Q write disjoint outputs).
 *
 * Why: torch's CPU sparse ops (sampled_addmm, CSR @ dense, index_add_) take 2-10x the time of
 * one fused pass over the entries at the sizes DLRL trains on (80 000 entries, d = 20).
 *
 *   residual:  e[k] = <U[rows[k]], Vt[cols[k]]> - values[k]                 k in [k0, k1)
 *   grad_rows: R[i] = scale * sum_{k: rows[k] = i} e[k] Vt[cols[k]]          (R zeroed here)
 *   grad_cols: Q[j] = scale * sum_{k: cols[k] = j} e[k] U[rows[k]]           (Q zeroed here)
 *   loss_grad: e, R, Q (scale 1) and sum e^2 in one pass (the training loss's forward)
 *
 * scale is read through a pointer: the training loss's backward passes the incoming gradient
 * tensor's storage, so no scalar ever has to be read back into Python.
 *
 * The rank d is a run-time argument, but the loops over d are short (d = 10..64 typically):
 * with d unknown the compiler leaves a scalar remainder and a horizontal sum per entry that
 * cost 2-3x. So the loader compiles this file once per rank it meets, with -DDLRL_D=<d>: the
 * loops then have a compile-time trip count (fully unrolled and vectorised); -DDLRL_D=0 is the
 * generic build. Each build takes ~0.3 s and is cached. Dot products accumulate in the input
 * precision in an order that differs from torch's (the tests compare against a float64
 * evaluation). Indices are int64 and are range-checked by the caller.
 */
#include <stdint.h>
#include <string.h>

#ifndef DLRL_D
#define DLRL_D 0
#endif
/* the d the loops run with: the constant when this build is specialised, else the argument */
#define DIM(d) (DLRL_D > 0 ? (int64_t)DLRL_D : (d))
/* a row accumulator: a fixed-size array in a specialised build, else a C99 VLA of length d */
#if DLRL_D > 0
#define ACC_DECL(T) T acc[DLRL_D]
#define ACC_DECL2(T, name) T name[DLRL_D]
#else
#define ACC_DECL(T) T acc[d > 0 ? d : 1]
#define ACC_DECL2(T, name) T name[d > 0 ? d : 1]
#endif

#define DLRL_KERNELS(T, SUF)                                                                    \
    void dlrl_residual_##SUF(int64_t k0, int64_t k1, int64_t d_, const int64_t *rows,          \
                             const int64_t *cols, const T *U, const T *Vt, const T *values,      \
                             T *e) {                                                             \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t k = k0; k < k1; ++k) {                                                     \
            const T *u = U + rows[k] * d;                                                       \
            const T *v = Vt + cols[k] * d;                                                      \
            T s = 0;                                                                            \
            for (int64_t t = 0; t < d; ++t) s += u[t] * v[t];                                   \
            e[k] = s - values[k];                                                               \
        }                                                                                       \
    }                                                                                           \
    static void axpy_##SUF(int64_t nnz, int64_t d_, const int64_t *dst, const int64_t *src_idx, \
                           const T *src, const T *e, const T *scale_p, T *out) {                 \
        const int64_t d = DIM(d_);                                                              \
        const T scale = *scale_p;                                                               \
        for (int64_t k = 0; k < nnz; ++k) {                                                     \
            T *o = out + dst[k] * d;                                                            \
            const T *x = src + src_idx[k] * d;                                                  \
            const T w = scale * e[k];                                                           \
            for (int64_t t = 0; t < d; ++t) o[t] += w * x[t];                                   \
        }                                                                                       \
    }                                                                                           \
    /* R accumulates each run of equal rows[k] in a local array and adds it to R[i] once: with \
     * rows sorted (the training path's CSR order) every R row is written once; any order is   \
     * still correct (a row met in several runs gets several additions) */                    \
    void dlrl_grad_rows_##SUF(int64_t nnz, int64_t m, int64_t d_, const int64_t *rows,         \
                              const int64_t *cols, const T *Vt, const T *e, const T *scale_p,    \
                              T *R) {                                                            \
        const int64_t d = DIM(d_);                                                              \
        const T scale = *scale_p;                                                               \
        memset(R, 0, (size_t)(m * d) * sizeof(T));                                              \
        if (DLRL_D == 0) {                                                                      \
            axpy_##SUF(nnz, d, rows, cols, Vt, e, scale_p, R);                                  \
            return;                                                                             \
        }                                                                                       \
        T acc[DLRL_D > 0 ? DLRL_D : 1];                                                         \
        int64_t k = 0;                                                                          \
        while (k < nnz) {                                                                       \
            const int64_t i = rows[k];                                                          \
            for (int64_t t = 0; t < d; ++t) acc[t] = 0;                                         \
            for (; k < nnz && rows[k] == i; ++k) {                                              \
                const T *v = Vt + cols[k] * d;                                                  \
                const T w = e[k];                                                               \
                for (int64_t t = 0; t < d; ++t) acc[t] += w * v[t];                             \
            }                                                                                   \
            T *r = R + i * d;                                                                   \
            for (int64_t t = 0; t < d; ++t) r[t] += scale * acc[t];                             \
        }                                                                                       \
    }                                                                                           \
    void dlrl_grad_cols_##SUF(int64_t nnz, int64_t n, int64_t d, const int64_t *rows,          \
                              const int64_t *cols, const T *U, const T *e, const T *scale,       \
                              T *Q) {                                                            \
        memset(Q, 0, (size_t)(n * d) * sizeof(T));                                              \
        axpy_##SUF(nnz, d, cols, rows, U, e, scale, Q);                                         \
    }                                                                                           \
    /* The training loss and both chain gradients in ONE pass over entries [k0, k1): while    \
     * U[i] and Vt[j] are loaded for the residual, e_k Vt[j] is added to the row's accumulator \
     * and e_k U[i] to Q[j]. Three passes (SDDMM, then R, then Q) read every factor row three   \
     * times; this reads them once. R (m x d) and Q (n x d) are zeroed here (two threads get   \
     * separate R, Q and the caller adds them); any entry order is correct, sorted rows make   \
     * each R row a single write. *J = sum of e_k^2 in double. */                               \
    void dlrl_loss_grad_##SUF(int64_t k0, int64_t k1, int64_t m, int64_t n, int64_t d_,        \
                              const int64_t *restrict rows, const int64_t *restrict cols,        \
                              const T *restrict U, const T *restrict Vt,                         \
                              const T *restrict values, T *restrict e, T *restrict R,            \
                              T *restrict Q, double *restrict J) {                               \
        const int64_t d = DIM(d_);                                                              \
        memset(R, 0, (size_t)(m * d) * sizeof(T));                                              \
        memset(Q, 0, (size_t)(n * d) * sizeof(T));                                              \
        ACC_DECL(T);                                                                            \
        ACC_DECL2(T, u);                                                                        \
        double jj = 0.0;                                                                        \
        int64_t k = k0;                                                                         \
        while (k < k1) {                                                                        \
            const int64_t i = rows[k];                                                          \
            /* the row in a local array: the compiler then knows the Q writes cannot change it */ \
            for (int64_t t = 0; t < d; ++t) { u[t] = U[i * d + t]; acc[t] = 0; }                \
            for (; k < k1 && rows[k] == i; ++k) {                                               \
                const T *restrict v = Vt + cols[k] * d;                                         \
                T *restrict q = Q + cols[k] * d;                                                \
                T s = 0;                                                                        \
                for (int64_t t = 0; t < d; ++t) s += u[t] * v[t];                               \
                const T ek = s - values[k];                                                     \
                e[k] = ek;                                                                      \
                jj += (double)ek * (double)ek;                                                  \
                for (int64_t t = 0; t < d; ++t) {                                               \
                    acc[t] += ek * v[t];                                                        \
                    q[t] += ek * u[t];                                                          \
                }                                                                               \
            }                                                                                   \
            T *r = R + i * d;                                                                   \
            for (int64_t t = 0; t < d; ++t) r[t] += acc[t];                                     \
        }                                                                                       \
        *J = jj;                                                                                \
    }

DLRL_KERNELS(float, f32)
DLRL_KERNELS(double, f64)

/* the ABI version the loader checks (bump on any signature change), and the d of this build */
int dlrl_native_abi(void) { return 5; }
int dlrl_native_dim(void) { return DLRL_D; }
